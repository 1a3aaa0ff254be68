"""The runtime-adapter interface: what the agent needs from a runtime kind.

An adapter owns the runtime processes of one kind (MLServer, Triton): it starts
and supervises them on loopback, lays out models in a repository it owns, loads
and unloads through the runtime's repository API, and forwards serialized
``ModelInferRequest`` bytes. The agent never talks to a runtime any other way.

Contract:

* ``start`` returns once the runtime can take loads. If the runtime cannot be
  started at all (binary missing), ``available`` stays False and loads raise
  ``RuntimeUnavailable``; the agent keeps serving other runtimes.
* ``load(spec, artifact)`` returns only after the runtime reports the model
  ready, so a model is never routed to before it can answer. It returns the
  memory the load was measured to add, if the runtime can measure it. ``artifact`` is
  the local path of the model's files (unpacked from the node cache; a file or
  a directory), or None for a builtin model; it stays in place until
  ``unload`` returns. Failures raise ``LoadFailed`` with the runtime's reason.
* ``infer`` takes and returns serialized protobuf bytes (KServe v2
  ModelInferRequest / ModelInferResponse); the body's ``model_name`` already
  names the model id. Errors the runtime returns raise ``RuntimeRequestFailed``
  with its status; a dead connection raises ``RuntimeUnavailable``.
* When a runtime process dies, the adapter restarts it and calls the
  ``models_lost`` listener with the ids that process held, so the agent forgets
  them and reloads on demand.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from adapters.pool import PoolLimits
from agent.errors import Code, RuntimeRequestFailed
from agent.registry.spec import ModelSpec

ModelsLostListener = Callable[[str, Iterable[str]], None]
"""Called as ``listener(runtime_kind, model_ids)`` after a runtime process died."""


@dataclass(frozen=True)
class RuntimeOptions:
    """Settings every adapter takes. Times in seconds."""

    work_dir: Path  # the adapter's own directory (model repository, sockets)
    start_timeout_s: float = 60.0  # from spawn to accepting loads
    stop_grace_s: float = 5.0  # SIGTERM -> SIGKILL
    load_timeout_s: float = 60.0  # one load, end to end
    health_interval_s: float = 1.0  # how often each runtime is asked ServerLive
    liveness_timeout_s: float = 5.0  # one ServerLive answer may take this long
    liveness_misses: int = 3  # unanswered pings in a row before a runtime is killed
    restart_backoff_s: float = 0.5  # first delay before a restart; doubles, max 30 s
    channel_connections: int = 4  # request connections to each runtime process
    server_path: Path | None = None  # the runtime's server binary, if not found by itself
    backend_dir: Path | None = None  # Triton: its backends, if not found by itself
    pool: PoolLimits = field(default_factory=PoolLimits)  # processes, and how full each gets


@dataclass(frozen=True)
class RuntimeProcessInfo:
    """One running runtime process, for status pages and the benchmarks."""

    kind: str
    pid: int
    grpc_address: str  # the runtime's own KServe v2 gRPC endpoint (loopback)
    models: int


class RuntimeAdapter(abc.ABC):
    """One runtime kind. Implementations are registered in ``ADAPTERS``."""

    kind: ClassVar[str]

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every process (SIGTERM, grace, SIGKILL). Safe to call twice."""

    @property
    @abc.abstractmethod
    def available(self) -> bool:
        """True while the runtime can take loads and requests."""

    @property
    def unavailable_reason(self) -> str:
        return ""

    async def wait_available(self, timeout_s: float, interval_s: float = 0.05) -> bool:
        """Wait until ``available`` (a restarting runtime is back); False at the
        deadline. Polled: a runtime restarts seldom, and every adapter has
        ``available`` already."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.available:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(interval_s, max(deadline - loop.time(), 0)))
        return True

    @abc.abstractmethod
    def supports(self, model_type: str) -> bool:
        """Whether this runtime can serve models of ``model_type``."""

    @abc.abstractmethod
    def predict_size(self, spec: ModelSpec, artifact_bytes: int) -> int:
        """Bytes of memory the model is expected to take once loaded;
        ``artifact_bytes`` is the size of its files (0 for a builtin model)."""

    #: Whether this runtime can place a model on a chosen GPU (``load(gpu=...)``).
    gpu_capable: ClassVar[bool] = False

    @abc.abstractmethod
    async def load(
        self, spec: ModelSpec, artifact: Path | None, gpu: int | None = None,
        size_bytes: int = 0,
    ) -> int | None:
        """Load (on GPU ``gpu``, NVML's index, when given) and return the bytes
        the model was measured to take, or None when the runtime cannot tell
        (the predicted size stands). ``size_bytes`` is what the loader accounts
        for the model until then (last measured, else predicted; 0: unknown)."""

    @abc.abstractmethod
    async def unload(self, model_id: str) -> None: ...

    @abc.abstractmethod
    async def infer(self, model_id: str, request: bytes) -> bytes: ...

    async def metadata(self, model_id: str) -> bytes:
        """Serialized ``ModelMetadataResponse`` of a loaded model."""
        raise RuntimeRequestFailed(Code.UNIMPLEMENTED, f"runtime {self.kind} has no metadata")

    @abc.abstractmethod
    def set_models_lost_listener(self, listener: ModelsLostListener) -> None: ...

    @abc.abstractmethod
    def processes(self) -> list[RuntimeProcessInfo]: ...


# name -> "module:Class"; imported only when a node uses that runtime.
ADAPTERS: dict[str, str] = {
    "mlserver": "adapters.mlserver.adapter:MLServerAdapter",
    "triton": "adapters.triton.adapter:TritonAdapter",
}


# name -> "module:attribute": the model types each runtime kind serves (a
# collection of names), importable without starting the runtime or importing
# its server, so that a registration can be judged, and pointed at the runtime
# that serves its type, on a node that does not run that runtime.
MODEL_TYPES: dict[str, str] = {
    "mlserver": "adapters.mlserver.model_settings:IMPLEMENTATIONS",
    "triton": "adapters.triton.layout:FORMATS",
}

# name -> "module:function": ``function(model_type)`` is the Python package the
# runtime needs for that type and lacks here (None: nothing missing). Runtimes
# whose types need no extra package are not listed.
MISSING_PACKAGE: dict[str, str] = {
    "mlserver": "adapters.mlserver.model_settings:missing_package",
}


def _target(table: dict[str, str], kind: str) -> object:
    module_name, _, name = table[kind].partition(":")
    return getattr(importlib.import_module(module_name), name)


def served_types(kind: str) -> frozenset[str]:
    """The model types runtime ``kind`` serves where it has what they need
    (``RuntimeAdapter.supports`` of a started runtime may say less)."""
    if kind not in MODEL_TYPES:
        return frozenset()
    types = _target(MODEL_TYPES, kind)
    assert isinstance(types, Collection)
    return frozenset(types)


def runtimes_serving(model_type: str) -> list[str]:
    """The runtime kinds that serve ``model_type``, by name."""
    return sorted(kind for kind in MODEL_TYPES if model_type in served_types(kind))


def missing_package(kind: str, model_type: str) -> str | None:
    """The package runtime ``kind`` needs for ``model_type`` and that is not
    installed here (checked without importing it), or None."""
    if kind not in MISSING_PACKAGE:
        return None
    check = _target(MISSING_PACKAGE, kind)
    assert callable(check)
    missing = check(model_type)
    return str(missing) if missing else None


def adapter_class(kind: str) -> type[RuntimeAdapter]:
    try:
        target = ADAPTERS[kind]
    except KeyError:
        raise KeyError(f"no runtime adapter named {kind!r}") from None
    module_name, _, class_name = target.partition(":")
    cls: type[RuntimeAdapter] = getattr(importlib.import_module(module_name), class_name)
    return cls
