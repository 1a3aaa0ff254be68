"""Writing a blob's decompressed stream into a directory, verified and safely.

Verification: every byte of the decompressed stream is hashed with SHA-256
(including what tar does not consume: padding and the end-of-archive blocks)
and the caller compares the digest with the blob's name. zstd's own frame
checksum (XXH64) is checked as well, by the decoder.

Safety: ``extract`` writes only inside ``dest``: a tar member with an absolute
name, a ``..`` component, a link whose target leaves ``dest``, a path under a
symlink, or a device/fifo is refused with ``UnsafeArtifact``. Python's
``data`` extraction filter runs on top of our own checks.

Speed: the calling thread decompresses (zstd ``readinto`` a ring of
``BUFFERS`` buffers of ``BUFFER_BYTES``) and writes each buffer with
``os.write`` straight from it (tar members too: ``_BufferTar.makefile``); a
second thread hashes the same buffers, in order, while the next one is
decompressed. zstd, hashlib and ``os.write`` all release the GIL, so with two
cores the SHA-256 runs beside the decompression instead of after it.

Figures, 100 MiB artifacts (half random bytes, half float text; blob 57.5 MiB;
a file, and a directory of 10 x 10 MiB + 200 x 4 KiB files) on a 2-vCPU
Sapphire Rapids KVM guest. It *has* SHA-NI, and OpenSSL 3.0 uses it: SHA-256
runs at ~1.4 GB/s on one core over data in RAM, ~2 GB/s over data in cache
(0.55 GB/s with SHA-NI masked off through ``OPENSSL_ia32cap``). Page cache
warm, nothing fsynced, best of 5-7:

    plain copy: file (shutil.copyfile, in-kernel) / dir (copytree)  25-27 / 38-42 ms
    zstd decompression alone, one thread                            57 ms
    SHA-256 alone, one thread                                       77 ms
    os.write of the bytes to a new file                             22 ms
    tarfile extraction of the dir alone, from memory                68 ms
    creating one file on this VM                                    ~0.1 ms
    unpack before, file / dir (all in one thread)     137 / 178 ms  0.20x / 0.22x of a copy
    unpack now, file / dir                             91 / 121 ms  0.30x / 0.34x
    unpack now with no SHA-256 at all, file            67-78 ms     0.35-0.40x

(``scripts/bench cache``, 1 GiB file: 1,440 ms before, 1,024 ms now, against
a 264-316 ms copy. Below ~1 MiB the handoff to the thread costs ~0.2 ms.)

Decision: keep the SHA-256 check on every unpack, with no cheaper option. The
0.9x target cannot be met on this machine whatever the verification: zstd
decompression alone (one core: libzstd has no multi-threaded decoder and a
blob is one frame) takes 2.2x as long as the whole copy, and even an unpack
that checked nothing would reach only ~0.4x. SHA-256 now costs ~15-25% of the
unpack time (67-78 -> 91 ms): both cores are busy (57 + 22 + 77 ms of CPU over
two cores is ~78 ms, the bound of this design), so a cheaper hash would not buy
enough to justify trusting the blob name less.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import queue
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Protocol, cast

import zstandard as zstd

from agent.cache.errors import UnsafeArtifact
from agent.cache.pack import CHUNK, Kind

BUFFERS = 4  # decompression buffers in the ring: being hashed, written, filled
BUFFER_BYTES = 256 << 10  # each; small enough to stay in L2 while hashed and written

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class Source(Protocol):
    def readinto(self, buffer: bytearray, /) -> int: ...


class _Hasher:
    """SHA-256 of the buffers handed to ``submit``, computed in order on a
    thread of its own; ``wait(n)`` returns once the first ``n`` are hashed."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._hashed = 0
        self._alive = True
        self._thread = threading.Thread(target=self._run, name="cache-unpack-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (view := self._queue.get()) is not None:
                self._sha.update(view)  # releases the GIL
                with self._cond:
                    self._hashed += 1
                    self._cond.notify()
        finally:
            with self._cond:
                self._alive = False
                self._cond.notify_all()

    def submit(self, view: memoryview) -> None:
        self._queue.put(view)

    def wait(self, n: int) -> None:
        with self._cond:
            while self._hashed < n:
                if not self._alive:
                    raise RuntimeError("the unpack hashing thread died")
                self._cond.wait()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self, submitted: int) -> str:
        self.wait(submitted)
        return self._sha.hexdigest()


