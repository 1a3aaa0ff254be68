"""The shared-memory files of Triton's Python backend, under a name of ours.

The backend makes one region per model instance, ``/dev/shm/<prefix><uuid>``
(checked with the nvidia-pytriton wheel's server; 1 MiB each by default), and
passes its name to the instance's stub as the stub's second argument. The
server unlinks a region at the instance's unload; once the server is dead, a
stub unlinks its own as it exits by itself, but one that hangs (see
adapters/guard.py) or is SIGKILLed leaves it.

Triton's default prefix is shared by every server on the node; ours
(``--backend-config=python,shm-region-prefix-name=``) is
``meshlet-triton-<12 hex digits of the work dir's path>-``, so that a server's
regions, and the stubs that use them, can be told apart from any other
server's, and an agent restarted on the same data dir finds what its
predecessor left. The name must be a plain file name: Triton takes a ``/`` in
it at start, then fails every Python model's load (EINVAL from shm_open).

Regions are removed before each spawn, after each exit and at stop (see
process.py), and by the guard (adapters/guard.py) whenever its server exits,
the agent's death included.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX_BASE = "meshlet-triton-"


def region_prefix(work_dir: Path) -> str:
    """The region name prefix of the Triton server working in ``work_dir``."""
    digest = hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:12]
    return f"{PREFIX_BASE}{digest}-"


def backend_config(prefix: str) -> str:
    """The ``tritonserver`` argument that gives its Python backend ``prefix``."""
    return f"--backend-config=python,shm-region-prefix-name={prefix}"


def pattern(prefix: str) -> str:
    """A glob for every region named with ``prefix``."""
    return f"{SHM_DIR}/{prefix}*"


def regions(prefix: str) -> list[Path]:
    """The region files named with ``prefix`` now."""
    try:
        return sorted(SHM_DIR.glob(f"{prefix}*"))
    except OSError:
        return []


def remove_regions(prefix: str) -> int:
    """Unlink every region named with ``prefix``; how many were there.

    Only when no process of that server is alive: a live stub keeps its
    mapping, but one starting would not find its region."""
    removed = 0
    for path in regions(prefix):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove Triton shared memory %s: %s", path, err)
    return removed
