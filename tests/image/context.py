"""What goes into the image: the files of the build context, read from
``.dockerignore`` itself, and one key over them, so a test run can reuse an
image built from exactly this tree.

``.dockerignore`` is an allowlist: ``*`` first, then ``!path`` for each path
let in, then ``**/pattern`` for what is kept out below them. Any other form of
line is refused here rather than guessed at: a key that missed a file would
let a test pass on a stale image.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_FILES = ("Dockerfile", ".dockerignore")  # in the key, whether or not in the context


class ContextRules:
    """The allowlist of ``.dockerignore``: roots let in, name patterns kept out."""

    def __init__(self, text: str) -> None:
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if not lines or lines[0] != "*":
            raise ValueError(".dockerignore must start with '*' (an allowlist)")
        self.roots: list[str] = []
        self.excluded: list[str] = []
        for line in lines[1:]:
            if line.startswith("!") and not any(c in line for c in "*?["):
                self.roots.append(line[1:].strip("/"))
            elif line.startswith("**/") and "/" not in line[3:]:
                self.excluded.append(line[3:])
            else:
                raise ValueError(f".dockerignore line {line!r}: only '!path' and "
                                 "'**/pattern' are understood by tests/image/context.py")

    def kept_out(self, relative: Path) -> bool:
        return any(fnmatch.fnmatchcase(part, pattern)
                   for part in relative.parts for pattern in self.excluded)


def context_files(root: Path = ROOT) -> list[Path]:
    """The files the build sees, relative to ``root``, sorted."""
    rules = ContextRules((root / ".dockerignore").read_text())
    files: set[Path] = set()
    for name in rules.roots:
        top = root / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in candidates:
            relative = path.relative_to(root)
            if path.is_file() and not rules.kept_out(relative):
                files.add(relative)
    return sorted(files)


def context_key(base_image_id: str, root: Path = ROOT) -> str:
    """A digest of the base image, the build files and every file in the context
    (names, contents, and the executable bit)."""
    digest = hashlib.sha256(f"base {base_image_id}\n".encode())
    for relative in [Path(n) for n in BUILD_FILES] + context_files(root):
        path = root / relative
        digest.update(f"{relative} {path.stat().st_mode & 0o111:o} ".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
