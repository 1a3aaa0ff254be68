"""Model artifacts on this node: storage -> node cache -> unpacked copy.

``ArtifactStore.fetch(spec)`` gives the local path a runtime loads a model
from, taking the fastest way there:

* an unpacked copy with the right digest already exists: nothing to do;
* the node cache holds the artifact: unpack it (verified, see
  ``agent.cache.node``);
* otherwise pull it from storage (``agent.storage``), compress it into the
  cache, then unpack it. ``file://`` and plain paths are compressed straight
  from where they are, with no staging copy.

Concurrent fetches of one artifact share one pull (keyed by URI and storage
key) and one unpack (keyed by digest and name). Each ``fetch`` takes a
reference that ``release`` gives back: while any is held the blob is pinned
in the cache (never evicted) and the unpacked copy stays; after the last one
the copy is deleted (the blob stays cached). A blob found corrupt on unpack is
removed by the cache and pulled again, once per fetch.

Decisions:

* The cache key is the URI (plus the storage key). A URI is taken to name
  immutable content, as ModelMesh does: new model content needs a new URI, or
  ``meshlet cache prune --max-bytes 0`` to drop what is cached.
* The pull size limit is the cache quota, in uncompressed bytes: an artifact
  larger than the whole quota is ``RESOURCE_EXHAUSTED`` before it fills a disk.
* Unpacked copies live under this agent's own work dir
  (``<data_dir>/artifacts``), not the shared cache dir, so one agent's cleanup
  never removes files another agent's runtime reads. Copies left by a crash are
  reused when their digest marker matches (``prepare`` removes the rest).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.cache.errors import BlobCorrupt
from agent.cache.index import BlobInfo
from agent.cache.node import BOOT_ID, MARKER, NodeCache
from agent.errors import InvalidStorageUri, LoadFailed
from agent.metrics import Metrics
from agent.registry.spec import ModelSpec
from agent.storage.base import display_uri
from agent.storage.local import FilePuller
from agent.storage.pull import PullerSettings, pull_into, scheme_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Artifact:
    """One fetched artifact, held until ``ArtifactStore.release``."""

    key: str
    digest: str
    path: Path  # what the runtime loads: the directory, or the file in it
    size_bytes: int  # uncompressed
    _dest: Path = field(repr=False, compare=False, default=Path())


@dataclass(slots=True)
class _Copy:
    """An unpacked copy in use: its references and the lock its unpack and
    removal take."""

    refs: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def cache_key(spec: ModelSpec) -> str:
    """The cache key of a model's artifact: its URI, and the storage key if any."""
    if spec.storage_key:
        return f"{spec.uri} [storage key {spec.storage_key}]"
    return spec.uri


