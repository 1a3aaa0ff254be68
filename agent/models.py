"""Model lifecycle: register, unregister, load on request, and status.

The management APIs (ModelMesh's, the KServe repository extension, the CLI)
all go through ``ModelService``, so a registration means the same thing
whichever door it came in by.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from adapters.base import RuntimeAdapter, missing_package, runtimes_serving, served_types
from agent.artifacts import ArtifactStore
from agent.cache.index import BlobInfo
from agent.errors import InvalidSpec, MeshletError, ModelNotFound, PackageMissing
from agent.inventory import Inventory, LoadedModel
from agent.loader import Loader
from agent.registry.spec import ModelSpec
from agent.registry.store import ModelRegistry, PutResult

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    """Numbered as ModelMesh's ``ModelStatusInfo.ModelStatus``."""

    NOT_FOUND = 0
    NOT_LOADED = 1
    LOADING = 2
    LOADED = 3
    LOADING_FAILED = 4


@dataclass(frozen=True)
class ModelStatus:
    model_id: str
    state: ModelState
    errors: list[str] = field(default_factory=list)
    spec: ModelSpec | None = None
    size_bytes: int = 0
    in_flight: int = 0
    since: float = 0.0  # when the state began (load time, failure time), epoch seconds


class ModelService:
    def __init__(
        self,
        registry: ModelRegistry,
        inventory: Inventory,
        loader: Loader,
        adapters: dict[str, RuntimeAdapter],
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self._registry = registry
        self._artifacts = artifacts
        self._inventory = inventory
        self._loader = loader
        self._adapters = adapters
        self._background: set[asyncio.Task[None]] = set()

    def check(self, spec: ModelSpec) -> ModelSpec:
        """Validate a spec as far as this node can tell before any load: its
        fields, whether its runtime serves its type (``InvalidSpec`` naming the
        runtime that does), whether that runtime has the type's package
        (``PackageMissing``), and whether a local path exists (``InvalidStorageUri``)."""
        spec.validated()
        adapter = self._adapters.get(spec.runtime)
        if spec.gpu and adapter is not None and not adapter.gpu_capable:
            raise InvalidSpec(
                f"model {spec.model_id!r} asks for a GPU, but runtime {spec.runtime!r} does "
                "not place models on GPUs (triton does)"
            )
        self._check_type(spec, adapter)
        if self._artifacts is not None and not spec.is_builtin:
            self._artifacts.check_uri(spec.uri)
        return spec

    @staticmethod
    def _check_type(spec: ModelSpec, adapter: RuntimeAdapter | None) -> None:
        model_type, runtime = spec.model_type, spec.runtime
        # A runtime this node does not run is judged by its list of types (and
        # its packages not at all): the registry is cluster-wide, and a node
        # that runs it may load the model.
        served = (
            adapter.supports(model_type) if adapter is not None
            else model_type in served_types(runtime)
        )
        if served:
            package = missing_package(runtime, model_type) if adapter is not None else None
            if package is not None:
                raise PackageMissing(
                    f"model type {model_type!r} needs the package {package!r}, which is not "
                    f"installed for runtime {runtime!r} on this node: pip install {package}",
                    package,
                )
            return
        others = [kind for kind in runtimes_serving(model_type) if kind != runtime]
        if others:
            fix = others[0]
            raise InvalidSpec(
                f"model type {model_type!r} is served by runtime {fix!r}, not {runtime!r}: "
                f"register it with --runtime {fix} (ModelMesh API: modelInfo.key "
                f'{{"runtime": "{fix}"}})'
            )
        if model_type in served_types(runtime):
            raise InvalidSpec(
                f"model type {model_type!r} cannot be served by runtime {runtime!r} on this "
                "node: the runtime lacks its backend"
            )
        raise InvalidSpec(
            f"model type {model_type!r} cannot be served by runtime {runtime!r} (its types: "
            f"{', '.join(sorted(served_types(runtime)))})"
        )

    async def register(self, spec: ModelSpec, auto_delete: bool = False) -> PutResult:
        result = self._registry.put(self.check(spec), auto_delete=auto_delete)
        if result is PutResult.REPLACED:
            await self._loader.unload(spec.model_id, reason="replaced")
        if result is not PutResult.UNCHANGED:
            self._loader.failures.pop(spec.model_id, None)
        return result

    async def register_many(self, specs: Iterable[ModelSpec]) -> int:
        written, replaced = await asyncio.to_thread(
            self._registry.put_many, (self.check(s) for s in specs)
        )
        for model_id in replaced:
            await self._loader.unload(model_id, reason="replaced")
        return written

    async def unregister(self, model_id: str) -> bool:
        existed = self._registry.delete(model_id)
        await self._loader.unload(model_id, reason="unregistered")
        self._loader.failures.pop(model_id, None)
        return existed

    async def apply_remote(self, model_id: str, spec: ModelSpec | None, auto_delete: bool) -> None:
        """A registry write from a peer (``agent.cluster.registry_sync``): stored
        without being replicated again, and a model whose spec changed or that
        was deleted is unloaded here. Not checked against this node's runtimes,
        packages or files (the path may exist on the writer's node only): the
        registry is cluster-wide, and placement picks a node that can load it."""
        if spec is None:
            existed = self._registry.delete(model_id, notify=False)
            if existed or model_id in self._inventory:
                await self._loader.unload(model_id, reason="unregistered")
            self._loader.failures.pop(model_id, None)
            return
        result = self._registry.put(spec, auto_delete=auto_delete, notify=False)
        if result is PutResult.REPLACED:
            await self._loader.unload(model_id, reason="replaced")
        if result is not PutResult.UNCHANGED:
            self._loader.failures.pop(model_id, None)

    async def ensure_loaded(self, model_id: str) -> LoadedModel:
        model = self._inventory.get(model_id)
        if model is not None:
            return model
        spec = self._registry.get(model_id)
        if spec is None:
            raise ModelNotFound(model_id)
        return await self._loader.ensure_loaded(spec)

    async def prefetch(self, model_id: str) -> tuple[BlobInfo, bool]:
        """Fill the node cache with a registered model's artifact without
        loading it; the blob, and whether it was cached already."""
        spec = self._registry.get(model_id)
        if spec is None:
            raise ModelNotFound(model_id)
        if spec.is_builtin or self._artifacts is None:
            raise InvalidSpec(f"model {model_id!r} is builtin: it has no artifact to fetch")
        return await self._artifacts.prefetch(spec)

    def load_in_background(self, model_id: str) -> None:
        task = asyncio.create_task(self._load_quietly(model_id), name=f"bg-load:{model_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load_quietly(self, model_id: str) -> None:
        try:
            await self.ensure_loaded(model_id)
        except MeshletError as err:
            log.info("background load of %s failed: %s", model_id, err.message)

    async def unload(self, model_id: str, reason: str = "unloaded") -> bool:
        if model_id not in self._inventory and self._registry.get(model_id) is None:
            raise ModelNotFound(model_id)
        return await self._loader.unload(model_id, reason=reason)

    def is_loading(self, model_id: str) -> bool:
        """A load of the model is under way here (its requests wait for it)."""
        return self._loader.is_loading(model_id)

    def state_of(self, model_id: str) -> tuple[ModelState, str]:
        """State and failure reason of a model known to be registered (cheap)."""
        if model_id in self._inventory:
            return ModelState.LOADED, ""
        if self._loader.is_loading(model_id):
            return ModelState.LOADING, ""
        failure = self._loader.failures.get(model_id)
        if failure is not None:
            return ModelState.LOADING_FAILED, failure[1]
        return ModelState.NOT_LOADED, ""

    def status(self, model_id: str) -> ModelStatus:
        loaded = self._inventory.get(model_id)
        if loaded is not None:
            return ModelStatus(
                model_id, ModelState.LOADED, spec=loaded.spec, size_bytes=loaded.size_bytes,
                in_flight=loaded.in_flight, since=loaded.loaded_at,
            )
        spec = self._registry.get(model_id)
        if spec is None:
            return ModelStatus(model_id, ModelState.NOT_FOUND)
        if self._loader.is_loading(model_id):
            return ModelStatus(model_id, ModelState.LOADING, spec=spec)
        failure = self._loader.failures.get(model_id)
        if failure is not None:
            return ModelStatus(
                model_id, ModelState.LOADING_FAILED, errors=[failure[1]], spec=spec,
                since=failure[0],
            )
        return ModelStatus(model_id, ModelState.NOT_LOADED, spec=spec)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
