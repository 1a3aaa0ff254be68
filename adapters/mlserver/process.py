"""One MLServer runtime process as the agent sees it.

``MLServerProcess`` is a ``RuntimeProcess`` (see adapters/runtime_process.py:
supervision, readiness, liveness, loads through gRPC) whose child is the
launcher (adapters/mlserver/launcher.py), plus a ``ChannelClient`` to its
data-plane socket for inference.

This module never imports MLServer (see framing.py for why): the agent's
side speaks to it through ``agent.proto`` and the channel only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import adapters
from adapters.base import RuntimeOptions
from adapters.mlserver.channel import ChannelClient
from adapters.runtime_process import RuntimeProcess, free_ports
from agent.errors import MeshletError

log = logging.getLogger(__name__)

LAUNCHER_MODULE = "adapters.mlserver.launcher"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The launcher must import ``adapters`` even when meshlet runs from a
    # checkout rather than an installed package.
    root = str(Path(adapters.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # its output reaches our log as it happens
    return env


class MLServerProcess(RuntimeProcess):
    """One launcher child: loads through gRPC, inference through the channel."""

    label = "mlserver"

    def __init__(
        self,
        name: str,
        options: RuntimeOptions,
        repository: Path,
        socket_path: str,
        on_models_lost: Callable[[RuntimeProcess, list[str]], None],
    ) -> None:
        self.channel: ChannelClient | None = None
        # Runtime classes whose module this spawn has imported (see ``prepare``).
        self._prepared: dict[str, asyncio.Task[None]] = {}
        self._repository = repository
        self._socket_path = socket_path
        self._http_port = 0
        super().__init__(
            name, options, on_models_lost, env=_child_env(), cwd=options.work_dir, logger=log
        )

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

    async def _attach(self) -> None:
        channel = ChannelClient(self._socket_path, self._options.channel_connections)
        try:
            await channel.connect()
        except BaseException:
            await channel.close()
            raise
        self.channel = channel
        self._prepared = {}

    def prepared(self, implementation: str) -> bool:
        task = self._prepared.get(implementation)
        return task is not None and task.done()

    async def prepare(self, implementation: str) -> None:
        """Import ``implementation``'s module in this process once per spawn
        (concurrent callers share the import). A failure is logged, not
        raised: the load that follows reports the real reason."""
        task = self._prepared.get(implementation)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._import(implementation))
            self._prepared[implementation] = task
        await asyncio.shield(task)

    async def _import(self, implementation: str) -> None:
        channel = self.channel
        if channel is None:
            return
        try:
            await channel.prepare(implementation)
        except MeshletError as err:
            log.warning("%s could not import %s ahead of its first load: %s",
                        self.name, implementation, err.message)

    async def _detach(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()
