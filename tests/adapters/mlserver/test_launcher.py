"""The launcher never outlives the process that started it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from adapters.pdeathsig import EXIT_PARENT_GONE
from tests.adapters.helpers import pid_exists, wait_until

ROOT = Path(__file__).resolve().parents[3]

# A stand-in agent: starts an adapter, prints the runtime's pid, then waits.
AGENT = """
import asyncio, sys
from pathlib import Path
from adapters.base import RuntimeOptions
from adapters.mlserver.adapter import MLServerAdapter

async def main():
    adapter = MLServerAdapter(RuntimeOptions(work_dir=Path(sys.argv[1])))
    await adapter.start()
    print(adapter.processes()[0].pid, flush=True)
    await asyncio.Event().wait()  # until killed

asyncio.run(main())
"""


async def test_runtime_dies_with_a_killed_agent(tmp_path: Path) -> None:
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT, str(tmp_path), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(agent.stdout.readline(), 60)
        runtime_pid = int(line)
        assert pid_exists(runtime_pid)
        agent.kill()  # SIGKILL: the agent gets no chance to stop its children
        await agent.wait()
        await wait_until(lambda: not pid_exists(runtime_pid), timeout_s=30)
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()


async def test_exits_at_once_if_its_parent_is_already_gone(tmp_path: Path) -> None:
    # Any pid but our own stands for "the parent that started me has died".
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.mlserver.launcher",
        "--repo", str(tmp_path), "--grpc-port", "1", "--http-port", "1",
        "--socket", str(tmp_path / "s.sock"), "--parent-pid", str(os.getpid() + 1_000_000),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(launcher.communicate(), 60)
    finally:
        if launcher.returncode is None:
            launcher.send_signal(signal.SIGKILL)
            await launcher.wait()
    assert launcher.returncode == EXIT_PARENT_GONE
    assert b"is gone" in err
    assert not (tmp_path / "s.sock").exists()
