"""The MLServer runtime adapter: models packed into MLServer processes.

One process for now. The adapter already keeps "which process holds which
model" (``_placement``) so that a pool of processes only changes where a
load goes, not how requests find their model.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

from adapters.base import (
    ModelsLostListener,
    RuntimeAdapter,
    RuntimeOptions,
    RuntimeProcessInfo,
)
from adapters.mlserver import model_settings
from adapters.mlserver.process import MLServerProcess
from adapters.runtime_process import RuntimeProcess
from agent.errors import MeshletError, RuntimeUnavailable
from agent.registry.spec import ModelSpec

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes with its NUL; past that bind() fails.
MAX_SOCKET_PATH_BYTES = 100


class MLServerAdapter(RuntimeAdapter):
    """Serves model types from ``model_settings.IMPLEMENTATIONS`` in MLServer.

    Layout under ``options.work_dir``: ``repository/<model id>/model-settings.json``
    (read by ``DirectModelRepository`` inside MLServer) and the channel
    sockets (``mlserver-<n>.sock``, or a short temp dir if that path is too
    long for a unix socket).
    """

    kind = "mlserver"

    def __init__(self, options: RuntimeOptions) -> None:
        self._options = options
        self._repository = options.work_dir / "repository"
        self._processes: list[MLServerProcess] = []
        self._placement: dict[str, MLServerProcess] = {}  # model id -> its process
        self._listener: ModelsLostListener | None = None
        self._reason = "not started"
        self._temp_socket_dir: str | None = None
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._processes or self._stopped:
            return
        await asyncio.to_thread(self._prepare_work_dir)
        process = MLServerProcess(
            "mlserver-0",
            self._options,
            self._repository,
            self._socket_path("mlserver-0"),
            self._models_lost,
        )
        self._processes.append(process)
        try:
            await process.start()
        except OSError as err:
            self._reason = f"cannot start mlserver: {err}"
            await process.stop()
            self._processes.remove(process)
            raise RuntimeUnavailable(self._reason) from err

    async def stop(self) -> None:
        self._stopped = True
        self._reason = "stopped"
        for process in self._processes:
            await process.stop()
        self._placement.clear()
        if self._temp_socket_dir is not None:
            shutil.rmtree(self._temp_socket_dir, ignore_errors=True)
            self._temp_socket_dir = None

    def _prepare_work_dir(self) -> None:
        # A fresh runtime holds nothing: settings left by an earlier run would
        # only be stale.
        shutil.rmtree(self._repository, ignore_errors=True)
        self._repository.mkdir(parents=True, exist_ok=True)

    def _socket_path(self, name: str) -> str:
        path = str(self._options.work_dir / f"{name}.sock")
        if len(path.encode()) <= MAX_SOCKET_PATH_BYTES:
            return path
        if self._temp_socket_dir is None:
            self._temp_socket_dir = tempfile.mkdtemp(prefix="meshlet-")
        return str(Path(self._temp_socket_dir) / f"{name}.sock")

    @property
    def available(self) -> bool:
        return not self._stopped and any(p.ready for p in self._processes)

    @property
    def unavailable_reason(self) -> str:
        if self.available:
            return ""
        if self._stopped or not self._processes:
            return self._reason
        return "; ".join(p.last_error for p in self._processes)

    def set_models_lost_listener(self, listener: ModelsLostListener) -> None:
        self._listener = listener

    def _models_lost(self, process: RuntimeProcess, model_ids: list[str]) -> None:
        for model_id in model_ids:
            if self._placement.get(model_id) is process:
                del self._placement[model_id]
        log.warning("%s lost %d models", process.name, len(model_ids))
        if self._listener is not None:
            self._listener(self.kind, model_ids)

    def processes(self) -> list[RuntimeProcessInfo]:
        return [
            RuntimeProcessInfo(self.kind, pid, p.grpc_address, len(p.models))
            for p in self._processes
            if (pid := p.pid) is not None
        ]

    # --- models ------------------------------------------------------------

    def supports(self, model_type: str) -> bool:
        return model_type in model_settings.IMPLEMENTATIONS

    def predict_size(self, spec: ModelSpec, artifact_bytes: int) -> int:
        return model_settings.predict_size(spec, artifact_bytes)

    def _process_for(self, spec: ModelSpec) -> MLServerProcess:
        # The one place a pool will choose among processes.
        for process in self._processes:
            if process.ready:
                return process
        raise RuntimeUnavailable(f"mlserver is not running: {self.unavailable_reason}")

    async def load(self, spec: ModelSpec, artifact: Path | None) -> int | None:
        process = self._process_for(spec)
        folder = model_settings.write_model_settings(self._repository, spec, artifact)
        try:
            await process.load(spec.model_id)
        except BaseException:
            # MLServer may hold a half-loaded copy; drop it and its settings.
            # Shielded: this also runs when the caller's own timeout cancels us.
            await asyncio.shield(self._discard(process, spec.model_id, folder))
            raise
        self._placement[spec.model_id] = process
        return None  # models share one process: no per-model measurement yet

    async def _discard(self, process: MLServerProcess, model_id: str, folder: Path) -> None:
        try:
            await process.unload(model_id)
        except MeshletError as err:
            log.warning("cleaning up failed load of %r: %s", model_id, err.message)
        shutil.rmtree(folder, ignore_errors=True)

    async def unload(self, model_id: str) -> None:
        folder = model_settings.settings_folder(self._repository, model_id)
        process = self._placement.pop(model_id, None)
        try:
            if process is not None:
                await process.unload(model_id)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def infer(self, model_id: str, request: bytes) -> bytes:
        # Hot path. A model this adapter does not place still goes to a
        # process, whose answer (NOT_FOUND) names the model.
        process = self._placement.get(model_id)
        if process is None:
            process = self._processes[0] if self._processes else None
        channel = process.channel if process is not None else None
        if channel is None:
            raise RuntimeUnavailable(f"mlserver is not running: {self.unavailable_reason}")
        return await channel.infer(request)

    async def metadata(self, model_id: str) -> bytes:
        process = self._placement.get(model_id) or self._process_for_any()
        return await process.metadata(model_id)

    def _process_for_any(self) -> MLServerProcess:
        if not self._processes:
            raise RuntimeUnavailable(f"mlserver is not running: {self.unavailable_reason}")
        return self._processes[0]
