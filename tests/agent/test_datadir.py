"""One agent per data dir, and a busy port as one line: the lock and port
check on their own, then a second `meshlet serve` beside a running agent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from agent.datadir import DataDirLock, StartupError, check_ports
from agent.process import AgentProcess
from tests.clients import check_sums, infer
from tests.conftest import FAST_ENV

StartAgent = Callable[..., AgentProcess]


def test_second_lock_on_a_dir_names_the_dir_and_the_owner(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(StartupError) as raised:
        DataDirLock(tmp_path).acquire()
    assert str(raised.value) == (
        f"data dir {tmp_path} is in use by another meshlet agent (pid {os.getpid()}); "
        "stop that agent or give this one its own --data-dir"
    )
    first.release()
    again = DataDirLock(tmp_path)
    again.acquire()  # free once released
    again.release()
    first.release()  # twice is harmless


def test_a_listening_port_is_refused_and_port_zero_is_not_checked() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(StartupError) as raised:
            check_ports([("metrics", "127.0.0.1", 0), ("gRPC", "127.0.0.1", port)])
    assert str(raised.value).startswith(f"cannot listen on gRPC port 127.0.0.1:{port}: ")
    check_ports([("gRPC", "127.0.0.1", port)])  # free again


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``meshlet serve`` as a user runs it; it must exit by itself, quickly."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", "serve", "--data-dir", str(data_dir),
         "--grpc-host", "127.0.0.1", "--metrics-host", "127.0.0.1", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **FAST_ENV},
    )


def test_second_agent_on_a_data_dir_or_a_port_exits_touching_nothing(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    first = start_agent("--demo", "2")
    with triton.InferenceServerClient(first.address) as client:
        check_sums(infer(client, "simple-string-0"))  # its settings are in the repository now
    runtime_files = files_under(first.data_dir / "runtimes")
    assert "mlserver/repository/simple-string-0/model-settings.json" in runtime_files

    same_dir = serve(first.data_dir, "--grpc-port", "0", "--metrics-port", "0")
    assert same_dir.returncode == 1
    assert same_dir.stderr.strip().splitlines()[-1] == (
        f"error: data dir {first.data_dir} is in use by another meshlet agent "
        f"(pid {first.pid}); stop that agent or give this one its own --data-dir"
    )
    assert "Traceback" not in same_dir.stderr and "mlserver" not in same_dir.stderr

    other = tmp_path / "other"
    same_port = serve(other, "--grpc-port", str(first.info["grpc_port"]),
                      "--metrics-port", "0")
    assert same_port.returncode == 1
    last = same_port.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: cannot listen on gRPC port 127.0.0.1:{first.info['grpc_port']}: "
    ), same_port.stderr
    assert "Traceback" not in same_port.stderr
    assert not (other / "runtimes").exists(), "no runtime was started for it"

    # The first agent lost nothing: its runtime's files, and it still serves.
    assert files_under(first.data_dir / "runtimes") == runtime_files
    with triton.InferenceServerClient(first.address) as client:
        check_sums(infer(client, "simple-string-1"))