class VerifyingReader:
    """A forward-only reader over a decompressed stream that hashes every byte
    it decompresses, on a second thread.

    ``readview`` hands out a view into a decompression buffer (no copy), valid
    until the next call; ``read``/``tell``/``seek`` (forward only) are what
    ``tarfile`` needs. Use as a context manager: leaving it stops the thread.
    """

    def __init__(
        self, source: Source, *, buffers: int = BUFFERS, bufsize: int = BUFFER_BYTES
    ) -> None:
        self._source = source
        self._ring = max(2, buffers)
        self._bufsize = bufsize
        self._bufs: list[bytearray] = []  # allocated as needed: a small blob needs one
        self._hasher = _Hasher()
        self._filled = 0  # buffers decompressed (and handed to the hasher)
        self._view = memoryview(b"")
        self._pos = 0
        self._offset = 0
        self.count = 0  # bytes decompressed so far

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._hasher.close()

    def _fill(self) -> bool:
        n = self._ring
        if len(self._bufs) < n and self._filled == len(self._bufs):
            self._bufs.append(bytearray(self._bufsize))
        else:
            # The buffer about to be refilled was handed out n fills ago: its
            # hash must be done (the consumer is done with it: it asked for more).
            self._hasher.wait(self._filled - n + 1)
        buf = self._bufs[self._filled % n]
        got = self._source.readinto(buf)
        self._view = memoryview(buf)[:got]
        self._pos = 0
        if got:
            self._hasher.submit(self._view)
            self._filled += 1
            self.count += got
        return got > 0

    def readview(self, n: int) -> memoryview:
        """Up to ``n`` bytes (fewer at a buffer's end); empty at the end."""
        if self._pos == len(self._view) and not self._fill():
            return self._view[:0]
        view = self._view[self._pos : self._pos + n]
        self._pos += len(view)
        self._offset += len(view)
        return view

    def read(self, n: int = -1) -> bytes:
        want = n if n >= 0 else 1 << 62
        parts: list[bytes] = []  # copies: a view's buffer is refilled later
        while want and (view := self.readview(want)):
            parts.append(bytes(view))
            want -= len(view)
        return b"".join(parts)

    def tell(self) -> int:
        return self._offset

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            pos += self._offset
        elif whence != os.SEEK_SET:
            raise tarfile.StreamError("seeking from the end is not supported")
        if pos < self._offset:
            raise tarfile.StreamError("seeking backwards is not allowed")
        while self._offset < pos and self.readview(pos - self._offset):
            pass
        return self._offset

    def drain(self) -> None:
        """Decompress (and hash) the rest of the stream."""
        while self.readview(1 << 62):
            pass

    def hexdigest(self) -> str:
        """SHA-256 of everything decompressed so far (``drain`` first for all)."""
        return self._hasher.hexdigest(self._filled)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _copy_out(reader: VerifyingReader, fd: int, size: int | None) -> int:
    """Write ``size`` bytes (None: all that is left) from ``reader`` to ``fd``."""
    left = (1 << 62) if size is None else size
    done = 0
    while left and (view := reader.readview(left)):
        _write_all(fd, view)
        left -= len(view)
        done += len(view)
    return done


class _BufferTar(tarfile.TarFile):
    """``tarfile`` reading a ``VerifyingReader``, with member data written
    straight from the decompression buffers (its own copy goes through a
    ``bytes`` per block and a buffered file)."""

    def makefile(
        self,
        tarinfo: tarfile.TarInfo,
        targetpath: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    ) -> None:
        if tarinfo.sparse is not None:
            super().makefile(tarinfo, targetpath)
            return
        reader = cast(VerifyingReader, self.fileobj)
        reader.seek(tarinfo.offset_data)
        fd = os.open(targetpath, _FILE_FLAGS, 0o666)
        try:
            if _copy_out(reader, fd, tarinfo.size) != tarinfo.size:
                raise tarfile.ReadError("unexpected end of data")
        finally:
            os.close(fd)


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


def extract(reader: VerifyingReader, kind: Kind, name: str, dest: Path) -> str:
    """Write the stream into ``dest`` (an existing, empty directory); return
    the SHA-256 of the whole stream. ``dest/name`` for a file artifact."""
    if kind == "file":
        if not name or "/" in name or name in (".", ".."):
            raise UnsafeArtifact(f"file artifact name {name!r} is unsafe")
        fd = os.open(dest / name, _FILE_FLAGS | os.O_EXCL, 0o666)
        try:
            _copy_out(reader, fd, None)
        finally:
            os.close(fd)
        return reader.hexdigest()
    # "r:" (not the stream mode "r|"): tarfile then reads member data through
    # our makefile, and only ever seeks forward, which the reader allows.
    with _BufferTar.open(fileobj=reader, mode="r:") as tar:  # type: ignore[call-overload]
        for member in tar:
            check_member(dest, member)
            tar.extract(member, dest, filter="data")
    reader.drain()
    return reader.hexdigest()


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
    with (
        f,
        zstd.ZstdDecompressor().stream_reader(f, read_size=CHUNK) as zr,
        VerifyingReader(zr) as reader,
    ):
        try:
            got = extract(reader, kind, name, work)
        except UnsafeArtifact:
            # Damage can look like an unsafe member: tell them apart by digest.
            with contextlib.suppress(zstd.ZstdError, OSError):
                reader.drain()
            if reader.hexdigest() != digest:
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
