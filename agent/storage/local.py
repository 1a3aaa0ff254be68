"""``file://`` URIs and absolute paths: an artifact on a mounted volume or PVC."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.errors import InvalidStorageUri, LoadFailed
from agent.storage.base import ByteBudget, Puller, PullResult, open_new, removed_on_failure
from agent.storage.errors import UnsafeArtifact

_CHUNK_BYTES = 1024 * 1024


class _Cancelled(Exception):
    """The pull was cancelled while the copy thread was running."""


class FilePuller(Puller):
    """Copies a file or a directory tree.

    ``allowed_roots``: directories an artifact must resolve inside (after
    ``..`` and symlinks); empty means anywhere. A symlink inside a directory
    artifact may only point inside that artifact; files it points at are
    copied as files, directories it points at become a relative symlink.
    """

    schemes = ("file", "")

    def __init__(self, allowed_roots: Sequence[str | os.PathLike[str]] = ()) -> None:
        self._roots = [Path(os.path.realpath(r)) for r in allowed_roots]

    def local_path(self, uri: str) -> Path:
        """The resolved local path ``uri`` names, checked against the roots."""
        if "\x00" in uri:
            raise InvalidStorageUri("storage uri contains NUL")
        parts = urlsplit(uri)
        if parts.scheme.lower() == "file":
            if parts.netloc not in ("", "localhost"):
                raise InvalidStorageUri(
                    f"storage uri {uri!r}: file uri names host {parts.netloc!r}; only local "
                    "files are served"
                )
            raw = unquote(parts.path)
        elif parts.scheme == "":
            raw = uri
        else:
            raise InvalidStorageUri(f"storage uri {uri!r}: not a file uri")
        if not raw.startswith("/"):
            raise InvalidStorageUri(f"storage uri {uri!r}: the path must be absolute")
        resolved = Path(os.path.realpath(raw))
        if self._roots and not any(resolved.is_relative_to(r) for r in self._roots):
            roots = ", ".join(str(r) for r in self._roots)
            raise InvalidStorageUri(
                f"storage uri {uri!r} resolves to {resolved}, outside the permitted roots ({roots})"
            )
        return resolved

    async def pull(
        self, uri: str, dest: Path, max_bytes: int, *, storage_key: str | None = None
    ) -> PullResult:
        src = self.local_path(uri)
        if not src.exists():
            raise LoadFailed(f"storage uri {uri!r}: {src} does not exist")
        budget = ByteBudget(uri, max_bytes)
        stop = threading.Event()
        async with removed_on_failure(uri, dest):
            task = asyncio.ensure_future(asyncio.to_thread(_copy, uri, src, dest, budget, stop))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                # Let the thread notice and finish before the partial files go.
                stop.set()
                with contextlib.suppress(BaseException):
                    await task
                raise


def _copy(uri: str, src: Path, dest: Path, budget: ByteBudget, stop: threading.Event) -> PullResult:
    try:
        if src.is_file():
            budget.check_total(src.stat().st_size)
            target = dest / src.name
            _copy_file(src, target, budget, stop)
            return PullResult(target, budget.used, 1, is_dir=False)
        if not src.is_dir():
            raise LoadFailed(f"storage uri {uri!r}: {src} is neither a file nor a directory")
        plan = _plan_tree(uri, src)
        budget.check_total(sum(size for _, _, size in plan))
        files = 0
        for rel, kind, _ in plan:
            target = dest / rel
            if kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
            elif kind == "link":
                target.parent.mkdir(parents=True, exist_ok=True)
                link_target = os.path.realpath(src / rel)
                target.symlink_to(os.path.relpath(link_target, os.path.dirname(src / rel)))
            else:
                _copy_file(src / rel, target, budget, stop)
                files += 1
        return PullResult(dest, budget.used, files, is_dir=True)
    except PermissionError as exc:
        raise LoadFailed(f"storage uri {uri!r}: {exc.strerror}: {exc.filename}") from exc


def _plan_tree(uri: str, root: Path) -> list[tuple[Path, str, int]]:
    """Every entry under ``root`` as (relative path, "dir"|"file"|"link", size),
    refusing symlinks that leave the tree."""
    plan: list[tuple[Path, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            path = base / name
            rel = path.relative_to(root)
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.is_relative_to(root) or not target.exists():
                    raise UnsafeArtifact(
                        f"artifact {uri!r}: symlink {rel} points outside the artifact "
                        f"({os.readlink(path)})"
                    )
                if target.is_dir():
                    plan.append((rel, "link", 0))
                else:
                    plan.append((rel, "file", target.stat().st_size))
            elif path.is_dir():
                plan.append((rel, "dir", 0))
            elif path.is_file():
                plan.append((rel, "file", path.stat().st_size))
    return plan


def _copy_file(src: Path, target: Path, budget: ByteBudget, stop: threading.Event) -> None:
    with open(src, "rb") as fin, open_new(target) as fout:
        while chunk := fin.read(_CHUNK_BYTES):
            if stop.is_set():
                raise _Cancelled
            budget.add(len(chunk))
            fout.write(chunk)
