"""Loading models into runtimes: single-flight loads and LRU eviction.

``ensure_loaded`` is the one way a model gets loaded. Concurrent callers for
the same model share one load (the load runs in its own task, so a caller that
gives up does not cancel it for the others). A load first fetches the model's
artifact through the node cache (``agent.artifacts``; builtin models have
none), so its predicted size can use the artifact's real size; then least
recently used models with no request in flight are unloaded until that size
fits the memory budget. A GPU model (``spec.gpu``) is first given a GPU by
``agent.resources.placement`` on fresh NVML figures, evicting the least
recently used idle GPU models there if it must (RESOURCE_EXHAUSTED naming the
shortfall when even that cannot fit it). The size is the one last measured for this model on
this runtime (kept in the registry), else the runtime's prediction; a runtime
that measures a load replaces it, and the measurement is written back in
batches. The artifact is held while the model is loaded and
released when it is unloaded or its runtime dies. A failed load is remembered
(for status) but not cached: the next request tries again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from adapters.base import RuntimeAdapter
from adapters.pool import PoolFull
from agent.artifacts import Artifact, ArtifactStore
from agent.errors import (
    CapacityExhausted,
    LoadFailed,
    MeshletError,
    ModelTooLarge,
    RuntimeRestarted,
    RuntimeUnavailable,
)
from agent.inventory import Inventory, LoadedModel
from agent.metrics import Metrics
from agent.registry.spec import ModelSpec
from agent.resources.gpu import GpuInfo
from agent.resources.placement import GpuModel, plan_gpu

log = logging.getLogger(__name__)


GPU_PLAN_ROUNDS = 3  # plan, evict, look again: at most this many times
SIZE_FLUSH_DELAY_S = 1.0  # measured sizes reach the registry in batches this often


class SizeStore(Protocol):
    """Where measured sizes are kept between loads (the registry)."""

    def measured_size(self, model_id: str, runtime: str) -> int | None: ...

    def put_sizes(self, sizes: Iterable[tuple[str, str, int]]) -> None: ...


class Loader:
    def __init__(
        self,
        inventory: Inventory,
        adapters: dict[str, RuntimeAdapter],
        budget_bytes: int,
        load_timeout_s: float,
        metrics: Metrics,
        artifacts: ArtifactStore | None = None,
        sizes: SizeStore | None = None,
        gpus: Callable[[], Awaitable[Sequence[GpuInfo]]] | None = None,
    ) -> None:
        """``artifacts`` None: nothing is fetched and runtimes get no files
        (unit tests with fake runtimes)."""
        self._inventory = inventory
        self._artifacts = artifacts
        self._sizes = sizes
        self._gpus = gpus  # a fresh NVML sample; None: this node has no GPU
        self._gpu_reserved: dict[int, int] = {}  # GPU index -> bytes of loads in flight
        self._pending_sizes: dict[str, tuple[str, int]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._adapters = adapters
        self.budget_bytes = budget_bytes
        self._load_timeout_s = load_timeout_s
        self._metrics = metrics
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._reserved_bytes = 0  # predicted sizes of loads under way
        self.failures: dict[str, tuple[float, str]] = {}  # id -> (when, reason)
        self._listeners: list[Callable[[str], None]] = []
        self._releasing: set[asyncio.Task[None]] = set()
        for adapter in adapters.values():
            adapter.set_models_lost_listener(self._models_lost)

    # --- queries -----------------------------------------------------------

    def is_loading(self, model_id: str) -> bool:
        return model_id in self._loading

    def on_loaded(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(model_id)`` after each successful load."""
        self._listeners.append(listener)

    # --- loading -----------------------------------------------------------

    async def ensure_loaded(self, spec: ModelSpec) -> LoadedModel:
        model = self._inventory.get(spec.model_id)
        if model is not None:
            return model
        task = self._loading.get(spec.model_id)
        if task is None:
            task = asyncio.create_task(self._load(spec), name=f"load:{spec.model_id}")
            self._loading[spec.model_id] = task
            task.add_done_callback(functools.partial(self._load_done, spec.model_id))
        return await asyncio.shield(task)

    def _load_done(self, model_id: str, task: asyncio.Task[LoadedModel]) -> None:
        if self._loading.get(model_id) is task:
            del self._loading[model_id]
        if not task.cancelled():
            task.exception()  # mark retrieved: with no caller left it would be logged

    def adapter_for(self, spec: ModelSpec) -> RuntimeAdapter:
        adapter = self._adapters.get(spec.runtime)
        if adapter is None:
            raise RuntimeUnavailable(
                f"model {spec.model_id!r} needs runtime {spec.runtime!r}, "
                f"which this node does not run"
            )
        return adapter

    async def _load(self, spec: ModelSpec) -> LoadedModel:
        started = time.perf_counter()
        try:
            adapter = self.adapter_for(spec)
            if not adapter.available:
                reason = adapter.unavailable_reason or "not running"
                raise RuntimeUnavailable(f"runtime {spec.runtime!r} is unavailable: {reason}")
            artifact = await self._fetch(spec)
        except MeshletError as err:
            self._record_failure(spec.model_id, err.message)
            raise
        try:
            model = await self._load_into(spec, adapter, artifact)
        except BaseException as err:
            if isinstance(err, MeshletError):
                self._record_failure(spec.model_id, err.message)
            if artifact is not None:
                await asyncio.shield(self._release(artifact))
            raise
        self._metrics.loads.inc()
        self._metrics.load_seconds.observe(time.perf_counter() - started)
        for listener in self._listeners:
            listener(spec.model_id)
        return model

    async def _fetch(self, spec: ModelSpec) -> Artifact | None:
        if spec.is_builtin or self._artifacts is None:
            return None
        try:
            return await self._artifacts.fetch(spec)
        except MeshletError as err:
            raise err.prefixed(f"model {spec.model_id!r}: ") from err

    async def _load_into(
        self, spec: ModelSpec, adapter: RuntimeAdapter, artifact: Artifact | None
    ) -> LoadedModel:
        predicted = adapter.predict_size(spec, artifact.size_bytes if artifact else 0)
        known = self._sizes.measured_size(spec.model_id, spec.runtime) if self._sizes else None
        size = known or predicted
        if size > self.budget_bytes:
            raise ModelTooLarge(
                f"model {spec.model_id!r} needs {size} bytes, more than the whole "
                f"memory budget of {self.budget_bytes} bytes"
            )
        gpu = await self._place_on_gpu(spec, size) if spec.gpu else None
        await self._make_room(size)
        self._reserved_bytes += size
        if gpu is not None:
            self._gpu_reserved[gpu] = self._gpu_reserved.get(gpu, 0) + size
        path = artifact.path if artifact else None
        try:
            measured = await self._load_with_room(adapter, spec, path, gpu, size)
        except TimeoutError:
            raise LoadFailed(
                f"model {spec.model_id!r}: load timed out after {self._load_timeout_s} s"
            ) from None
        finally:
            self._reserved_bytes -= size
            if gpu is not None:
                self._gpu_reserved[gpu] -= size
        self.failures.pop(spec.model_id, None)
        if measured is not None:
            self._metrics.size_error.observe(measured / predicted)
            if measured != known:
                self._remember_size(spec, measured)
            size = measured
        model = LoadedModel(
            spec, adapter, size, artifact=artifact, predicted_bytes=predicted, gpu=gpu
        )
        self._inventory.add(model)
        return model

    def _remember_size(self, spec: ModelSpec, measured: int) -> None:
        """Queue a measured size for the registry; written in batches."""
        if self._sizes is None:
            return
        self._pending_sizes[spec.model_id] = (spec.runtime, measured)
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(SIZE_FLUSH_DELAY_S, self.flush_sizes)

    def flush_sizes(self) -> None:
        """Write the measured sizes not yet in the registry (also at stop)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush_handle = None
        pending, self._pending_sizes = self._pending_sizes, {}
        if pending and self._sizes is not None:
            rows = [(model_id, runtime, size) for model_id, (runtime, size) in pending.items()]
            try:
                self._sizes.put_sizes(rows)  # one short SQLite transaction
            except Exception:
                log.exception("could not record %d measured sizes", len(rows))

    async def _place_on_gpu(self, spec: ModelSpec, size: int) -> int:
        """The GPU for a GPU model, after evicting what its plan says must go
        (``agent.resources.placement``); planned again on fresh NVML figures
        after each eviction, since what an eviction frees is an estimate."""
        for _ in range(GPU_PLAN_ROUNDS):
            gpus = await self._gpus() if self._gpus is not None else []
            loaded = [
                GpuModel(m.spec.model_id, m.gpu, m.size_bytes, float(rank), m.in_flight)
                for rank, m in self._inventory.on_gpus() if m.gpu is not None
            ]
            plan = plan_gpu(spec.model_id, size, gpus, loaded, reserved=self._gpu_reserved)
            if not plan.evict:
                return plan.gpu
            for victim in plan.evict:
                await self.unload(victim, reason="evicted")
        return plan.gpu

    async def _load_with_room(
        self, adapter: RuntimeAdapter, spec: ModelSpec, path: Path | None, gpu: int | None,
        size: int,
    ) -> int | None:
        """Load within ``load_timeout_s`` in all. While the runtime's processes
        are all full, unload that runtime's least recently used idle model and
        try again. When the runtime process dies during the load, try once
        more on its restarted process while time is left: once, because a
        model that kills its runtime must not take the runtime down again and
        again. Every caller waiting on the load gets an answer within the
        timeout: the model, or the error (UNAVAILABLE when it died twice)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._load_timeout_s
        retried = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            try:
                return await asyncio.wait_for(
                    adapter.load(spec, path, gpu=gpu, size_bytes=size), remaining
                )
            except PoolFull:
                victim = next(
                    (m for m in self._inventory.idle_lru() if m.adapter is adapter), None
                )
                if victim is None:
                    raise
                await self.unload(victim.spec.model_id, reason="evicted")
            except RuntimeRestarted as err:
                if retried:
                    raise
                retried = True
                log.warning("load of %s interrupted (%s); trying again", spec.model_id,
                            err.message)
                await adapter.wait_available(max(deadline - loop.time(), 0))

    async def _release(self, artifact: Artifact) -> None:
        if self._artifacts is not None:
            await self._artifacts.release(artifact)

    def _record_failure(self, model_id: str, reason: str) -> None:
        self.failures[model_id] = (time.time(), reason)
        self._metrics.load_failures.inc()
        log.warning("load of %s failed: %s", model_id, reason)

    async def _make_room(self, size: int) -> None:
        """Unload idle models, least recently used first, until ``size`` fits."""
        while self._inventory.used_bytes + self._reserved_bytes + size > self.budget_bytes:
            victim = next(self._inventory.idle_lru(), None)
            if victim is None:
                raise CapacityExhausted(
                    f"cannot fit {size} bytes: budget {self.budget_bytes}, "
                    f"{self._inventory.used_bytes} loaded and {self._reserved_bytes} loading, "
                    f"and every loaded model has requests in flight"
                )
            await self.unload(victim.spec.model_id, reason="evicted")

    async def unload(self, model_id: str, reason: str = "unloaded") -> bool:
        """Forget the model here and tell its runtime to unload it."""
        model = self._inventory.remove(model_id)
        if model is None:
            return False
        if reason == "evicted":
            self._metrics.evictions.inc()
        log.debug("%s %s (%d bytes)", reason, model_id, model.size_bytes)
        try:
            await model.adapter.unload(model_id)
        except MeshletError as err:
            # The runtime may have died; it holds nothing after its restart.
            log.warning("unload of %s failed: %s", model_id, err.message)
        if model.artifact is not None:
            await self._release(model.artifact)
        return True

    def _models_lost(self, kind: str, model_ids: Iterable[str]) -> None:
        lost = self._inventory.remove_many(model_ids)
        log.warning("runtime %s restarted: %d models will reload on demand", kind, len(lost))
        held = [m.artifact for m in lost if m.artifact is not None]
        if held:
            task = asyncio.get_running_loop().create_task(self._release_all(held))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release_all(self, artifacts: list[Artifact]) -> None:
        for artifact in artifacts:
            await self._release(artifact)
