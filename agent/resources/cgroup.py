"""The container's own limits, read from cgroup v2.

A pod's memory and CPU limits are not visible to ``psutil``: it reports the
node. The kernel enforces them through the cgroup, so we read them there:

- ``memory.max``: bytes, or ``max`` for no limit;
- ``memory.current`` and the ``inactive_file`` line of ``memory.stat``: what the
  cgroup uses. The *working set* (current minus inactive page cache, as the
  kubelet counts it) is what the OOM killer cares about; reclaimable cache is not;
- ``cpu.max``: ``<quota> <period>`` in microseconds (``max <period>`` for no
  limit), i.e. ``quota / period`` cores.

The directory is a parameter, so tests pass a fake one. :func:`own_cgroup_dir`
finds this process's cgroup under the v2 mount (``0::/path`` in
``/proc/self/cgroup``); inside a container with a cgroup namespace that is the
mount itself. A limit set on a parent cgroup binds too, so
:func:`read_limits` takes the smallest along the path from the leaf up to the
mount when given one.

Missing files or directories mean "no limit" (cgroup v1 hosts, macOS, the root
cgroup, which has no ``memory.max``). Contents we cannot parse also mean
"no limit", with one warning per file: a monitor must never crash the agent.
Reading is four small files per level: cheap enough for every sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")

_N = TypeVar("_N", int, float)


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """What one cgroup (and its ancestors, when walked) allows; ``None`` = no limit
    or unknown."""

    memory_max_bytes: int | None = None
    memory_current_bytes: int | None = None
    memory_working_set_bytes: int | None = None  # current minus inactive page cache
    cpu_max_cores: float | None = None

    @property
    def memory_available_bytes(self) -> int | None:
        """Bytes still allowed before the cgroup's limit, or ``None`` with no limit."""
        if self.memory_max_bytes is None:
            return None
        used = self.memory_working_set_bytes
        if used is None:
            used = self.memory_current_bytes or 0
        return max(self.memory_max_bytes - used, 0)


class CgroupReader:
    """Reads :class:`CgroupLimits` from one cgroup directory.

    ``root`` (the v2 mount) bounds the walk up through parents; ``None`` reads
    only ``cgroup_dir``. Bad files are warned about once per reader, not once
    per sample.
    """

    def __init__(self, cgroup_dir: Path, root: Path | None = None) -> None:
        self.cgroup_dir = cgroup_dir
        self._levels = _levels(cgroup_dir, root)
        self._warned: set[Path] = set()

    def read(self) -> CgroupLimits:
        leaf = self._levels[0]
        current = self._read_int(leaf / "memory.current")
        working_set = None
        if current is not None:
            inactive = self._read_stat(leaf / "memory.stat", "inactive_file")
            working_set = max(current - (inactive or 0), 0)
        memory_max: int | None = None
        cpu_max: float | None = None
        for level in self._levels:
            memory_max = _smallest(memory_max, self._read_memory_max(level / "memory.max"))
            cpu_max = _smallest(cpu_max, self._read_cpu_max(level / "cpu.max"))
        return CgroupLimits(memory_max, current, working_set, cpu_max)

    # --- one file each -----------------------------------------------------

    def _text(self, path: Path) -> str | None:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            self._warn(path, f"cannot read it ({err})")
            return None

    def _read_int(self, path: Path) -> int | None:
        text = self._text(path)
        if text is None:
            return None
        try:
            value = int(text.strip())
        except ValueError:
            self._warn(path, f"expected an integer, found {text.strip()[:40]!r}")
            return None
        return value if value >= 0 else None

    def _read_memory_max(self, path: Path) -> int | None:
        text = self._text(path)
        if text is None or text.strip() == "max":
            return None
        try:
            value = int(text.strip())
        except ValueError:
            self._warn(path, f"expected bytes or 'max', found {text.strip()[:40]!r}")
            return None
        if value <= 0:
            self._warn(path, f"ignoring a limit of {value} bytes")
            return None
        return value

    def _read_cpu_max(self, path: Path) -> float | None:
        text = self._text(path)
        if text is None:
            return None
        fields = text.split()
        if fields and fields[0] == "max":
            return None
        try:
            quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
        except (ValueError, IndexError):
            self._warn(path, f"expected '<quota> <period>' or 'max', found {text.strip()[:40]!r}")
            return None
        if quota <= 0 or period <= 0:
            self._warn(path, f"ignoring quota {quota} / period {period}")
            return None
        return quota / period

    def _read_stat(self, path: Path, key: str) -> int | None:
        text = self._text(path)
        if text is None:
            return None
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                try:
                    return int(value)
                except ValueError:
                    self._warn(path, f"bad {key} line {line[:40]!r}")
                    return None
        return None

    def _warn(self, path: Path, why: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("cgroup file %s: %s; treating it as no limit", path, why)


def read_limits(cgroup_dir: Path, root: Path | None = None) -> CgroupLimits:
    """One-off read; a long-lived monitor keeps a :class:`CgroupReader`."""
    return CgroupReader(cgroup_dir, root).read()


def own_cgroup_dir(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> Path:
    """This process's cgroup v2 directory, or ``root`` when it cannot be told
    (cgroup v1, no ``/proc``, a path outside the mount as seen from a namespace)."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return root
    for line in lines:
        if line.startswith("0::"):
            candidate = root / line[3:].strip().lstrip("/")
            if candidate.is_dir():
                return candidate
    return root


def _levels(leaf: Path, root: Path | None) -> list[Path]:
    if root is None:
        return [leaf]
    levels = [leaf]
    try:
        leaf.relative_to(root)
    except ValueError:
        return levels  # not under root: read the leaf alone
    here = leaf
    while here != root:
        here = here.parent
        levels.append(here)
    return levels


def _smallest(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
