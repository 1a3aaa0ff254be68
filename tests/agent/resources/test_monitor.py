"""The monitor: per-process RSS with children, GPU memory by process tree, the
sampling loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from agent.resources import NoGpu, ResourceMonitor, ScriptedGpus, process_usage

DEADLINE_S = 10.0
MIB = 1 << 20

# A parent that starts one child holding 64 MiB, then prints the child's pid.
PARENT = textwrap.dedent(
    """
    import signal, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c",
        "import signal; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]);"
        " print('ready', flush=True); signal.pause()"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    print(child.pid, flush=True)
    signal.pause()  # until the test kills us
    """
)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # poll


@pytest.fixture
def parent_and_child() -> Iterator[tuple[int, int]]:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True
    ) as parent:  # on exit: closes the pipe, waits for the parent
        child_pid = 0
        try:
            assert parent.stdout is not None
            child_pid = int(parent.stdout.readline())  # blocks until the child is ready
            yield parent.pid, child_pid
        finally:
            for pid in (child_pid, parent.pid):
                if pid:
                    try:
                        psutil.Process(pid).kill()
                    except psutil.NoSuchProcess:
                        pass


def test_rss_includes_children(parent_and_child: tuple[int, int], tmp_path: Path) -> None:
    parent, child = parent_and_child
    gpus = ScriptedGpus()
    gpus.add_gpu(16 << 30)
    gpus.add_gpu(16 << 30)
    gpus.set_process_memory(0, child, 300 * MIB)
    gpus.set_process_memory(1, child, 100 * MIB)
    gpus.set_process_memory(1, parent, 20 * MIB)
    gpus.set_process_memory(0, os.getpid(), 999 * MIB)  # not in the tree
    monitor = ResourceMonitor(lambda: [parent], gpu_probe=gpus, cgroup_dir=tmp_path)

    usage = monitor.sample().processes[parent]
    parent_rss = psutil.Process(parent).memory_info().rss
    assert usage.process_count == 2
    assert usage.rss_bytes >= parent_rss + 64 * MIB
    assert dict(usage.gpu_bytes) == {0: 300 * MIB, 1: 120 * MIB}
    assert usage.gpu_total_bytes == 420 * MIB

    # Until the parent reaps it, the child is a zombie: still in the tree, no memory.
    psutil.Process(child).kill()
    wait_for(
        lambda: process_usage([parent])[parent].rss_bytes < usage.rss_bytes - 32 * MIB,
        "the child's memory to go",
    )


def test_gone_and_repeated_roots() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = os.getpid()
    usage = process_usage([me, gone.pid, me])
    assert list(usage) == [me]
    assert usage[me].rss_bytes > 0
    assert process_usage([]) == {}


def test_cpu_and_memory_figures_are_sane(tmp_path: Path) -> None:
    snap = ResourceMonitor(gpu_probe=NoGpu(), cgroup_dir=tmp_path).sample()
    assert 0 < snap.memory_available_bytes <= snap.memory_limit_bytes <= snap.memory_total_bytes
    assert snap.memory_used_bytes == snap.memory_limit_bytes - snap.memory_available_bytes
    assert 0 < snap.cpu_limit_cores <= snap.cpu_count
    assert 0.0 <= snap.cpu_percent <= 100.0
    assert snap.gpus == () and snap.processes == {}


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        ResourceMonitor(gpu_probe=NoGpu(), interval_s=0)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # poll


async def test_loop_samples_until_stopped(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    gpu = gpus.add_gpu(16 << 30)
    monitor = ResourceMonitor(gpu_probe=gpus, cgroup_dir=tmp_path, interval_s=0.02)
    assert monitor.latest is None

    await monitor.start()
    first = monitor.latest
    assert first is not None and first.gpus[0].used_bytes == 0

    gpus.set_other_used(gpu, 1 << 30)
    await wait_until(
        lambda: monitor.latest is not None and monitor.latest.gpus[0].used_bytes == 1 << 30,
        "a sample that sees the GPU fill up",
    )
    latest = monitor.latest
    assert latest is not None and latest.sampled_at > first.sampled_at

    await monitor.stop()
    await monitor.stop()  # safe twice
    assert gpus.closed
    count = monitor.samples
    await monitor.start()  # a stopped monitor stays stopped
    assert monitor.samples == count


async def test_a_failing_sample_keeps_the_last_one(tmp_path: Path) -> None:
    calls = 0

    def pids() -> list[int]:
        nonlocal calls
        calls += 1
        return [os.getpid()]

    gpus = ScriptedGpus()
    monitor = ResourceMonitor(pids, gpu_probe=gpus, cgroup_dir=tmp_path, interval_s=0.02)
    await monitor.start()
    good = monitor.latest
    assert good is not None

    def broken() -> list:  # type: ignore[type-arg]
        raise RuntimeError("probe broke")

    gpus.gpus = broken  # type: ignore[method-assign]
    seen = calls
    await wait_until(lambda: calls >= seen + 3, "a few failed samples")
    assert monitor.latest is good
    await monitor.stop()
