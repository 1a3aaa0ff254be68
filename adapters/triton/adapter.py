"""The Triton runtime adapter: heavy models in one ``tritonserver`` process.

Layout under ``options.work_dir``: ``repository/<model id>/`` (config.pbtxt
and version ``1/`` of symlinks into the unpacked artifact, see layout.py) and
``backends/`` when the backends come from the nvidia-pytriton wheel (see
install.py).

Decisions:

* ``tritonserver`` not found: ``start`` raises ``RuntimeUnavailable`` with how
  to install it; the agent keeps serving its other runtimes and reports this
  one unavailable (log, ``/readyz``, load errors UNAVAILABLE).
* Size: a model's size is what its load added to the RSS of the server and its
  children (Python-backend stubs are child processes), measured around the
  load. Loads are serialized so that two loads never share a measurement.
* The server runs under a guard process (adapters/guard.py, see process.py):
  its stubs and shared-memory regions go with it, whether it stops, crashes,
  is killed, or the agent itself is SIGKILLed. ``processes()`` reports the
  guard, whose tree holds the server and its stubs.
* A Python-backend stub that dies under a live server makes Triton answer
  INTERNAL "Stub process ... is not healthy" for that model from then on;
  the adapter turns the first such answer into UNAVAILABLE and reports the
  model lost, so its next request reloads it.
* A type whose backend this Triton lacks is refused at registration
  (``supports``); an artifact in Triton's own layout (type ``triton``) names its
  backend in its config, so Triton itself refuses it at load.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from adapters.base import ModelsLostListener, RuntimeAdapter, RuntimeOptions, RuntimeProcessInfo
from adapters.runtime_process import RuntimeProcess
from adapters.triton import layout
from adapters.triton.install import TritonInstall, TritonMissing, find_triton
from adapters.triton.process import TritonProcess
from agent.errors import Code, RuntimeRequestFailed, RuntimeUnavailable
from agent.registry.spec import ModelSpec
from agent.resources.monitor import process_usage

log = logging.getLogger(__name__)

# Before a Python-backend model's first load: its stub process (measured here
# at about 40 MiB RSS) plus its files. Other formats: 1.25 x their files.
PYTHON_MODEL_BYTES = 48 * 2**20
MIN_MODEL_BYTES = 1 * 2**20
STUB_DEAD = "is not healthy"  # in Triton's INTERNAL error once a model's stub process died
DISK_SIZE_FACTOR = 1.25


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes (0 if it is gone)."""
    usage = process_usage([pid]).get(pid)
    return usage.rss_bytes if usage is not None else 0


