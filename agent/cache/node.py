"""``NodeCache``: the node's content-addressed, zstd-compressed artifact cache.

Layout under ``root``::

    blobs/<2 hex>/<sha256>.zst   one zstd frame (with checksum) per artifact
    tmp/put-*.zst.tmp            blobs being written
    index.sqlite3                key -> digest, sizes, last use, pins (WAL)
    lock                         fcntl lock file

Crash safety: a blob is compressed into ``tmp/``, fsynced, renamed to its
final name (same filesystem, atomic), and the ``blobs/<2 hex>`` directory is
fsynced; only then is the index row written. A SIGKILL at any point leaves at
worst a temp file (swept later) or a complete blob without a row (adopted by
the next put of that content, or removed by ``prune``). Every unpack verifies
the SHA-256, so even a blob damaged on disk is never accepted.

Sharing between agents (processes) on one node: SQLite's own locking keeps the
index consistent (each mutation is one short transaction). On top, an
exclusive ``flock`` on ``root/lock`` covers every step that changes which blob
files exist (commit of a put, eviction, corruption removal, prune), so an
eviction cannot delete a blob that another agent is just committing a key to.
Each temp file is ``flock``-ed by its writer for its whole life (taken under a
shared ``root/lock``); a sweeper deletes a temp only if it can take that lock,
i.e. its writer is dead. Readers need no lock: an unpack holds the blob open,
and an unlinked file stays readable.

Every method blocks (disk I/O, compression); async callers use
``asyncio.to_thread``. The instance may be shared by threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.cache.compress import compress_into, fsync_dir
from agent.cache.errors import (
    ArtifactTooLarge,
    BlobCorrupt,
    CacheDiskFull,
    CacheFull,
)
from agent.cache.index import BlobInfo, CacheIndex
from agent.cache.pack import scan
from agent.cache.unpack import Damaged, swap_in, unpack_blob
from agent.errors import NotFound

log = logging.getLogger(__name__)

MARKER = ".meshlet-unpacked"  # written last into an unpacked copy: its marker_text


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


BOOT_ID = _boot_id()


def marker_text(digest: str) -> str:
    """What an unpacked copy's marker holds: the digest, and the boot it was
    written in. Unpacking does not fsync, so after a reboot (a power cut) a copy
    is not trusted and is unpacked again; within one boot the page cache makes
    a completed copy whole whatever happened to the processes."""
    return f"{digest} {BOOT_ID}"


@dataclass(frozen=True, slots=True)
class CacheStats:
    quota_bytes: int
    used_bytes: int  # compressed, on disk
    size_bytes: int  # uncompressed
    blobs: int
    keys: int
    pinned_blobs: int
    corrupt_total: int
    evicted_total: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    temps: int
    orphan_files: int
    missing_rows: int
    unreferenced: int
    freed_bytes: int


class NodeCache:
    """Content-addressed store of artifacts, bounded by ``quota_bytes`` of
    compressed blobs, evicted least-recently-used first, never a pinned blob.

    ``owner`` names this agent's pins; pins left by an earlier run with the
    same owner are cleared on open (its runtimes died with it). Artifacts of at
    least ``mt_threshold_bytes`` are compressed with
    ``threads`` zstd workers (0: one per CPU). Decompression is single-threaded:
    libzstd has no multi-threaded decoder.
    """

    def __init__(
        self,
        root: Path,
        quota_bytes: int,
        *,
        level: int = 3,
        threads: int = 0,
        mt_threshold_bytes: int = 8 << 20,
        owner: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._level = level
        self._threads = threads or (os.cpu_count() or 1)
        self._mt_threshold = mt_threshold_bytes
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        for sub in ("blobs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._index = CacheIndex.open(self.root / "index.sqlite3")
        self._index.clear_pins(self.owner)
        with self._flock():
            self._sweep_temps()

    def close(self) -> None:
        self._index.close()

    # --- locking -----------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, shared: bool = False) -> Iterator[None]:
        with open(self.root / "lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield

    def _sweep_temps(self) -> int:
        swept = 0
        for tmp in (self.root / "tmp").iterdir():
            try:
                with open(tmp, "rb") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    tmp.unlink()
                    swept += 1
            except (BlockingIOError, FileNotFoundError):
                continue  # its writer is alive, or it is gone already
        return swept

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / f"{digest}.zst"

    # --- put / get ---------------------------------------------------------

    def put(self, key: str, src: Path) -> BlobInfo:
        """Compress ``src`` (a file or a directory) into the cache under ``key``."""
        artifact = scan(Path(src))
        with self._flock(shared=True):
            fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp", prefix="put-", suffix=".tmp")
            f = os.fdopen(fd, "wb")
            fcntl.flock(f, fcntl.LOCK_EX)  # released by close, or by our death
        tmp, tmp_kept = Path(tmp_name), True
        try:
            big = artifact.size_bytes >= self._mt_threshold
            w = compress_into(
                artifact,
                f,
                limit=self.quota_bytes,
                level=self._level,
                threads=self._threads if big else 0,
            )
            digest = w.digest
            with self._flock():
                final = self.blob_path(digest)
                if self._index.by_digest(digest) is None or not final.exists():
                    self._evict(w.compressed_bytes)
                    final.parent.mkdir(exist_ok=True)
                    os.replace(tmp, final)
                    tmp_kept = False
                    fsync_dir(final.parent)
                self._index.add(
                    key, digest, artifact.kind, artifact.name, w.size_bytes, w.compressed_bytes
                )
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise CacheDiskFull(
                    f"no space left on device writing the cache blob for {key!r} in {self.root}"
                ) from e
            raise
        finally:
            f.close()
            if tmp_kept:
                tmp.unlink(missing_ok=True)
        info = self._index.by_key(key)
        assert info is not None
        log.info(
            "cached %s as %s (%d -> %d bytes)", key, w.digest, w.size_bytes, w.compressed_bytes
        )
        return info

    def get(self, key: str) -> BlobInfo | None:
        """The cached artifact for ``key``, or None (then pull and ``put``)."""
        info = self._index.by_key(key)
        if info is None:
            return None
        if not self.blob_path(info.digest).exists():
            with self._flock():
                self._index.delete_blob(info.digest)
            return None
        self._index.touch(info.digest)
        return info

    def _resolve(self, ref: str | BlobInfo) -> BlobInfo:
        if isinstance(ref, BlobInfo):
            return ref
        info = self._index.by_key(ref) or self._index.by_digest(ref)
        if info is None:
            raise NotFound(f"nothing cached under {ref!r}")
        return info

    def forget(self, key: str) -> bool:
        """Drop ``key``; its blob stays until evicted or pruned."""
        return self._index.forget(key)

    # --- unpack ------------------------------------------------------------

    def unpack(self, ref: str | BlobInfo, dest: Path) -> Path:
        """Unpack the artifact (by key, digest or ``BlobInfo``) so that ``dest``
        holds it: a directory's contents, or ``dest/<name>`` for a file; return
        that path. Skipped when ``dest`` already holds a verified copy.

        Raises ``BlobCorrupt`` (blob removed: pull again) and ``UnsafeArtifact``.
        """
        info = self._resolve(ref)
        dest = Path(dest)
        result = dest if info.kind == "dir" else dest / info.name
        with contextlib.suppress(OSError):
            if (dest / MARKER).read_text() == marker_text(info.digest):
                self._index.touch(info.digest)
                return result
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.unpack-"))
        try:
            try:
                unpack_blob(self.blob_path(info.digest), info.kind, info.name, info.digest, work)
            except Damaged as e:
                raise self._corrupt(info.digest, e.reason) from None
            (work / MARKER).write_text(marker_text(info.digest))
            swap_in(work, dest, MARKER, marker_text(info.digest))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._index.touch(info.digest)
        return result

    def _corrupt(self, digest: str, reason: str) -> BlobCorrupt:
        with self._flock():
            self.blob_path(digest).unlink(missing_ok=True)
            self._index.delete_blob(digest)
            self._index.bump("corrupt")
        log.warning("cache blob %s is corrupt (%s): removed, to be fetched again", digest, reason)
        return BlobCorrupt(digest, reason)

    # --- pins, eviction, upkeep --------------------------------------------

    def pin(self, ref: str | BlobInfo) -> int:
        """Mark the blob as needed by a loaded model; returns its pin count."""
        return self._index.pin(self._resolve(ref).digest, self.owner, 1)

    def unpin(self, ref: str | BlobInfo) -> int:
        return self._index.pin(self._resolve(ref).digest, self.owner, -1)

    def evict_to_fit(self, nbytes: int) -> list[str]:
        """Evict LRU unpinned blobs until ``nbytes`` more fit; the digests evicted."""
        with self._flock():
            return self._evict(nbytes)

    def _evict(self, nbytes: int) -> list[str]:
        if nbytes > self.quota_bytes:
            raise ArtifactTooLarge(
                f"{nbytes} bytes exceed the cache quota of {self.quota_bytes} bytes"
            )
        used = self._index.used_bytes()
        evicted: list[str] = []
        for digest, csize in self._index.lru_unpinned():
            if used + nbytes <= self.quota_bytes:
                break
            self.blob_path(digest).unlink(missing_ok=True)
            self._index.delete_blob(digest)
            used -= csize
            evicted.append(digest)
        if evicted:
            self._index.bump("evicted", len(evicted))
            log.info("evicted %d cache blobs to fit %d bytes", len(evicted), nbytes)
        if used + nbytes > self.quota_bytes:
            raise CacheFull(
                f"cache quota {self.quota_bytes} bytes is held by pinned blobs;"
                f" {nbytes} more bytes do not fit"
            )
        return evicted

    def stats(self) -> CacheStats:
        blobs = self._index.blobs()
        counters = self._index.counters()
        return CacheStats(
            quota_bytes=self.quota_bytes,
            used_bytes=sum(b.compressed_bytes for b in blobs),
            size_bytes=sum(b.size_bytes for b in blobs),
            blobs=len(blobs),
            keys=len(self._index.keys()),
            pinned_blobs=sum(1 for b in blobs if b.pins > 0),
            corrupt_total=counters.get("corrupt", 0),
            evicted_total=counters.get("evicted", 0),
        )

    def ls(self) -> list[BlobInfo]:
        """One entry per key (ordered by key), then blobs no key names."""
        out = [i for key, _ in self._index.keys() if (i := self._index.by_key(key))]
        named = {i.digest for i in out}
        return out + [b for b in self._index.blobs() if b.digest not in named]

    def prune(self) -> PruneResult:
        """Remove dead temp files, blob files with no row, rows with no file,
        and unpinned blobs that no key names."""
        with self._flock():
            temps = self._sweep_temps()
            known = {b.digest: b for b in self._index.blobs()}
            orphans = freed = missing = 0
            for path in (self.root / "blobs").glob("*/*"):
                if path.name.removesuffix(".zst") not in known:
                    freed += path.stat().st_size
                    path.unlink()
                    orphans += 1
            for digest in known:
                if not self.blob_path(digest).exists():
                    self._index.delete_blob(digest)
                    missing += 1
            unreferenced = self._index.unreferenced()
            for digest in unreferenced:
                freed += known[digest].compressed_bytes
                self.blob_path(digest).unlink(missing_ok=True)
                self._index.delete_blob(digest)
        return PruneResult(temps, orphans, missing, len(unreferenced), freed)
