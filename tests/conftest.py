"""Fixtures that build up to real agents: ``meshlet serve`` child processes on
port 0, running real MLServer runtimes, reached with real ``tritonclient``.

The test process must never import ``mlserver``: its generated protos clash
with tritonclient's in protobuf's default pool. Tests that need MLServer's
classes in-process live under ``tests/adapters/mlserver/inproc/`` and run in a
child pytest (see ``tests/adapters/mlserver/test_inproc.py``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from agent.process import AgentProcess

# Shrunk intervals so tests never wait out production values.
FAST_ENV = {
    "MESHLET_RUNTIME_RESTART_BACKOFF_S": "0.1",
    "MESHLET_RUNTIME_HEALTH_INTERVAL_S": "0.2",
    "MESHLET_RUNTIME_LIVENESS_TIMEOUT_S": "0.5",
    "MESHLET_SHUTDOWN_GRACE_S": "5",
    "MESHLET_LOAD_TIMEOUT_S": "30",
    "MESHLET_VMODEL_RETRY_INTERVAL_S": "0.2",
    "MESHLET_RUNTIME_STOP_GRACE_S": "3",
}


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0, what: str = "") -> object:
    """Poll ``condition`` until it returns something truthy, or fail."""
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
