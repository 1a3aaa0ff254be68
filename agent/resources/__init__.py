"""What this node has: RAM, CPU and GPU memory, the container's cgroup limits,
and what each runtime process (with its children) uses.

- :mod:`.cgroup`: cgroup v2 limits read from a directory;
- :mod:`.gpu`: the :class:`GpuProbe` interface, NVML behind it, a no-GPU and a
  scripted implementation;
- :mod:`.monitor`: :class:`ResourceMonitor`, sampling all of it on an interval.
"""

from .cgroup import CgroupLimits, CgroupReader, own_cgroup_dir, read_limits
from .gpu import GpuInfo, GpuProbe, GpuProcess, NoGpu, NvmlProbe, ScriptedGpus, open_gpu_probe
from .monitor import (
    DEFAULT_INTERVAL_S,
    NodeResources,
    ProcessUsage,
    ResourceMonitor,
    process_usage,
)

__all__ = [
    "DEFAULT_INTERVAL_S",
    "CgroupLimits",
    "CgroupReader",
    "GpuInfo",
    "GpuProbe",
    "GpuProcess",
    "NoGpu",
    "NodeResources",
    "NvmlProbe",
    "ProcessUsage",
    "ResourceMonitor",
    "ScriptedGpus",
    "open_gpu_probe",
    "own_cgroup_dir",
    "process_usage",
    "read_limits",
]
