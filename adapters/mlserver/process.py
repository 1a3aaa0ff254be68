"""One MLServer runtime process as the agent sees it.

An ``MLServerProcess`` owns one launcher child (through ``SupervisedProcess``),
a gRPC stub to its KServe v2 port for loads, unloads and metadata, and a
``ChannelClient`` to its data-plane socket for inference, plus the ids of the
models it holds. Each spawn gets fresh loopback ports; when the child dies the
held ids are handed to ``on_models_lost`` and the supervisor respawns it.

This module never imports MLServer (see framing.py for why): the agent's
side speaks to it through ``agent.proto`` and the channel only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

import adapters
from adapters.base import RuntimeOptions
from adapters.mlserver.channel import ChannelClient
from adapters.supervisor import SupervisedProcess, describe_returncode
from agent.errors import Code, LoadFailed, RuntimeRequestFailed, RuntimeUnavailable
from agent.proto import grpc_service_pb2 as pb
from agent.proto import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

LAUNCHER_MODULE = "adapters.mlserver.launcher"

# The readiness poll goes through this channel while the server comes up;
# gRPC's default reconnect backoff (1 s, growing) would delay seeing it ready.
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
]
_READY_CHECK_TIMEOUT_S = 1.0


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


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The launcher must import ``adapters`` even when meshlet runs from a
    # checkout rather than an installed package.
    root = str(Path(adapters.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # its output reaches our log as it happens
    return env


def _status(err: grpc.aio.AioRpcError) -> Code:
    return Code.from_number(err.code().value[0])


class MLServerProcess:
    """One launcher child: spawn, connect, load/unload through gRPC, infer
    through the channel. ``ready`` is True while it serves."""

    def __init__(
        self,
        name: str,
        options: RuntimeOptions,
        repository: Path,
        socket_path: str,
        on_models_lost: Callable[[MLServerProcess, list[str]], None],
    ) -> None:
        self.name = name
        self.models: set[str] = set()
        self.ready = False
        self.generation = 0  # bumped per spawn: a load that spans a restart is void
        self.last_error = "starting"
        self.channel: ChannelClient | None = None
        self.grpc_port = 0
        self._options = options
        self._repository = repository
        self._socket_path = socket_path
        self._on_models_lost = on_models_lost
        self._http_port = 0
        self._grpc_channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None
        self._ready_event = asyncio.Event()
        self._liveness: asyncio.Task[None] | None = None
        self._process = SupervisedProcess(
            name,
            self._argv,
            env=_child_env(),
            cwd=options.work_dir,
            on_spawned=self._connect,
            on_exit=self._lost,
            stop_grace_s=options.stop_grace_s,
            restart_backoff_s=options.restart_backoff_s,
            logger=log,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

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

    def _argv(self) -> list[str]:
        self.grpc_port, self._http_port = free_ports(2)
        return [
            sys.executable, "-m", LAUNCHER_MODULE,
            "--repo", str(self._repository),
            "--grpc-port", str(self.grpc_port),
            "--http-port", str(self._http_port),
            "--socket", self._socket_path,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip

    async def _connect(self) -> None:
        """After each spawn: wait for gRPC ServerReady, open the channel."""
        self.generation += 1
        grpc_channel = grpc.aio.insecure_channel(self.grpc_address, options=_GRPC_OPTIONS)
        stub = pb_grpc.GRPCInferenceServiceStub(grpc_channel)
        channel = ChannelClient(self._socket_path, self._options.channel_connections)

        async def server_ready() -> bool:
            response = await stub.ServerReady(
                pb.ServerReadyRequest(), timeout=_READY_CHECK_TIMEOUT_S
            )
            return bool(response.ready)

        try:
            await self._process.wait_ready(server_ready, self._options.start_timeout_s)
            await channel.connect()
        except BaseException as err:
            self.last_error = str(err) or type(err).__name__
            await channel.close()
            await grpc_channel.close()
            raise
        self._grpc_channel, self._stub, self.channel = grpc_channel, stub, channel
        self.ready = True
        self.last_error = ""
        self._ready_event.set()
        self._liveness = asyncio.create_task(
            self._watch_liveness(stub), name=f"{self.name}-liveness"
        )
        log.info("%s serving: gRPC %s, channel %s", self.name, self.grpc_address, self._socket_path)

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
                log.error(
                    "%s missed %d ServerLive pings (last: %s); killing it",
                    self.name, misses, err.code().name,
                )  # fmt: skip
                self._process.kill()
                return

    async def _lost(self, returncode: int | None) -> None:
        """The child died: stop routing to it, report what it held."""
        self.ready = False
        self._ready_event.clear()
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
        channel, grpc_channel = self.channel, self._grpc_channel
        self.channel, self._grpc_channel, self._stub = None, None, None
        if channel is not None:
            await channel.close()
        if grpc_channel is not None:
            await grpc_channel.close()

    def _require_stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        if not self.ready or self._stub is None:
            raise RuntimeUnavailable(f"{self.name} is not running: {self.last_error}")
        return self._stub

    async def load(self, model_id: str) -> None:
        """Ask MLServer to load ``model_id`` from the repository; return once
        it reports the model ready. Raises ``LoadFailed`` with MLServer's reason."""
        stub = self._require_stub()
        generation = self.generation
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
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise RuntimeUnavailable(f"{self.name}: {err.details()}") from None
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise LoadFailed(
                    f"model {model_id!r}: mlserver did not load it within {timeout:g} s"
                ) from None
            raise LoadFailed(
                f"model {model_id!r}: mlserver could not load it: {err.details()}"
            ) from None
        if generation != self.generation or not self.ready:
            raise RuntimeUnavailable(f"{self.name} restarted while loading {model_id!r}")
        if not response.ready:
            raise LoadFailed(f"model {model_id!r}: mlserver loaded it but reports it not ready")
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
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                return
            raise RuntimeRequestFailed(_status(err), err.details() or "") from None

    async def metadata(self, model_id: str) -> bytes:
        stub = self._require_stub()
        try:
            response = await stub.ModelMetadata(
                # No setting of its own: a metadata call is as slow as a load at worst.
                pb.ModelMetadataRequest(name=model_id),
                timeout=self._options.load_timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise RuntimeRequestFailed(_status(err), err.details() or "") from None
        return bytes(response.SerializeToString())
