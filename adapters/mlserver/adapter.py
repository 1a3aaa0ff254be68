"""The MLServer runtime adapter: models packed into a pool of MLServer processes.

Which process gets a model is the pool's decision (adapters/pool.py: best
fit under per-process limits, a new process when all are full, empty extra
processes stopped); requests find their model's process through the pool.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from adapters.pool import ProcessPool
from adapters.runtime_process import RuntimeProcess
from adapters.sizing import LoadSizer
from agent.errors import LoadFailed, MeshletError, RuntimeUnavailable
from agent.registry.spec import ModelSpec

log = logging.getLogger(__name__)


# sockaddr_un.sun_path is 108 bytes with its NUL; past that bind() fails.
MAX_SOCKET_PATH_BYTES = 100


def short_socket_dir(work_dir: Path) -> str:
    """A private temp dir for sockets whose path under ``work_dir`` would be too
    long, named after the work dir: an agent that was SIGKILLed leaves it
    behind, and the next agent on the same data dir (the data-dir lock makes
    it the only one) clears it, so such leftovers never pile up."""
    digest = hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"meshlet-{digest}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return str(path)


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
        self._pool: ProcessPool[MLServerProcess] = ProcessPool(self._new_process, options.pool)
        self._sizers: dict[str, LoadSizer] = {}  # process name -> its load sizing
        self._listener: ModelsLostListener | None = None
        self._reason = "not started"
        self._temp_socket_dir: str | None = None
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------

    def _new_process(self, number: int) -> MLServerProcess:
        name = f"mlserver-{number}"
        return MLServerProcess(
            name, self._options, self._repository, self._socket_path(name), self._models_lost
        )

    async def start(self) -> None:
        if self._pool.processes or self._stopped:
            return
        await asyncio.to_thread(self._prepare_work_dir)
        try:
            await self._pool.start()
        except OSError as err:
            self._reason = f"cannot start mlserver: {err}"
            raise RuntimeUnavailable(self._reason) from err

    async def stop(self) -> None:
        self._stopped = True
        self._reason = "stopped"
        await self._pool.stop()
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
            self._temp_socket_dir = short_socket_dir(self._options.work_dir)
        return str(Path(self._temp_socket_dir) / f"{name}.sock")

    @property
    def available(self) -> bool:
        return not self._stopped and any(p.ready for p in self._pool.processes)

    @property
    def unavailable_reason(self) -> str:
        if self.available:
            return ""
        if self._stopped or not self._pool.processes:
            return self._reason
        return "; ".join(p.last_error for p in self._pool.processes)

    def set_models_lost_listener(self, listener: ModelsLostListener) -> None:
        self._listener = listener

    def _models_lost(self, process: RuntimeProcess, model_ids: list[str]) -> None:
        assert isinstance(process, MLServerProcess)
        self._pool.forget(process, model_ids)
        sizer = self._sizers.get(process.name)
        if sizer is not None:
            sizer.reset()
        log.warning("%s lost %d models", process.name, len(model_ids))
        if self._listener is not None:
            self._listener(self.kind, model_ids)

    def processes(self) -> list[RuntimeProcessInfo]:
        return [
            RuntimeProcessInfo(self.kind, pid, p.grpc_address, len(p.models))
            for p in self._pool.processes
            if (pid := p.pid) is not None
        ]

    # --- models ------------------------------------------------------------

    def supports(self, model_type: str) -> bool:
        return model_type in model_settings.IMPLEMENTATIONS

    def predict_size(self, spec: ModelSpec, artifact_bytes: int) -> int:
        return model_settings.predict_size(spec, artifact_bytes)

    async def load(
        self, spec: ModelSpec, artifact: Path | None, gpu: int | None = None,
        size_bytes: int = 0,
    ) -> int | None:
        if gpu is not None:
            raise LoadFailed(f"model {spec.model_id!r}: mlserver does not place models on GPUs")
        # The loader's figure (measured or predicted); the prediction without files
        # when called directly.
        size = size_bytes or model_settings.predict_size(spec, 0)
        process = await self._pool.place(spec.model_id, size)
        sizer = self._sizers.setdefault(process.name, LoadSizer())
        implementation = model_settings.IMPLEMENTATIONS.get(spec.model_type)
        first_of_type = implementation is not None and not process.prepared(implementation)
        try:
            if implementation is not None and first_of_type:
                # The runtime's first import (scikit-learn: ~80 MiB) is the
                # process's cost, not this model's: done before measuring, and
                # this load (which imports what unpickling needs) is not measured.
                sizer.other_growth()
                await process.prepare(implementation)
            folder = model_settings.write_model_settings(self._repository, spec, artifact)
        except BaseException:
            await asyncio.shield(self._give_back(spec.model_id))
            raise
        token = sizer.begin(process.pid, alone=not first_of_type)
        ok = False
        try:
            await process.load(spec.model_id)
            ok = True
        except BaseException:
            # MLServer may hold a half-loaded copy; drop it and its settings.
            # Shielded: this also runs when the caller's own timeout cancels us.
            await asyncio.shield(self._discard(process, spec.model_id, folder))
            raise
        finally:
            measured = sizer.end(process.pid, token, ok, size)
        return measured

    async def _discard(self, process: MLServerProcess, model_id: str, folder: Path) -> None:
        try:
            await process.unload(model_id)
        except MeshletError as err:
            log.warning("cleaning up failed load of %r: %s", model_id, err.message)
        shutil.rmtree(folder, ignore_errors=True)
        await self._give_back(model_id)

    async def _give_back(self, model_id: str) -> None:
        process = self._pool.release(model_id)
        if process is not None:
            await self._pool.shrink(process)

    async def unload(self, model_id: str) -> None:
        folder = model_settings.settings_folder(self._repository, model_id)
        process = self._pool.process_of(model_id)
        try:
            if process is not None:
                await process.unload(model_id)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            await self._give_back(model_id)

    async def infer(self, model_id: str, request: bytes) -> bytes:
        # Hot path. A model this adapter does not place still goes to a
        # process, whose answer (NOT_FOUND) names the model.
        process = self._pool.process_of(model_id) or self._first()
        channel = process.channel if process is not None else None
        if channel is None:
            raise RuntimeUnavailable(f"mlserver is not running: {self.unavailable_reason}")
        return await channel.infer(request)

    async def metadata(self, model_id: str) -> bytes:
        process = self._pool.process_of(model_id) or self._first()
        if process is None:
            raise RuntimeUnavailable(f"mlserver is not running: {self.unavailable_reason}")
        return await process.metadata(model_id)

    def _first(self) -> MLServerProcess | None:
        processes = self._pool.processes
        return processes[0] if processes else None
