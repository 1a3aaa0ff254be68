"""GPU probes: the scripted one seen through the monitor, NVML's failures."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from agent.resources import (
    GpuProcess,
    NoGpu,
    NvmlProbe,
    ResourceMonitor,
    ScriptedGpus,
    open_gpu_probe,
)

GIB = 1 << 30


def test_scripted_gpu_filling_up_is_seen_by_the_monitor(tmp_path: Any) -> None:
    gpus = ScriptedGpus()
    first = gpus.add_gpu(16 * GIB, name="A")
    second = gpus.add_gpu(80 * GIB, name="B")
    monitor = ResourceMonitor(gpu_probe=gpus, cgroup_dir=tmp_path)

    before = monitor.sample()
    assert [(g.index, g.name, g.free_bytes) for g in before.gpus] == [
        (first, "A", 16 * GIB), (second, "B", 80 * GIB),
    ]

    gpus.set_other_used(first, 10 * GIB)  # someone else's process
    gpus.set_process_memory(first, 4242, 5 * GIB)
    after = monitor.sample()
    gpu = after.gpu(first)
    assert gpu is not None
    assert (gpu.used_bytes, gpu.free_bytes) == (15 * GIB, 1 * GIB)
    assert after.gpu(second) == before.gpu(second)

    gpus.failing = True
    assert monitor.sample().gpus == ()


def test_scripted_gpu_rejects_unknown_index() -> None:
    with pytest.raises(IndexError):
        ScriptedGpus().set_process_memory(0, 1, 1)


def test_no_gpu_when_nvml_init_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    with caplog.at_level(logging.INFO, logger="agent.resources.gpu"):
        probe = open_gpu_probe()
    assert isinstance(probe, NoGpu)
    assert "NVML did not start" in caplog.text
    assert "Driver Not Loaded" in caplog.text


def test_no_gpu_when_pynvml_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with caplog.at_level(logging.INFO, logger="agent.resources.gpu"):
        assert isinstance(open_gpu_probe(), NoGpu)
    assert "pynvml does not import" in caplog.text


class FakeNvml:
    """pynvml's functions over two devices; device 1 can be made to fail."""

    NVMLError = pynvml.NVMLError

    def __init__(self) -> None:
        self.lost: set[int] = set()
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()  # old bindings return bytes

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "Fake H100"

    def _check(self, handle: int) -> None:
        if handle in self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self._check(handle)
        return SimpleNamespace(total=80 * GIB, used=GIB * (handle + 1), free=80 * GIB - GIB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        self._check(handle)
        return [
            SimpleNamespace(pid=100 + handle, usedGpuMemory=GIB),
            SimpleNamespace(pid=200, usedGpuMemory=None),  # not available: skipped
        ]


def test_nvml_errors_are_no_data_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml()
    probe = NvmlProbe(nvml)
    assert [(g.index, g.uuid, g.name, g.used_bytes) for g in probe.gpus()] == [
        (0, "GPU-0", "Fake H100", GIB), (1, "GPU-1", "Fake H100", 2 * GIB),
    ]
    assert probe.processes() == [GpuProcess(0, 100, GIB), GpuProcess(1, 101, GIB)]

    nvml.lost.add(1)
    with caplog.at_level(logging.WARNING, logger="agent.resources.gpu"):
        for _ in range(3):
            assert [g.index for g in probe.gpus()] == [0]
            assert probe.processes() == [GpuProcess(0, 100, GIB)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one for memory, one for processes, not one per call
    assert "GPU is lost" in warnings[0].getMessage()
    assert "GPU 1" in warnings[0].getMessage()

    probe.close()
    probe.close()
    assert nvml.shutdowns == 1
