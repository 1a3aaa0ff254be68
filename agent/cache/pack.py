"""Turning an artifact (one file, or a directory) into one deterministic byte
stream, whose SHA-256 names the blob.

A file is its own bytes. A directory is a POSIX (pax) tar stream with entries
sorted by path, mtime 0, uid/gid 0, no user/group names, and modes normalised
to 0755 (directories and executables) or 0644, so two copies of the same tree
give the same digest whatever their timestamps, owners or directory order.

A symlink is kept only if it is relative and resolves inside the artifact;
anything else (absolute, escaping, a device, a fifo, a socket) is refused with
``UnsafeArtifact`` before a byte is written.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from agent.cache.errors import UnsafeArtifact

Kind = Literal["file", "dir"]
CHUNK = 1 << 20


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True, slots=True)
class Entry:
    rel: str  # POSIX path relative to the artifact root
    kind: Literal["file", "dir", "link"]
    size: int = 0
    mode: int = 0o644
    target: str = ""


@dataclass(frozen=True, slots=True)
class Artifact:
    root: Path
    kind: Kind
    name: str
    size_bytes: int  # sum of file sizes (a rough uncompressed size)
    entries: tuple[Entry, ...]


class HashingWriter:
    """Forwards writes to ``inner`` and hashes and counts what passes."""

    def __init__(self, inner: Sink) -> None:
        self._inner = inner
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes, /) -> int:
        self.sha.update(data)
        self.count += len(data)
        self._inner.write(data)
        return len(data)


def _check_link(root: Path, rel: str, target: str) -> None:
    if os.path.isabs(target):
        raise UnsafeArtifact(f"symlink {rel!r} -> {target!r} is absolute; refused")
    lexical = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, rel))
    if (
        lexical == ".."
        or lexical.startswith("../")
        or os.path.commonpath([real_root, real]) != real_root
    ):
        raise UnsafeArtifact(f"symlink {rel!r} -> {target!r} points outside the artifact")


def scan(src: Path) -> Artifact:
    """Walk and validate ``src``; raise ``UnsafeArtifact`` for anything refused."""
    st = os.lstat(src)
    if stat.S_ISREG(st.st_mode):
        entry = Entry(src.name, "file", st.st_size)
        return Artifact(src, "file", src.name, st.st_size, (entry,))
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeArtifact(f"artifact {str(src)!r} is neither a file nor a directory")
    entries: list[Entry] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = Path(path).relative_to(src).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = os.readlink(path)
                _check_link(src, rel, target)
                entries.append(Entry(rel, "link", mode=0o777, target=target))
            elif stat.S_ISDIR(mode):
                entries.append(Entry(rel, "dir", mode=0o755))
            elif stat.S_ISREG(mode):
                size = os.lstat(path).st_size
                total += size
                exe = 0o755 if mode & 0o111 else 0o644
                entries.append(Entry(rel, "file", size, exe))
            else:
                raise UnsafeArtifact(f"{rel!r} in the artifact is not a file, dir or symlink")
    entries.sort(key=lambda e: e.rel)
    return Artifact(src, "dir", src.name, total, tuple(entries))


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "link":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    else:
        info.size = entry.size
    return info


def write_stream(artifact: Artifact, out: Sink) -> None:
    """Write the artifact's canonical stream to ``out``."""
    if artifact.kind == "file":
        with open(artifact.root, "rb") as f:
            _copy(f, out)
        return
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for entry in artifact.entries:
            info = _tarinfo(entry)
            if entry.kind != "file":
                tar.addfile(info)
                continue
            with open(artifact.root / entry.rel, "rb") as f:
                # A file that changed size since scan() would corrupt the stream.
                if os.fstat(f.fileno()).st_size != entry.size:
                    raise UnsafeArtifact(f"{entry.rel!r} changed while being packed")
                tar.addfile(info, f)


def _copy(src: BinaryIO, out: Sink) -> None:
    while chunk := src.read(CHUNK):
        out.write(chunk)


def digest_of(src: Path) -> str:
    """The SHA-256 a blob of ``src`` would be named by (no cache involved)."""
    w = HashingWriter(_Null())
    write_stream(scan(src), w)
    return w.sha.hexdigest()


class _Null:
    def write(self, data: bytes, /) -> int:
        return len(data)
