"""The guard process (adapters/guard.py) around a small Python "server" that
forks a "stub" behaving like Triton's: it ignores SIGTERM and holds a file
only its server would remove."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import guard
from tests.adapters.helpers import pid_exists
from tests.conftest import wait_for

# argv: DIR MODE. Forks a stub (ignores SIGTERM, makes DIR/region-1), then
# writes server.pid once its SIGTERM handler (exit 0) is in place. MODE "exit7"
# or "abort": exits with status 7, or aborts (SIGABRT), once the stub is up.
SERVER = """
import os, signal, sys, time
out, mode = sys.argv[1], sys.argv[2]
stub = os.fork()
if stub == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(out, "region-1"), "w").close()
    open(os.path.join(out, "stub.pid.tmp"), "w").write(str(os.getpid()))
    os.rename(os.path.join(out, "stub.pid.tmp"), os.path.join(out, "stub.pid"))
    while True:
        signal.pause()
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while not os.path.exists(os.path.join(out, "stub.pid")):
    time.sleep(0.01)  # poll: the stub is setting up
if mode == "exit7":
    os._exit(7)
if mode == "abort":
    os.abort()
open(os.path.join(out, "server.pid.tmp"), "w").write(str(os.getpid()))
os.rename(os.path.join(out, "server.pid.tmp"), os.path.join(out, "server.pid"))
while True:
    signal.pause()
"""

# argv: DIR MODE GUARD-ARGV...: starts the guard (with MODE "thread", from a
# thread that exits once the stub is up, so after the guard armed its
# parent-death signal), writes guard.pid, and writes guard.rc when it ends.
AGENT = """
import os, subprocess, sys, threading, time
out, mode, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
argv[argv.index("PARENT")] = str(os.getpid())
started = []
def start():
    started.append(subprocess.Popen(argv, start_new_session=True))
    while not os.path.exists(os.path.join(out, "stub.pid")):
        time.sleep(0.01)  # poll: the guard is starting
if mode == "thread":
    t = threading.Thread(target=start)
    t.start()
    t.join()
else:
    start()
open(os.path.join(out, "guard.pid"), "w").write(str(started[0].pid))
rc = started[0].wait()
open(os.path.join(out, "guard.rc"), "w").write(str(rc))
"""


def read_pid(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text(), what=str(path)))


def guard_argv(out: Path, mode: str = "serve", parent: str | int | None = None) -> list[str]:
    return guard.command(
        sys.executable, ["-c", SERVER, str(out), mode],
        os.getpid() if parent is None else parent,  # type: ignore[arg-type]
        remove=[f"{out}/region-*"],
    )  # fmt: skip


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids a test started, SIGKILLed at teardown if still alive."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


def start_guard(out: Path, started: list[int], mode: str = "serve"
                ) -> tuple[subprocess.Popen[bytes], int, int]:
    proc = subprocess.Popen(guard_argv(out, mode), start_new_session=True,
                            stderr=subprocess.PIPE)
    started.append(proc.pid)
    stub = read_pid(out / "stub.pid")
    started.append(stub)
    server = read_pid(out / "server.pid") if mode == "serve" else 0  # others exit
    if server:
        started.append(server)
    return proc, server, stub


def test_a_killed_server_takes_its_stub_and_files_and_the_guard_says_so(
    out: Path, started: list[int]
) -> None:
    proc, server, stub = start_guard(out, started)
    assert (out / "region-1").exists()
    os.kill(server, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # reported as the server ended
    assert not pid_exists(stub)
    assert not (out / "region-1").exists()
    assert b"killed by SIGKILL; killed 1 process(es) it left" in err


def test_sigterm_reaches_the_server_and_the_stub_is_swept_after_it(
    out: Path, started: list[int]
) -> None:
    proc, server, stub = start_guard(out, started)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0  # the server's own SIGTERM handler
    assert not pid_exists(server) and not pid_exists(stub)
    assert not (out / "region-1").exists()


@pytest.mark.parametrize(("mode", "returncode"), [("exit7", 7), ("abort", -signal.SIGABRT)])
def test_the_guard_ends_as_its_server_did(
    out: Path, started: list[int], mode: str, returncode: int
) -> None:
    proc, _, stub = start_guard(out, started, mode=mode)
    proc.communicate(timeout=30)
    assert proc.returncode == returncode
    assert not pid_exists(stub)


@pytest.mark.parametrize("mode", ["main", "thread"])
def test_the_agents_death_ends_everything_but_a_threads_exit_does_not(
    out: Path, started: list[int], mode: str
) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(out), mode, *guard_argv(out, parent="PARENT")]
    )
    started.append(agent.pid)
    guard_pid = read_pid(out / "guard.pid")
    stub = read_pid(out / "stub.pid")
    server = read_pid(out / "server.pid")
    started.extend([guard_pid, stub, server])
    if mode == "thread":
        # The thread that forked the guard is gone, so its parent-death signal
        # came; the guard must take it for what it is and keep serving until a
        # real stop, which the server answers by exiting 0 (not SIGKILLed).
        os.kill(guard_pid, signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        assert (out / "guard.rc").read_text() == "0"
    else:
        agent.kill()
        agent.wait(timeout=30)
    wait_for(lambda: not any(map(pid_exists, (guard_pid, server, stub))),
             what="guard, server and stub gone")  # fmt: skip
    assert not (out / "region-1").exists()


def test_a_parent_already_gone_runs_nothing(out: Path, started: list[int]) -> None:
    proc = subprocess.Popen(guard_argv(out, parent=1))  # init is not our parent
    started.append(proc.pid)
    assert proc.wait(timeout=30) == guard.EXIT_PARENT_GONE
    assert not (out / "stub.pid").exists()