class ArtifactStore:
    """Fetches artifacts through the node cache; see the module docstring."""

    def __init__(
        self,
        cache: NodeCache,
        work_dir: Path,
        pullers: Callable[[], PullerSettings],
        metrics: Metrics,
        allowed_roots: Sequence[Path] = (),
    ) -> None:
        """``pullers`` is called for every pull, so rotated credentials (a
        Secret mount updated in place) apply without a restart."""
        self.cache = cache
        self._unpacked = work_dir / "unpacked"
        self._staging = work_dir / "staging"
        self._pullers = pullers
        self._files = FilePuller(allowed_roots)
        self._metrics = metrics
        self._pulls: dict[str, asyncio.Task[BlobInfo]] = {}
        self._copies: dict[Path, _Copy] = {}

    def prepare(self) -> None:
        """Tidy what a crashed run left (blocking; call at start, before any
        runtime can read): staging files, half-done unpacks, and unpacked
        copies whose blob the cache no longer has. Complete copies of cached
        blobs stay, to be reused by the next load that needs them."""
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging.mkdir(parents=True, exist_ok=True)
        self._unpacked.mkdir(parents=True, exist_ok=True)
        cached = {info.digest for info in self.cache.ls()}
        for entry in self._unpacked.iterdir():
            try:
                digest, _, boot = (entry / MARKER).read_text().partition(" ")
            except OSError:
                digest, boot = "", ""
            if entry.name.startswith(".") or digest not in cached or boot != BOOT_ID:
                shutil.rmtree(entry, ignore_errors=True)

    def check_uri(self, uri: str) -> None:
        """Refuse at registration what a fetch would refuse: a file URI outside
        the permitted roots, or inside them but naming nothing
        (``InvalidStorageUri``). Outside the roots existence is never told."""
        if scheme_of(uri) not in ("", "file"):
            return
        path = self._files.local_path(uri)
        try:
            path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidStorageUri(f"storage uri {uri!r}: {path} does not exist") from None
        except OSError:
            pass  # there but unreadable to us (EACCES, say): the fetch reports it

    # --- fetch / release ---------------------------------------------------

    async def fetch(self, spec: ModelSpec) -> Artifact:
        """The model's artifact, unpacked and referenced; ``release`` it."""
        key = cache_key(spec)
        info = await self.cached(spec)
        try:
            return await self._acquire(key, info)
        except BlobCorrupt:
            self._metrics.cache_corrupt.inc()
        # The cache removed the damaged blob; fetch it again, once.
        info = await self.cached(spec)
        return await self._acquire(key, info)

    async def cached(self, spec: ModelSpec) -> BlobInfo:
        """The model's artifact in the node cache, pulled if it is not there."""
        key = cache_key(spec)
        info = await asyncio.to_thread(self.cache.get, key)
        if info is not None:
            self._metrics.cache_hits.inc()
            return info
        task = self._pulls.get(key)
        if task is None:
            self._metrics.cache_misses.inc()
            task = asyncio.create_task(self._pull(spec, key), name=f"pull:{key}")
            self._pulls[key] = task
            task.add_done_callback(functools.partial(self._pull_done, key))
        return await asyncio.shield(task)

    def _pull_done(self, key: str, task: asyncio.Task[BlobInfo]) -> None:
        if self._pulls.get(key) is task:
            del self._pulls[key]
        if not task.cancelled():
            task.exception()  # retrieved: a pull nobody awaits any more is not an error

    async def _pull(self, spec: ModelSpec, key: str) -> BlobInfo:
        started = time.perf_counter()
        try:
            info = await self._pull_into_cache(spec, key)
        except OSError as err:  # not one of ours: a local file we may not read, say
            self._metrics.pull_failures.inc()
            raise LoadFailed(f"storage uri {display_uri(spec.uri)!r}: {err}") from err
        except BaseException:
            self._metrics.pull_failures.inc()
            raise
        self._metrics.pull_seconds.observe(time.perf_counter() - started)
        self._metrics.pulled_bytes.inc(info.size_bytes)
        log.info(
            "pulled %s into the cache in %.2f s (%d bytes, %d compressed)",
            display_uri(spec.uri), time.perf_counter() - started,
            info.size_bytes, info.compressed_bytes,
        )
        return info

    async def _pull_into_cache(self, spec: ModelSpec, key: str) -> BlobInfo:
        if scheme_of(spec.uri) in ("", "file"):
            src = self._files.local_path(spec.uri)
            if not src.exists():
                raise LoadFailed(f"storage uri {spec.uri!r}: {src} does not exist")
            return await asyncio.to_thread(self.cache.put, key, src)
        staging = self._staging / uuid.uuid4().hex
        try:
            pulled = await pull_into(
                spec.uri, staging, self.cache.quota_bytes, settings=self._pullers(),
                storage_key=spec.storage_key or None,
            )
            return await asyncio.to_thread(self.cache.put, key, pulled.path)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    def _dest(self, info: BlobInfo) -> Path:
        # Keyed by digest and name: one content under two file names is two copies.
        name = hashlib.sha256(f"{info.digest}\0{info.kind}\0{info.name}".encode()).hexdigest()
        return self._unpacked / name[:40]

    async def _acquire(self, key: str, info: BlobInfo) -> Artifact:
        dest = self._dest(info)
        copy = self._copies.setdefault(dest, _Copy())
        copy.refs += 1
        try:
            # Pinned first, so that no eviction (here or by another agent on the
            # node) removes the blob while it is unpacked.
            await asyncio.to_thread(self.cache.pin, info)
        except BaseException:
            await self._drop(dest, copy)
            raise
        try:
            async with copy.lock:
                started = time.perf_counter()
                path = await asyncio.to_thread(self.cache.unpack, info, dest)
                self._metrics.unpack_seconds.observe(time.perf_counter() - started)
        except BaseException:
            await self._unpin(info.digest)
            await self._drop(dest, copy)
            raise
        return Artifact(key, info.digest, path, info.size_bytes, dest)

    async def release(self, artifact: Artifact) -> None:
        """Give back a reference: unpin, and delete the copy after the last."""
        copy = self._copies.get(artifact._dest)
        if copy is None:
            return
        await self._unpin(artifact.digest)
        await self._drop(artifact._dest, copy)

    async def _unpin(self, digest: str) -> None:
        try:
            await asyncio.to_thread(self.cache.unpin, digest)
        except Exception as err:  # the blob may be gone (pruned): nothing to unpin
            log.debug("unpin of %s: %s", digest, err)

    async def _drop(self, dest: Path, copy: _Copy) -> None:
        copy.refs -= 1
        if copy.refs > 0:
            return
        async with copy.lock:
            if copy.refs == 0:
                await asyncio.to_thread(shutil.rmtree, dest, True)
                if self._copies.get(dest) is copy:
                    del self._copies[dest]

    # --- prefetch ----------------------------------------------------------

    async def prefetch(self, spec: ModelSpec) -> tuple[BlobInfo, bool]:
        """Fill the cache with the model's artifact without loading it; also
        whether it was cached already."""
        before = await asyncio.to_thread(self.cache.get, cache_key(spec))
        if before is not None:
            self._metrics.cache_hits.inc()
            return before, True
        return await self.cached(spec), False
