"""What one resource sample costs: prints figures, asserts nothing.

    python -m tests.agent.resources.bench_monitor [samples] [children]

Starts ``children`` sleeping child processes (stand-ins for a runtime and its
stubs), then times ``samples`` calls of ``ResourceMonitor.sample()`` in CPU
time (what the 1%-of-a-core target is about) and in wall time. The number of
loaded models does not enter: a sample does no per-model work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial

import psutil

from agent.resources import NoGpu, ResourceMonitor, ScriptedGpus


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    n_children = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    sleeper = [sys.executable, "-c", "import signal; signal.pause()"]
    children = [subprocess.Popen(sleeper) for _ in range(n_children)]
    try:
        gpus = ScriptedGpus()
        for _ in range(4):
            gpus.add_gpu(80 << 30)
        for probe_name, probe in (("no GPU", NoGpu()), ("4 scripted GPUs", gpus)):
            pids = [os.getpid(), *(c.pid for c in children)]
            monitor = ResourceMonitor(partial(tuple, pids), gpu_probe=probe)
            monitor.sample()  # warm psutil's caches
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(samples):
                monitor.sample()
            cpu = (time.process_time() - cpu0) / samples
            wall = (time.perf_counter() - wall0) / samples
            print(
                f"{probe_name}: {len(pids)} roots, {len(psutil.pids())} processes visible: "
                f"{cpu * 1e3:.2f} ms CPU, {wall * 1e3:.2f} ms wall per sample; "
                f"{cpu / 5.0 * 100:.3f}% of a core at a 5 s interval"
            )
    finally:
        for child in children:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
