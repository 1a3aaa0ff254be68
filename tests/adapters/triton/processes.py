"""Finding a Triton server's processes and shared memory, for tests.

A server's Python-backend stubs are its children while it lives; once it dies
they are reparented (to its guard, or to init when that died too), so a
search by descent alone would miss exactly the stubs a leak leaves. A stub is
also found by its name and by its region name (its second argument), which
starts with the server's prefix (``adapters/triton/shm.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psutil

from adapters.triton import shm

STUB = "triton_python_backend_stub"
SERVER = "tritonserver"
_PREFIX_OPTION = "shm-region-prefix-name="


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def is_stub(cmdline: list[str]) -> bool:
    return bool(cmdline) and Path(cmdline[0]).name == STUB


def is_server(cmdline: list[str]) -> bool:
    return bool(cmdline) and Path(cmdline[0]).name == SERVER


def stubs(prefix: str, match: Callable[[list[str]], bool] = lambda cmd: True) -> list[int]:
    """Live stubs, wherever they are in the process tree, whose shared-memory
    region carries ``prefix`` (and whose command line ``match`` accepts)."""
    found = []
    for proc in psutil.process_iter():
        cmd = _cmdline(proc)
        if is_stub(cmd) and len(cmd) > 2 and cmd[2].startswith(prefix) and match(cmd):
            if _alive(proc):
                found.append(proc.pid)
    return found


def family(root: int, prefix: str | None = None,
           match: Callable[[list[str]], bool] = lambda cmd: True) -> list[int]:
    """Live processes descended from ``root`` (not ``root`` itself), plus, with
    ``prefix``, that server's stubs wherever they were reparented; only those
    whose command line ``match`` accepts."""
    try:
        descendants = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    pids = {p.pid for p in descendants if match(_cmdline(p)) and _alive(p)}
    if prefix is not None:
        pids.update(stubs(prefix, match))
    return sorted(pids)


def server_prefix(server_pid: int) -> str:
    """The shared-memory prefix a running ``tritonserver`` was given."""
    for arg in psutil.Process(server_pid).cmdline():
        if _PREFIX_OPTION in arg:
            return arg.split(_PREFIX_OPTION, 1)[1]
    raise AssertionError(f"tritonserver {server_pid} has no {_PREFIX_OPTION} option")


def stub_regions(stub_pids: list[int]) -> dict[int, Path]:
    """Each stub's shared-memory file (it need not exist)."""
    return {pid: shm.SHM_DIR / psutil.Process(pid).cmdline()[2] for pid in stub_pids}


def regions(prefix: str) -> list[Path]:
    """The shared-memory files with ``prefix`` now."""
    return shm.regions(prefix)
