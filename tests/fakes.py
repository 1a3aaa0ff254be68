"""In-memory stand-ins behind meshlet's own interfaces, for unit tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from adapters.base import ModelsLostListener, RuntimeAdapter, RuntimeOptions, RuntimeProcessInfo
from adapters.pool import PoolFull
from agent.errors import Code, LoadFailed, RuntimeRequestFailed
from agent.registry.spec import ModelSpec


class FakeAdapter(RuntimeAdapter):
    """Loads instantly (or when ``gate`` is set), echoes requests back."""

    kind = "mlserver"

    def __init__(self, size: int = 100) -> None:
        super().__init__(RuntimeOptions(work_dir=Path("/nonexistent")))
        self.size = size
        self.loaded: set[str] = set()
        self.load_calls: list[str] = []
        self.artifacts: dict[str, Path | None] = {}  # model id -> the path it loaded from
        self.measured: dict[str, int] = {}  # model id -> the size its load reports
        self.gpus: dict[str, int | None] = {}  # model id -> the GPU it was loaded on
        self.gpu_capable = True
        self.max_loaded = 0  # > 0: loads beyond this many raise PoolFull, as a full pool
        self.unload_calls: list[str] = []
        self.fail: dict[str, str] = {}
        self.gate: asyncio.Event | None = None
        self.listener: ModelsLostListener | None = None

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    @property
    def available(self) -> bool:
        return True

    def supports(self, model_type: str) -> bool:
        return model_type != "unsupported"

    def predict_size(self, spec: ModelSpec, artifact_bytes: int) -> int:
        return spec.size_hint or self.size

    async def load(
        self, spec: ModelSpec, artifact: Path | None, gpu: int | None = None,
        size_bytes: int = 0,
    ) -> int | None:
        self.load_calls.append(spec.model_id)
        self.gpus[spec.model_id] = gpu
        self.artifacts[spec.model_id] = artifact
        if self.gate is not None:
            await self.gate.wait()
        if spec.model_id in self.fail:
            raise LoadFailed(self.fail[spec.model_id])
        if self.max_loaded and len(self.loaded) >= self.max_loaded:
            raise PoolFull(f"all processes full ({self.max_loaded} models)")
        self.loaded.add(spec.model_id)
        return self.measured.get(spec.model_id)

    async def unload(self, model_id: str) -> None:
        self.unload_calls.append(model_id)
        self.loaded.discard(model_id)

    async def infer(self, model_id: str, request: bytes) -> bytes:
        if model_id not in self.loaded:
            raise RuntimeRequestFailed(Code.NOT_FOUND, f"model {model_id} not loaded")
        return request

    def set_models_lost_listener(self, listener: ModelsLostListener) -> None:
        self.listener = listener

    def processes(self) -> list[RuntimeProcessInfo]:
        return []

    def crash(self) -> None:
        """As if the runtime process died and came back empty."""
        lost, self.loaded = self.loaded, set()
        assert self.listener is not None
        self.listener(self.kind, lost)
