"""cgroup v2 limits read from a fake cgroup directory."""

from __future__ import annotations

import logging
from pathlib import Path

import psutil
import pytest

from agent.resources import NoGpu, ResourceMonitor, own_cgroup_dir, read_limits

GIB = 1 << 30


def write_cgroup(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name.replace("_", ".", 1)).write_text(text)
    return path


def test_limits_lower_than_the_node_are_used(tmp_path: Path) -> None:
    node = psutil.virtual_memory()
    limit = min(node.total // 4, 512 * 1024 * 1024)
    cg = write_cgroup(
        tmp_path / "pod",
        memory_max=f"{limit}\n",
        memory_current=f"{limit // 2}\n",
        memory_stat=f"anon 123\ninactive_file {limit // 4}\nactive_file 7\n",
        cpu_max="50000 100000\n",
    )
    limits = read_limits(cg)
    assert limits.memory_max_bytes == limit
    assert limits.memory_current_bytes == limit // 2
    assert limits.memory_working_set_bytes == limit // 2 - limit // 4
    assert limits.memory_available_bytes == limit - limit // 4
    assert limits.cpu_max_cores == 0.5

    snap = ResourceMonitor(gpu_probe=NoGpu(), cgroup_dir=cg).sample()
    assert snap.memory_total_bytes == node.total
    assert snap.memory_limit_bytes == limit
    assert snap.memory_available_bytes <= limit - limit // 4
    assert snap.cpu_limit_cores == 0.5
    assert snap.cpu_count == psutil.cpu_count()


def test_limits_higher_than_the_node_are_ignored(tmp_path: Path) -> None:
    node = psutil.virtual_memory()
    cpus = psutil.cpu_count() or 1
    cg = write_cgroup(
        tmp_path / "big",
        memory_max=f"{node.total * 4}\n",
        memory_current="0\n",
        cpu_max=f"{(cpus + 8) * 100000} 100000\n",
    )
    snap = ResourceMonitor(gpu_probe=NoGpu(), cgroup_dir=cg).sample()
    assert snap.memory_limit_bytes == node.total
    assert snap.cpu_limit_cores <= cpus


def test_max_means_unlimited(tmp_path: Path) -> None:
    cg = write_cgroup(tmp_path / "open", memory_max="max\n", cpu_max="max 100000\n")
    limits = read_limits(cg)
    assert limits.memory_max_bytes is None
    assert limits.cpu_max_cores is None
    assert limits.memory_available_bytes is None
    snap = ResourceMonitor(gpu_probe=NoGpu(), cgroup_dir=cg).sample()
    assert snap.memory_limit_bytes == snap.memory_total_bytes


def test_missing_dir_and_files_mean_no_limit(tmp_path: Path) -> None:
    limits = read_limits(tmp_path / "nowhere")
    assert (limits.memory_max_bytes, limits.memory_current_bytes, limits.cpu_max_cores) == (
        None, None, None,
    )
    assert read_limits(write_cgroup(tmp_path / "empty")) == limits


@pytest.mark.parametrize(
    ("memory_max", "cpu_max"),
    [("lots\n", "fast\n"), ("-5\n", "0 100000\n"), ("", ""), ("12.5G\n", "100000 zero\n")],
)
def test_garbage_is_no_limit_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, memory_max: str, cpu_max: str
) -> None:
    cg = write_cgroup(
        tmp_path / "bad", memory_max=memory_max, cpu_max=cpu_max, memory_current="oops\n"
    )
    with caplog.at_level(logging.WARNING, logger="agent.resources.cgroup"):
        limits = read_limits(cg)
    assert limits.memory_max_bytes is None
    assert limits.cpu_max_cores is None
    assert limits.memory_current_bytes is None
    assert "treating it as no limit" in caplog.text


def test_garbage_is_warned_about_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cg = write_cgroup(tmp_path / "bad", memory_max="lots\n")
    monitor = ResourceMonitor(gpu_probe=NoGpu(), cgroup_dir=cg)
    with caplog.at_level(logging.WARNING, logger="agent.resources.cgroup"):
        for _ in range(3):
            monitor.sample()
    assert caplog.text.count("memory.max") == 1


def test_a_parent_limit_binds_when_walking_to_the_root(tmp_path: Path) -> None:
    root = write_cgroup(tmp_path / "root")  # the mount: no memory.max, like the real one
    parent = write_cgroup(root / "kubepods", memory_max=f"{GIB}\n", cpu_max="max 100000\n")
    leaf = write_cgroup(parent / "pod", memory_max="max\n", cpu_max="150000 100000\n")
    assert read_limits(leaf).memory_max_bytes is None  # the leaf alone
    walked = read_limits(leaf, root=root)
    assert walked.memory_max_bytes == GIB
    assert walked.cpu_max_cores == 1.5


def test_own_cgroup_dir_follows_proc_self_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "mount"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    proc = tmp_path / "cgroup"
    proc.write_text("1:cpu:/\n0::/kubepods/pod1\n")
    assert own_cgroup_dir(root, proc) == root / "kubepods" / "pod1"
    proc.write_text("0::/not/here\n")  # a namespace hides it: use the mount
    assert own_cgroup_dir(root, proc) == root
    assert own_cgroup_dir(root, tmp_path / "no-proc") == root
