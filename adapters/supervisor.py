"""Runs one runtime process and keeps it running: spawn, watch, restart, stop.

Shared by every runtime adapter (MLServer now, Triton next). Like uvicorn's
multiprocess supervisor: the child's output goes to our logger line by line,
an unexpected exit is reported and followed by a respawn after a backoff that
doubles up to a cap, and ``stop`` sends SIGTERM, waits a grace period, then
SIGKILL. Children are expected to arrange their own death with their parent
(the MLServer launcher uses ``PR_SET_PDEATHSIG``; Triton runs under
``adapters/guard.py``).

By default every signal goes to the child's own pid. With ``process_group``
the child leads a session of its own (``setsid``), and its SIGKILLs (``kill``,
the escalation of ``stop``) go to its whole process group, so grandchildren the
child cannot stop any more die with it; SIGTERM still goes to the child alone,
which may stop its own children in order. Once such a child has exited, what
is left in its group is SIGKILLed too. The child's exit is reported as is
(a group SIGKILL reads "killed by SIGKILL").

The owner plugs in two hooks:

* ``on_spawned()``: awaited after every spawn (the first one included). It
  should wait until the child serves (``wait_ready``) and connect to it. If it
  raises, the child is killed and respawned after the backoff; it never
  counted as up, so ``on_exit`` is not called for it.
* ``on_exit(returncode)``: awaited when a child that was up exits without
  ``stop()`` having been called, before the respawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

log = logging.getLogger(__name__)

MAX_RESTART_BACKOFF_S = 30.0
# Output lines longer than this are forwarded in pieces.
MAX_LINE_BYTES = 64 * 1024
# After a child exits, how long its pipes may stay open (a grandchild holding
# them) before we stop reading its output.
PIPE_DRAIN_S = 1.0

ReadyCheck = Callable[[], Awaitable[bool]]


class ProcessExited(Exception):
    """The child exited while we were waiting for it."""

    def __init__(self, name: str, returncode: int | None) -> None:
        super().__init__(f"{name} exited ({describe_returncode(returncode)})")
        self.returncode = returncode


def describe_returncode(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Forwards the child's output lines to the logger; notes when it exits."""

    def __init__(self, name: str, logger: logging.Logger, process_group: bool) -> None:
        self._name = name
        self._logger = logger
        self._process_group = process_group
        self._partial: dict[int, bytes] = {}
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()  # exited and pipes closed
        self._transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = self._partial.pop(fd, b"") + (data if isinstance(data, bytes) else data.encode())
        *lines, rest = chunk.split(b"\n")
        for line in lines:
            self._emit(line)
        while len(rest) > MAX_LINE_BYTES:
            self._emit(rest[:MAX_LINE_BYTES])
            rest = rest[MAX_LINE_BYTES:]
        if rest:
            self._partial[fd] = rest

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        rest = self._partial.pop(fd, b"")
        if rest:
            self._emit(rest)

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            self._logger.info("[%s] %s", self._name, text)

    def process_exited(self) -> None:
        assert self._transport is not None
        if self._process_group:
            # The group outlives its leader while members remain, so its id
            # cannot name anyone else yet; once empty, pids are handed out in
            # sequence, so it is not reused within this instant.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._transport.get_pid(), signal.SIGKILL)
        if not self.exited.done():
            self.exited.set_result(self._transport.get_returncode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


class SupervisedProcess:
    """One child process, respawned when it dies until ``stop()``.

    ``argv`` is called before every spawn, so a respawn can take fresh
    arguments (new ports after a port was taken). Times are in seconds.
    ``process_group``: see the module docstring; it may be set until ``start``.
    """

    def __init__(
        self,
        name: str,
        argv: Callable[[], Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        on_spawned: Callable[[], Awaitable[None]] | None = None,
        on_exit: Callable[[int | None], Awaitable[None]] | None = None,
        stop_grace_s: float = 5.0,
        restart_backoff_s: float = 0.5,
        max_restart_backoff_s: float = MAX_RESTART_BACKOFF_S,
        logger: logging.Logger | None = None,
        process_group: bool = False,
    ) -> None:
        self.name = name
        self.process_group = process_group
        self._argv = argv
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._on_spawned = on_spawned
        self._on_exit = on_exit
        self._stop_grace_s = stop_grace_s
        self._restart_backoff_s = restart_backoff_s
        self._max_restart_backoff_s = max(max_restart_backoff_s, restart_backoff_s)
        self._logger = logger or log
        self._transport: asyncio.SubprocessTransport | None = None
        self._protocol: _ChildProtocol | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self.spawns = 0

    @property
    def pid(self) -> int | None:
        """The current child's pid; None before the first spawn or once it exited."""
        if self._transport is None or self._protocol is None or self._protocol.exited.done():
            return None
        return self._transport.get_pid()

    @property
    def running(self) -> bool:
        return self.pid is not None

    async def start(self) -> None:
        """Spawn the child and begin supervising it. Raises ``OSError`` if the
        first spawn fails (the command is missing, say); nothing is retried then."""
        if self._supervisor is not None or self._stopping.is_set():
            raise RuntimeError(f"{self.name} was already started")
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"supervise {self.name}"
        )

    async def wait_ready(
        self, check: ReadyCheck, timeout_s: float, interval_s: float = 0.05
    ) -> None:
        """Poll ``check`` until it returns True.

        Raises ``ProcessExited`` as soon as the child exits and ``TimeoutError``
        at the deadline; an exception from ``check`` counts as "not yet".
        """
        protocol = self._protocol
        if protocol is None:
            raise ProcessExited(self.name, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_error: BaseException | None = None
        while True:
            if protocol.exited.done():
                raise ProcessExited(self.name, protocol.exited.result())
            remaining = deadline - loop.time()
            if remaining <= 0:
                detail = f" (last check: {last_error})" if last_error else ""
                raise TimeoutError(f"{self.name} was not ready after {timeout_s:g} s{detail}")
            try:
                if await asyncio.wait_for(check(), remaining):
                    return
            except Exception as err:
                last_error = err
            remaining = deadline - loop.time()
            if remaining > 0:
                # poll: wakes early if the child exits meanwhile.
                await asyncio.wait({protocol.exited}, timeout=min(interval_s, remaining))

    async def stop(self) -> None:
        """SIGTERM, ``stop_grace_s``, SIGKILL; no respawn afterwards. Safe twice."""
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()

    async def _spawn(self) -> None:
        argv = list(self._argv())
        loop = asyncio.get_running_loop()
        process_group = self.process_group
        transport, protocol = await loop.subprocess_exec(
            lambda: _ChildProtocol(self.name, self._logger, process_group),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            cwd=self._cwd,
            start_new_session=process_group,
        )
        self._transport = transport
        self._protocol = protocol
        self.spawns += 1
        self._logger.info("[%s] started, pid %d", self.name, transport.get_pid())

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._restart_backoff_s
        spawned = True  # start() did the first spawn
        while not self._stopping.is_set():
            if not spawned:
                try:
                    await self._spawn()
                except OSError as err:
                    self._logger.error("[%s] could not be started: %s", self.name, err)
                    delay = await self._backoff(delay)
                    continue
            spawned = False
            protocol = self._protocol
            assert protocol is not None
            up_since: float | None = None
            try:
                if self._on_spawned is not None:
                    await self._on_spawned()
                up_since = loop.time()
            except Exception as err:
                self._logger.warning("[%s] did not come up: %s", self.name, err)
                await self._kill_and_reap()
            returncode = await asyncio.shield(protocol.exited)
            if self._stopping.is_set():
                return
            if up_since is not None:
                self._logger.warning(
                    "[%s] exited unexpectedly (%s)", self.name, describe_returncode(returncode)
                )
                if loop.time() - up_since >= self._max_restart_backoff_s:
                    delay = self._restart_backoff_s  # it had been healthy for a while
                # Before reading its last output: the owner should stop routing
                # to a dead child as soon as possible.
                if self._on_exit is not None:
                    try:
                        await self._on_exit(returncode)
                    except Exception:
                        self._logger.exception("[%s] exit handler failed", self.name)
            await self._reap()
            delay = await self._backoff(delay)

    async def _backoff(self, delay: float) -> float:
        """Wait ``delay`` (cut short by ``stop()``); return the next delay."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return min(delay * 2, self._max_restart_backoff_s)

    def kill(self) -> None:
        """SIGKILL the current child (a hung one), with its process group when
        it has one; the supervisor respawns it."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        pid = self.pid  # None once it exited: never signal a pid that may be reused
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.process_group and sig == signal.SIGKILL:
                os.killpg(pid, sig)  # it leads its session: its pgid is its pid
            else:
                os.kill(pid, sig)

    async def _kill_and_reap(self) -> None:
        self._signal(signal.SIGKILL)
        await self._reap()

    async def _terminate(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        if not protocol.exited.done():
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(protocol.exited), self._stop_grace_s)
            except TimeoutError:
                self._logger.warning(
                    "[%s] still running %g s after SIGTERM; killing it",
                    self.name,
                    self._stop_grace_s,
                )
                self._signal(signal.SIGKILL)
        await self._reap()
        self._logger.info(
            "[%s] stopped (%s)", self.name, describe_returncode(protocol.exited.result())
        )

    async def _reap(self) -> None:
        """Wait for the current child's exit, read what is left of its output,
        and release its pipes."""
        protocol, transport = self._protocol, self._transport
        if protocol is None or transport is None:
            return
        await asyncio.shield(protocol.exited)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(protocol.finished), PIPE_DRAIN_S)
        transport.close()
