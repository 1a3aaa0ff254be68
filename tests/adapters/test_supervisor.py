"""SupervisedProcess with small Python children: output forwarding, readiness,
unexpected exits and respawns, the SIGTERM -> SIGKILL stop, and children that
lead a process group of their own (their grandchildren die with them)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

import pytest

from adapters.supervisor import ProcessExited, SupervisedProcess
from tests.adapters.helpers import pid_exists, wait_until

# Prints a line (after ignoring SIGTERM when asked), then waits to be killed.
CHILD = """
import signal, sys
if "ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("child up", flush=True)
print("to stderr", file=sys.stderr, flush=True)
signal.pause()  # until killed
"""


def child(*args: str) -> Callable[[], list[str]]:
    return lambda: [sys.executable, "-c", CHILD, *args]


# Forks a grandchild that ignores SIGTERM and prints its pid, then prints its
# own; "ignore-term": the child ignores SIGTERM too. Each line is one write(2)
# of under PIPE_BUF bytes, so the two processes' lines never interleave
# (print() may write the text and its newline apart).
PARENT = """
import os, signal, sys
if "ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = os.fork()
if grandchild == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(1, f"grandchild {os.getpid()}\\n".encode())
    while True:
        signal.pause()
os.write(1, f"child {os.getpid()}\\n".encode())
while True:
    signal.pause()
"""


def parent(*args: str) -> Callable[[], list[str]]:
    return lambda: [sys.executable, "-c", PARENT, *args]


class Lines(logging.Handler):
    """Collects what the supervisor logs."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
def logger(lines: Lines) -> logging.Logger:
    logger = logging.getLogger(f"tests.supervisor.{id(lines)}")
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    return logger


async def test_forwards_output_and_respawns_after_unexpected_exit(
    lines: Lines, logger: logging.Logger
) -> None:
    exits: list[int | None] = []
    spawned = asyncio.Queue[int]()

    async def on_spawned() -> None:
        await process.wait_ready(lambda: _seen(lines, "[worker-0] child up"), timeout_s=30)
        assert process.pid is not None
        spawned.put_nowait(process.pid)

    async def on_exit(returncode: int | None) -> None:
        exits.append(returncode)

    process = SupervisedProcess(
        "worker-0",
        child(),
        on_spawned=on_spawned,
        on_exit=on_exit,
        restart_backoff_s=0.01,
        logger=logger,
    )
    await process.start()
    try:
        first = await asyncio.wait_for(spawned.get(), 30)
        await wait_until(lambda: "[worker-0] to stderr" in lines.lines)
        lines.lines.clear()
        os.kill(first, signal.SIGKILL)
        second = await asyncio.wait_for(spawned.get(), 30)
        assert second != first
        assert exits == [-signal.SIGKILL]
        assert not pid_exists(first)
        assert process.spawns == 2
    finally:
        await process.stop()
    assert not pid_exists(second)
    assert exits == [-signal.SIGKILL]  # a requested stop is not reported as an exit


async def test_stop_escalates_to_sigkill_and_is_safe_twice(
    lines: Lines, logger: logging.Logger
) -> None:
    process = SupervisedProcess("stubborn", child("ignore-term"), stop_grace_s=0.2, logger=logger)
    await process.start()
    pid = process.pid
    assert pid is not None
    # Its SIGTERM handler is in place once it printed.
    await process.wait_ready(lambda: _seen(lines, "[stubborn] child up"), timeout_s=30)
    await asyncio.gather(process.stop(), process.stop())
    await process.stop()
    assert not pid_exists(pid)
    assert process.pid is None
    assert any("killing it" in line for line in lines.lines)
    assert any("stopped (killed by SIGKILL)" in line for line in lines.lines)


async def test_wait_ready_raises_when_the_child_exits(logger: logging.Logger) -> None:
    # A long backoff keeps the supervisor from respawning during the test;
    # stop() cuts it short.
    process = SupervisedProcess(
        "quitter",
        lambda: [sys.executable, "-c", "raise SystemExit(3)"],
        restart_backoff_s=600,
        logger=logger,
    )
    await process.start()
    try:
        with pytest.raises(ProcessExited) as raised:
            await process.wait_ready(_never, timeout_s=30)
        assert raised.value.returncode == 3
        assert "exit status 3" in str(raised.value)
    finally:
        await process.stop()


async def test_wait_ready_times_out(logger: logging.Logger) -> None:
    process = SupervisedProcess("slow", child(), logger=logger)
    await process.start()
    try:
        with pytest.raises(TimeoutError, match=r"slow was not ready after 0\.1 s"):
            await process.wait_ready(_never, timeout_s=0.1)
        assert process.running
    finally:
        await process.stop()


async def test_start_fails_when_the_command_is_missing() -> None:
    process = SupervisedProcess("ghost", lambda: ["/nonexistent/meshlet-runtime"])
    with pytest.raises(OSError):
        await process.start()
    await process.stop()
    assert process.pid is None


async def test_process_group_kill_takes_the_grandchildren(
    lines: Lines, logger: logging.Logger
) -> None:
    exits: list[int | None] = []

    async def on_exit(returncode: int | None) -> None:
        exits.append(returncode)

    process = SupervisedProcess("group", parent(), on_exit=on_exit, restart_backoff_s=600,
                                logger=logger, process_group=True)  # fmt: skip
    await process.start()
    try:
        child_pid, grandchild = await wait_until(lambda: _pids_now(lines, "group"))
        assert os.getpgid(grandchild) == child_pid  # the child leads its own group
        process.kill()  # as the liveness watchdog does
        await wait_until(lambda: exits)
        assert exits == [-signal.SIGKILL]
        await wait_until(lambda: not pid_exists(grandchild))
        assert not pid_exists(child_pid)
    finally:
        await process.stop()


async def test_process_group_leftovers_die_when_the_child_exits(
    lines: Lines, logger: logging.Logger
) -> None:
    process = SupervisedProcess("leader", parent(), restart_backoff_s=600, logger=logger,
                                process_group=True)  # fmt: skip
    await process.start()
    try:
        child_pid, grandchild = await wait_until(lambda: _pids_now(lines, "leader"))
        os.kill(child_pid, signal.SIGKILL)  # the grandchild alone would be orphaned
        await wait_until(lambda: not pid_exists(grandchild))
    finally:
        await process.stop()


async def test_process_group_stop_escalates_to_the_whole_group(
    lines: Lines, logger: logging.Logger
) -> None:
    process = SupervisedProcess("deaf", parent("ignore-term"), stop_grace_s=0.2, logger=logger,
                                process_group=True)  # fmt: skip
    await process.start()
    child_pid, grandchild = await wait_until(lambda: _pids_now(lines, "deaf"))
    await process.stop()
    assert any("stopped (killed by SIGKILL)" in line for line in lines.lines)
    await wait_until(lambda: not pid_exists(grandchild))
    assert not pid_exists(child_pid)


def _pids_now(lines: Lines, name: str) -> list[int]:
    """The pids logged as ``[name] child PID`` and ``[name] grandchild PID``,
    once both were."""
    found = {}
    for line in lines.lines:
        who, _, pid = line.removeprefix(f"[{name}] ").partition(" ")
        if who in ("child", "grandchild") and pid.isdigit():
            found[who] = int(pid)
    return [found["child"], found["grandchild"]] if len(found) == 2 else []


async def _seen(lines: Lines, text: str) -> bool:
    return text in lines.lines


async def _never() -> bool:
    return False
