"""One supervised runtime server that speaks KServe v2 gRPC on loopback.

What MLServer and Triton processes share, as the agent sees them: a child
spawned and respawned by ``SupervisedProcess`` (fresh loopback ports per
spawn), a readiness wait on ``ServerReady``, a liveness watcher that kills a
hung server, loads and unloads through the repository extension (a model is
held only once ``ModelReady`` says so), metadata, and the ids of the models it
holds, handed to ``on_models_lost`` when the child dies.

A subclass says how to start its server (``_argv``), names itself in messages
(``label``), and may attach more after each spawn (MLServer's data-plane
channel) by overriding ``_attach`` / ``_detach``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import grpc

from adapters.base import RuntimeOptions
from adapters.supervisor import SupervisedProcess, describe_returncode
from agent.errors import (
    Code,
    LoadFailed,
    RuntimeRequestFailed,
    RuntimeRestarted,
    RuntimeUnavailable,
)
from agent.proto import grpc_service_pb2 as pb
from agent.proto import grpc_service_pb2_grpc as pb_grpc

# The readiness poll goes through this channel while the server comes up;
# gRPC's default reconnect backoff (1 s, growing) would delay seeing it ready.
GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    # A loopback peer we supervise: no client-side retries (a dead runtime is
    # restarted and its requests fail over), no retry bookkeeping per call.
    ("grpc.enable_retries", 0),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
_READY_CHECK_TIMEOUT_S = 1.0
# A load whose connection broke waits this long for the supervisor to see the
# process exit, to tell a dead runtime (the load may be tried again on its
# successor) from a refusal.
_EXIT_NOTICE_S = 5.0


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now (bound to port 0, then released).

    Another process may take one before the child binds it; the child then
    exits and is respawned with new ports.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def grpc_code(err: grpc.aio.AioRpcError) -> Code:
    return Code.from_number(err.code().value[0])


def cancelled_by_caller() -> bool:
    """Whether a ``CancelledError`` just caught is our own task's cancellation.

    Closing a grpc.aio channel (its server died) cancels the calls on it, and
    the awaiting coroutine sees ``CancelledError`` although nobody cancelled
    it. Only a real cancellation may propagate: any other becomes an error
    the caller answers with, or a gRPC client waits forever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class RuntimeProcess(abc.ABC):
    """One runtime server child. ``ready`` is True while it serves."""

    label: ClassVar[str]  # the runtime's name in messages: "mlserver", "triton"
    # Whether the child leads a process group our SIGKILLs take whole (see
    # SupervisedProcess): for a server whose own children may outlive it.
    process_group: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        options: RuntimeOptions,
        on_models_lost: Callable[[RuntimeProcess, list[str]], None],
        *,
        env: Mapping[str, str],
        cwd: Path,
        logger: logging.Logger,
    ) -> None:
        self.name = name
        self.models: set[str] = set()
        self.ready = False
        self.generation = 0  # bumped per spawn: a load that spans a restart is void
        self.last_error = "starting"
        self.grpc_port = 0
        self._options = options
        self._on_models_lost = on_models_lost
        self._log = logger
        self._grpc_channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None
        self._ready_event = asyncio.Event()
        self._exited = asyncio.Event()  # the current child died (renewed per spawn)
        self._liveness: asyncio.Task[None] | None = None
        self._process = SupervisedProcess(
            name,
            self._argv,
            env=env,
            cwd=cwd,
            on_spawned=self._connect,
            on_exit=self._lost,
            stop_grace_s=options.stop_grace_s,
            restart_backoff_s=options.restart_backoff_s,
            logger=logger,
            process_group=self.process_group,
        )

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """The command for the next spawn; picks fresh ports (``grpc_port``)."""

    async def _attach(self) -> None:  # noqa: B027 (a hook; most runtimes need none)
        """After the server is ready, before it is routed to (each spawn)."""

    async def _detach(self) -> None:  # noqa: B027
        """Undo ``_attach``; called when the child died or on stop."""

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def grpc_channel(self) -> grpc.aio.Channel | None:
        return self._grpc_channel

    async def wait_until_ready(self, timeout_s: float) -> bool:
        """Wait until it serves (after a start or a restart); False on timeout."""
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return self.ready

    def kill(self) -> None:
        """SIGKILL the current child (it is respawned)."""
        self._process.kill()

    async def start(self) -> None:
        """Spawn and wait until it serves (``start_timeout_s``).

        Raises ``OSError`` if it cannot be spawned at all, ``RuntimeUnavailable``
        if it is not ready in time (it keeps being respawned meanwhile)."""
        await self._process.start()
        try:
            await asyncio.wait_for(self._ready_event.wait(), self._options.start_timeout_s)
        except TimeoutError:
            raise RuntimeUnavailable(
                f"{self.name} was not ready after {self._options.start_timeout_s:g} s: "
                f"{self.last_error}"
            ) from None
        if not self.ready:  # woken by stop()
            raise RuntimeUnavailable(f"{self.name} was stopped while starting")

    async def stop(self) -> None:
        self.ready = False
        self.last_error = "stopped"
        await self._process.stop()
        await self._disconnect()
        self._ready_event.set()  # wakes a start() still waiting

    async def _connect(self) -> None:
        """After each spawn: wait for gRPC ServerReady, then attach."""
        self.generation += 1
        self._exited = asyncio.Event()
        grpc_channel = grpc.aio.insecure_channel(self.grpc_address, options=GRPC_OPTIONS)
        stub = pb_grpc.GRPCInferenceServiceStub(grpc_channel)

        async def server_ready() -> bool:
            response = await stub.ServerReady(
                pb.ServerReadyRequest(), timeout=_READY_CHECK_TIMEOUT_S
            )
            return bool(response.ready)

        self._grpc_channel, self._stub = grpc_channel, stub
        try:
            await self._process.wait_ready(server_ready, self._options.start_timeout_s)
            await self._attach()
        except BaseException as err:
            self.last_error = str(err) or type(err).__name__
            await self._detach()
            self._grpc_channel, self._stub = None, None
            await grpc_channel.close()
            raise
        self.ready = True
        self.last_error = ""
        self._ready_event.set()
        self._liveness = asyncio.create_task(
            self._watch_liveness(stub), name=f"{self.name}-liveness"
        )
        self._log.info("%s serving: gRPC %s", self.name, self.grpc_address)

    async def _watch_liveness(self, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        """Ping ServerLive every ``health_interval_s``; kill a runtime that misses
        ``liveness_misses`` in a row (hung, not dead: its exit would be seen at
        once). The supervisor then respawns it and its models reload on demand."""
        opts = self._options
        misses = 0
        while True:
            await asyncio.sleep(opts.health_interval_s)  # poll: the ping period
            try:
                await stub.ServerLive(pb.ServerLiveRequest(), timeout=opts.liveness_timeout_s)
                misses = 0
            except grpc.aio.AioRpcError as err:
                misses += 1
                if misses < opts.liveness_misses:
                    continue
                self._log.error(
                    "%s missed %d ServerLive pings (last: %s); killing it",
                    self.name, misses, err.code().name,
                )  # fmt: skip
                self._process.kill()
                return

    async def _lost(self, returncode: int | None) -> None:
        """The child died: stop routing to it, report what it held."""
        self.ready = False
        self._ready_event.clear()
        self._exited.set()
        self.last_error = f"{self.name} exited ({describe_returncode(returncode)}); restarting"
        lost = sorted(self.models)
        self.models.clear()
        await self._disconnect()
        if lost:
            self._on_models_lost(self, lost)

    async def _disconnect(self) -> None:
        liveness, self._liveness = self._liveness, None
        if liveness is not None and liveness is not asyncio.current_task():
            liveness.cancel()
            await asyncio.gather(liveness, return_exceptions=True)
        await self._detach()
        grpc_channel = self._grpc_channel
        self._grpc_channel, self._stub = None, None
        if grpc_channel is not None:
            await grpc_channel.close()

    def _require_stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        if not self.ready or self._stub is None:
            raise RuntimeUnavailable(f"{self.name} is not running: {self.last_error}")
        return self._stub

    async def load(self, model_id: str) -> None:
        """Ask the runtime to load ``model_id`` from its repository; return once
        it reports the model ready. Raises ``LoadFailed`` with the runtime's reason."""
        stub = self._require_stub()
        generation, exited = self.generation, self._exited
        timeout = self._options.load_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=model_id), timeout=timeout
            )
            response = await stub.ModelReady(
                pb.ModelReadyRequest(name=model_id), timeout=max(deadline - loop.time(), 0.001)
            )
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            raise RuntimeRestarted(f"{self.name} went away while loading {model_id!r}") from None
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                # The connection broke: the process is most likely dying, and the
                # supervisor sees its exit a moment after gRPC sees the socket close.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(exited.wait(), _EXIT_NOTICE_S)
            if exited.is_set():
                raise RuntimeRestarted(
                    f"{self.name} went away while loading {model_id!r}: {err.details()}"
                ) from None
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise RuntimeUnavailable(f"{self.name}: {err.details()}") from None
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise LoadFailed(
                    f"model {model_id!r}: {self.label} did not load it within {timeout:g} s"
                ) from None
            raise LoadFailed(
                f"model {model_id!r}: {self.label} could not load it: {err.details()}"
            ) from None
        if generation != self.generation or not self.ready:
            raise RuntimeRestarted(f"{self.name} restarted while loading {model_id!r}")
        if not response.ready:
            raise LoadFailed(
                f"model {model_id!r}: {self.label} loaded it but reports it not ready"
            )
        self.models.add(model_id)

    async def unload(self, model_id: str) -> None:
        """Unload ``model_id``; one this process does not hold is not an error."""
        self.models.discard(model_id)
        if not self.ready or self._stub is None:
            return  # a process that is not running holds nothing
        try:
            await self._stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name=model_id),
                timeout=self._options.load_timeout_s,
            )
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            return  # it died meanwhile: it holds nothing now
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                return
            raise RuntimeRequestFailed(grpc_code(err), err.details() or "") from None

    async def metadata(self, model_id: str) -> bytes:
        stub = self._require_stub()
        try:
            response = await stub.ModelMetadata(
                # No setting of its own: a metadata call is as slow as a load at worst.
                pb.ModelMetadataRequest(name=model_id),
                timeout=self._options.load_timeout_s,
            )
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            raise RuntimeRestarted(f"{self.name} went away during a metadata call") from None
        except grpc.aio.AioRpcError as err:
            raise RuntimeRequestFailed(grpc_code(err), err.details() or "") from None
        return bytes(response.SerializeToString())
