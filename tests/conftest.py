"""Fixtures that build up to real agents: ``meshlet serve`` child processes on
port 0, running real MLServer runtimes, reached with real ``tritonclient``.

Timeouts: every product timeout keeps its shipped value here (a test that
passes only with a tighter one fails on a busy machine); only intervals are
shrunk. Waits poll a condition, so a generous deadline costs nothing when the
condition holds; ``MESHLET_TEST_TIME_SCALE`` (default 1) stretches every
deadline of ``wait_for`` for a slow or overloaded machine.

Leaks: every process the suite starts inherits ``MESHLET_TEST_SESSION`` (set
below), so at the end of the session any survivor is found by that mark,
reparented orphans included (Triton's Python stubs), and fails the run; so does
a Triton shared-memory file in /dev/shm that appeared during the session. The
survivors are killed and the files removed, so one leak does not spread.

The test process must never import ``mlserver``: its generated protos clash
with tritonclient's in protobuf's default pool. Tests that need MLServer's
classes in-process live under ``tests/adapters/mlserver/inproc/`` and run in a
child pytest (see ``tests/adapters/mlserver/test_inproc.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from agent.process import AgentProcess

# Shrunk intervals (never timeouts) so tests never wait out production values.
FAST_ENV = {
    "MESHLET_RUNTIME_RESTART_BACKOFF_S": "0.1",
    "MESHLET_RUNTIME_HEALTH_INTERVAL_S": "0.2",
    "MESHLET_SHUTDOWN_GRACE_S": "5",
    "MESHLET_VMODEL_RETRY_INTERVAL_S": "0.2",
    "MESHLET_RUNTIME_STOP_GRACE_S": "3",
    # A developer's own KUBECONFIG must not switch Kubernetes on in test agents.
    "MESHLET_KUBE": "off",
}
TIME_SCALE = max(1.0, float(os.environ.get("MESHLET_TEST_TIME_SCALE", "1")))
SESSION_MARK = "MESHLET_TEST_SESSION"
# Shared-memory files Triton's Python backend makes (the default prefix, and ours).
SHM_DIR = "/dev/shm"
SHM_PREFIXES = ("triton_python_backend", "meshlet")
LEAK_GRACE_S = 30.0  # how long survivors get to exit by themselves at the end


def wait_for(condition: Callable[[], object], timeout_s: float = 60.0, what: str = "") -> object:
    """Poll ``condition`` until it returns something truthy, or fail after
    ``timeout_s`` (times ``MESHLET_TEST_TIME_SCALE``)."""
    timeout_s *= TIME_SCALE
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.05)  # poll


def descendant_pids(agent_pid: int, match: Callable[[list[str]], bool]) -> list[int]:
    """Pids of the processes under an agent whose command line ``match`` accepts."""
    try:
        children = psutil.Process(agent_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            if match(child.cmdline()):
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def runtime_pids(agent_pid: int) -> list[int]:
    """Pids of the MLServer launcher processes under an agent."""
    return descendant_pids(agent_pid, lambda cmd: "adapters.mlserver.launcher" in " ".join(cmd))


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def marked_processes(mark: str) -> list[psutil.Process]:
    """Processes other than this one whose environment carries ``mark``."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if (proc.environ().get(SESSION_MARK) == mark
                    and proc.status() != psutil.STATUS_ZOMBIE
                    and not _helper_of_this_process(proc)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _helper_of_this_process(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker (or fork server), started for the test
    process itself by a test that used multiprocessing: it lives as long as
    this process does, and is no leak."""
    return proc.ppid() == os.getpid() and any(
        "multiprocessing." in arg for arg in proc.cmdline()
    )


def shm_files() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIXES)}
    except FileNotFoundError:
        return set()


@pytest.fixture(scope="session", autouse=True)
def _nothing_outlives_the_suite() -> Iterator[None]:
    """Fail the run if a process the suite started, or a Triton shared-memory
    file it caused, is still there once every test and fixture is done."""
    if SESSION_MARK in os.environ:  # a pytest run by a test: its parent checks
        yield
        return
    mark = os.environ[SESSION_MARK] = uuid.uuid4().hex
    shm_before = shm_files()
    yield
    deadline = time.monotonic() + LEAK_GRACE_S * TIME_SCALE
    while (survivors := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)  # poll: a stopped agent's children may still be exiting
    described = []
    for proc in survivors:
        try:
            described.append(f"pid {proc.pid} {' '.join(proc.cmdline())[:200]}")
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    deadline = time.monotonic() + LEAK_GRACE_S * TIME_SCALE
    while (left := shm_files() - shm_before) and survivors and time.monotonic() < deadline:
        time.sleep(0.2)  # poll: the files' owners were just killed
    for name in left:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
    problems = [f"process left running: {d}" for d in described]
    problems += [f"shared-memory file left: {SHM_DIR}/{name}" for name in sorted(left)]
    assert not problems, "the suite leaked:\n" + "\n".join(problems)


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents in this test's tmp dir; every one is stopped at teardown."""
    started: list[AgentProcess] = []

    def start(
        *args: str, data_dir: Path | None = None, wait: bool = True, **env: str
    ) -> AgentProcess:
        agent = AgentProcess(
            data_dir or tmp_path / f"agent-{len(started)}", args, {**FAST_ENV, **env}
        )
        started.append(agent)
        return agent.start(wait=wait)

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent per test module, with 30 demo models, a 64 MiB budget and a
    1 MiB request limit, for tests that do not need an agent of their own."""
    env = {
        **FAST_ENV,
        "MESHLET_MEMORY_BUDGET_BYTES": str(64 * 2**20),
        "MESHLET_MAX_REQUEST_BYTES": str(2**20),
    }
    agent = AgentProcess(tmp_path_factory.mktemp("shared-agent"), ["--demo", "30"], env)
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture(autouse=True)
def _no_mlserver_in_this_process() -> Iterator[None]:
    yield
    assert "mlserver" not in sys.modules or os.environ.get("MESHLET_INPROC_MLSERVER"), (
        "a test imported mlserver into the main test process; move it to tests/inproc_mlserver"
    )
