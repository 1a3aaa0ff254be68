"""GPU memory, behind one small interface.

:class:`GpuProbe` is the extension point: the monitor asks it for every GPU's
total/used/free memory and for the memory each process holds on each GPU,
once per sample. Three implementations:

- :class:`NvmlProbe`: the real one, through ``pynvml`` (the ``nvidia-ml-py``
  wheel). ``nvmlInit`` runs once, device handles and their names and UUIDs are
  read once, and a sample costs one ``nvmlDeviceGetMemoryInfo`` plus one
  ``nvmlDeviceGetComputeRunningProcesses`` per GPU. Every ``NVMLError`` is
  logged (first time at warning, repeats at debug) and read as "no data" for
  that GPU, never raised: a GPU that falls off the bus must not stop the agent.
- :class:`NoGpu`: no GPUs. :func:`open_gpu_probe` picks it when ``pynvml`` does
  not import or ``nvmlInit`` fails (no driver, no device), and says why once.
- :class:`ScriptedGpus`: for tests; GPUs and per-process usage are set by the
  test, so it can fill a GPU up under the code being tested.

Process ids are as NVML reports them: on a node where the agent runs in its
own PID namespace without ``hostPID``, NVML may report host PIDs that do not
match ours, and per-process figures then stay empty (the per-GPU totals are
still right).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU's memory at one moment, in bytes."""

    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """Memory one process holds on one GPU."""

    gpu_index: int
    pid: int
    used_bytes: int


class GpuProbe(Protocol):
    """Reads GPU memory. Implementations never raise from these methods: a GPU
    they cannot read is left out, a process they cannot read is left out."""

    def gpus(self) -> list[GpuInfo]:
        """Every GPU this node can see, by index."""
        ...

    def processes(self) -> list[GpuProcess]:
        """Every (GPU, process) pair holding GPU memory now."""
        ...

    def close(self) -> None:
        """Release the library; safe to call twice."""
        ...


class NoGpu:
    """A node without GPUs (or without a driver we can use)."""

    def gpus(self) -> list[GpuInfo]:
        return []

    def processes(self) -> list[GpuProcess]:
        return []

    def close(self) -> None:
        pass


class ScriptedGpus:
    """GPUs whose memory a test sets.

    A GPU's used memory is what its processes hold (:meth:`set_process_memory`)
    plus ``other_used_bytes`` (what processes we cannot see hold,
    :meth:`set_other_used`). ``failing = True`` makes the probe report nothing,
    like an NVML error on every call.
    """

    def __init__(self) -> None:
        self._gpus: list[GpuInfo] = []
        self._other: dict[int, int] = {}
        self._procs: dict[tuple[int, int], int] = {}
        self.failing = False
        self.closed = False

    def add_gpu(self, total_bytes: int, name: str = "Scripted GPU") -> int:
        index = len(self._gpus)
        self._gpus.append(
            GpuInfo(index, f"GPU-scripted-{index}", name, total_bytes, 0, total_bytes)
        )
        self._other[index] = 0
        return index

    def set_other_used(self, gpu_index: int, used_bytes: int) -> None:
        self._check(gpu_index)
        self._other[gpu_index] = used_bytes

    def set_process_memory(self, gpu_index: int, pid: int, used_bytes: int) -> None:
        """``used_bytes`` 0 removes the process from that GPU."""
        self._check(gpu_index)
        if used_bytes:
            self._procs[gpu_index, pid] = used_bytes
        else:
            self._procs.pop((gpu_index, pid), None)

    def gpus(self) -> list[GpuInfo]:
        if self.failing:
            return []
        out = []
        for gpu in self._gpus:
            used = self._other[gpu.index] + sum(
                b for (index, _), b in self._procs.items() if index == gpu.index
            )
            used = min(used, gpu.total_bytes)
            out.append(replace(gpu, used_bytes=used, free_bytes=gpu.total_bytes - used))
        return out

    def processes(self) -> list[GpuProcess]:
        if self.failing:
            return []
        return [GpuProcess(index, pid, b) for (index, pid), b in self._procs.items()]

    def close(self) -> None:
        self.closed = True

    def _check(self, gpu_index: int) -> None:
        if not 0 <= gpu_index < len(self._gpus):
            raise IndexError(f"no scripted GPU {gpu_index}")


@dataclass(slots=True)
class _Device:
    index: int
    handle: Any
    uuid: str
    name: str


class NvmlProbe:
    """GPUs through NVML. Build it with :func:`open_gpu_probe`, which handles a
    missing library or driver; this constructor expects ``nvmlInit`` to work."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._seen_errors: set[str] = set()
        nvml.nvmlInit()
        self._open = True
        self._devices: list[_Device] = []
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as err:
            self._error("counting GPUs", err)
            count = 0
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
            except nvml.NVMLError as err:
                self._error(f"opening GPU {index}", err)
                continue
            self._devices.append(_Device(index, handle, uuid, name))

    def gpus(self) -> list[GpuInfo]:
        out = []
        for dev in self._devices:
            try:
                mem = self._nvml.nvmlDeviceGetMemoryInfo(dev.handle)
            except self._nvml.NVMLError as err:
                self._error(f"reading memory of GPU {dev.index} ({dev.uuid})", err)
                continue
            out.append(
                GpuInfo(dev.index, dev.uuid, dev.name, int(mem.total), int(mem.used),
                        int(mem.free))
            )
        return out

    def processes(self) -> list[GpuProcess]:
        out = []
        for dev in self._devices:
            try:
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(dev.handle)
            except self._nvml.NVMLError as err:
                self._error(f"listing processes on GPU {dev.index} ({dev.uuid})", err)
                continue
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                if used is None:  # NVML_VALUE_NOT_AVAILABLE: e.g. no permission
                    continue
                out.append(GpuProcess(dev.index, int(proc.pid), int(used)))
        return out

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._devices = []
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as err:
            self._error("shutting NVML down", err)

    def _error(self, doing: str, err: Exception) -> None:
        message = f"NVML error {doing}: {err}; no GPU data for it this time"
        if message in self._seen_errors:
            log.debug("%s", message)
        else:
            self._seen_errors.add(message)
            log.warning("%s", message)


def open_gpu_probe() -> GpuProbe:
    """:class:`NvmlProbe` when NVML works here, else :class:`NoGpu` (logged once)."""
    try:
        import pynvml
    except ImportError as err:
        log.info("no GPU monitoring: pynvml does not import (%s)", err)
        return NoGpu()
    try:
        return NvmlProbe(pynvml)
    except pynvml.NVMLError as err:
        log.info("no GPU monitoring: NVML did not start (%s)", err)
        return NoGpu()


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