class TritonAdapter(RuntimeAdapter):
    kind = "triton"
    gpu_capable = True

    def __init__(self, options: RuntimeOptions) -> None:
        super().__init__(options)
        self._repository = options.work_dir / "repository"
        self._install: TritonInstall | None = None
        self._backends: frozenset[str] | None = None
        self._process: TritonProcess | None = None
        self._listener: ModelsLostListener | None = None
        self._load_lock = asyncio.Lock()
        self._reason = "not started"
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._process is not None or self._stopped:
            return
        try:
            install = await asyncio.to_thread(
                find_triton, self.options.server_path, self.options.backend_dir,
                self.options.work_dir,
            )
        except TritonMissing as err:
            self._reason = err.message
            raise
        self._install = install
        self._backends = install.backends_available()
        await asyncio.to_thread(self._prepare_repository)
        process = TritonProcess("triton-0", self.options, install, self._repository,
                                self._models_lost)
        self._process = process
        log.info("triton: %s, backends: %s", install.server, ", ".join(sorted(self._backends)))
        try:
            await process.start()
        except OSError as err:
            self._reason = f"cannot start tritonserver: {err}"
            await process.stop()
            self._process = None
            raise RuntimeUnavailable(self._reason) from err

    def _prepare_repository(self) -> None:
        # A fresh server holds nothing: model folders from an earlier run are stale.
        shutil.rmtree(self._repository, ignore_errors=True)
        self._repository.mkdir(parents=True, exist_ok=True)

    async def stop(self) -> None:
        self._stopped = True
        self._reason = "stopped"
        if self._process is not None:
            await self._process.stop()

    @property
    def available(self) -> bool:
        return not self._stopped and self._process is not None and self._process.ready

    @property
    def unavailable_reason(self) -> str:
        if self.available:
            return ""
        if self._process is None or self._stopped:
            return self._reason
        return self._process.last_error

    def set_models_lost_listener(self, listener: ModelsLostListener) -> None:
        self._listener = listener

    def _models_lost(self, process: RuntimeProcess, model_ids: list[str]) -> None:
        log.warning("%s lost %d models", process.name, len(model_ids))
        if self._listener is not None:
            self._listener(self.kind, model_ids)

    def processes(self) -> list[RuntimeProcessInfo]:
        p = self._process
        if p is None or p.pid is None:
            return []
        return [RuntimeProcessInfo(self.kind, p.pid, p.grpc_address, len(p.models))]

    def kill(self) -> None:
        """SIGKILL the server with its guard and stubs, as the liveness watchdog
        does (tests and chaos drills); it is respawned."""
        if self._process is not None:
            self._process.kill()

    # --- models ------------------------------------------------------------

    def supports(self, model_type: str) -> bool:
        if self._backends is None:  # not started (or not installed): judge at load
            return model_type in layout.FORMATS
        return layout.supports(model_type, self._backends)

    def predict_size(self, spec: ModelSpec, artifact_bytes: int) -> int:
        if spec.size_hint > 0:
            return spec.size_hint
        if layout.required_backend(spec.model_type) == "python":
            return PYTHON_MODEL_BYTES + artifact_bytes
        return max(MIN_MODEL_BYTES, int(artifact_bytes * DISK_SIZE_FACTOR))

    def _running(self) -> TritonProcess:
        process = self._process
        if process is None or not process.ready:
            raise RuntimeUnavailable(f"triton is not running: {self.unavailable_reason}")
        return process

    async def load(
        self, spec: ModelSpec, artifact: Path | None, gpu: int | None = None,
        size_bytes: int = 0,
    ) -> int | None:
        process = self._running()
        folder = await asyncio.to_thread(layout.lay_out, self._repository, spec, artifact)
        if gpu is not None:
            await asyncio.to_thread(layout.place_on_gpu, folder, gpu)
        async with self._load_lock:
            pid = process.pid
            before = await asyncio.to_thread(tree_rss, pid) if pid else 0
            try:
                await process.load(spec.model_id)
            except BaseException:
                # Shielded: this also runs when the caller's own timeout cancels us.
                await asyncio.shield(self._discard(process, spec.model_id))
                raise
            after = await asyncio.to_thread(tree_rss, pid) if pid else 0
        if not before or not after:
            return None
        return max(after - before, MIN_MODEL_BYTES)

    async def _discard(self, process: TritonProcess, model_id: str) -> None:
        try:
            await process.unload(model_id)
        except Exception as err:
            log.warning("cleaning up failed load of %r: %s", model_id, err)
        await asyncio.to_thread(layout.remove, self._repository, model_id)

    async def unload(self, model_id: str) -> None:
        try:
            if self._process is not None:
                await self._process.unload(model_id)
        finally:
            await asyncio.to_thread(layout.remove, self._repository, model_id)

    async def infer(self, model_id: str, request: bytes) -> bytes:
        process = self._process
        if process is None:
            raise RuntimeUnavailable(f"triton is not running: {self.unavailable_reason}")
        try:
            return await process.infer(request)
        except RuntimeRequestFailed as err:
            if err.code != Code.INTERNAL or STUB_DEAD not in err.message:
                raise
        # A Python-backend stub died under a live server: Triton does not bring
        # it back, so the model is forgotten and reloaded on its next request
        # (a load of a loaded model makes Triton start a fresh instance).
        log.warning("triton: the stub process of %r died; it reloads on demand", model_id)
        process.models.discard(model_id)
        if self._listener is not None:
            self._listener(self.kind, [model_id])
        raise RuntimeUnavailable(
            f"model {model_id!r}: its Triton Python stub process died; it is reloaded on "
            "the next request"
        )

    async def metadata(self, model_id: str) -> bytes:
        return await self._running().metadata(model_id)
