"""Writing a decompressed artifact stream into a directory, safely.

``extract`` reads the stream once, hashes every byte (including what tar does
not consume: padding and the end-of-archive blocks), and writes only inside
``dest``: a tar member with an absolute name, a ``..`` component, a link whose
target leaves ``dest``, a path under a symlink, or a device/fifo is refused
with ``UnsafeArtifact``. Python's ``data`` extraction filter runs on top of our
own checks. The caller compares the returned digest with the expected one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

import zstandard as zstd

from agent.cache.errors import UnsafeArtifact
from agent.cache.pack import CHUNK, Kind


class HashingReader:
    """A read-only stream that hashes everything read through it."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n if n is not None and n >= 0 else CHUNK * 64)
        self.sha.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _inside(dest: str, path: str) -> bool:
    return os.path.commonpath([dest, path]) == dest


def check_member(dest: Path, member: tarfile.TarInfo) -> None:
    """Refuse a member that would write, or point, outside ``dest``."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "\\" in name or not name.strip("/"):
        raise UnsafeArtifact(f"tar member {name!r} has an unsafe path")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArtifact(f"tar member {name!r} is a device, fifo or unknown type")
    root = os.path.realpath(dest)
    # Every existing parent must be a real directory inside dest: never write
    # through a symlink that an earlier member created.
    parent = os.path.realpath(os.path.join(root, posixpath.dirname(name)))
    if not _inside(root, parent) or os.path.islink(os.path.join(root, name)):
        raise UnsafeArtifact(f"tar member {name!r} would be written through a link")
    if member.issym():
        if posixpath.isabs(member.linkname):
            raise UnsafeArtifact(f"symlink {name!r} -> {member.linkname!r} is absolute")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if target == ".." or target.startswith("../"):
            raise UnsafeArtifact(f"symlink {name!r} -> {member.linkname!r} leaves dest")
    if member.islnk():
        target = posixpath.normpath(member.linkname)
        if posixpath.isabs(target) or target == ".." or target.startswith("../"):
            raise UnsafeArtifact(f"hard link {name!r} -> {member.linkname!r} leaves dest")


def extract(reader: HashingReader, kind: Kind, name: str, dest: Path) -> str:
    """Write the stream into ``dest`` (an existing, empty directory); return
    the SHA-256 of the whole stream. ``dest/name`` for a file artifact."""
    if kind == "file":
        if not name or "/" in name or name in (".", ".."):
            raise UnsafeArtifact(f"file artifact name {name!r} is unsafe")
        with open(dest / name, "wb") as f:
            while chunk := reader.read(CHUNK):
                f.write(chunk)
        return reader.sha.hexdigest()
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            check_member(dest, member)
            tar.extract(member, dest, filter="data")
    reader.drain()
    return reader.sha.hexdigest()


class Damaged(Exception):
    """The blob is truncated, fails its zstd checksum, or its digest differs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unpack_blob(blob: Path, kind: Kind, name: str, digest: str, work: Path) -> None:
    """Decompress ``blob`` into the empty directory ``work``, verifying ``digest``.

    Raises ``Damaged`` for any sign of damage, ``UnsafeArtifact`` for a blob
    whose digest is right but whose content would escape ``work``.
    """
    try:
        f = open(blob, "rb")
    except FileNotFoundError:
        raise Damaged("blob file is missing") from None
    with f, zstd.ZstdDecompressor().stream_reader(f, read_size=CHUNK) as zr:
        reader = HashingReader(zr)
        try:
            got = extract(reader, kind, name, work)
        except UnsafeArtifact:
            # Damage can look like an unsafe member: tell them apart by digest.
            with contextlib.suppress(zstd.ZstdError, OSError):
                reader.drain()
            if reader.sha.hexdigest() != digest:
                raise Damaged("digest mismatch") from None
            raise
        except (zstd.ZstdError, tarfile.TarError, EOFError) as e:
            raise Damaged(str(e)) from e
    if got != digest:
        raise Damaged(f"digest mismatch after {reader.count} bytes")


def swap_in(work: Path, dest: Path, marker: str, digest: str) -> None:
    """Put the finished ``work`` directory at ``dest``, replacing what was there."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
        os.replace(dest, old / "x")
    try:
        os.rename(work, dest)
    except OSError:
        # A concurrent unpack got there first; keep its copy if it is the same.
        with contextlib.suppress(OSError):
            if (dest / marker).read_text() == digest:
                return
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
