"""Tie a runtime process's life to the agent's: the kernel SIGKILLs it when
the agent dies (``PR_SET_PDEATHSIG``), however the agent exits.

Python runtimes (the MLServer launcher) call ``arm_parent_death_signal``
themselves. A native binary (``tritonserver``) runs under ``adapters/guard.py``
instead, which arms the signal for itself and for the binary, and also takes
care of the processes the binary forks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger("adapters.pdeathsig")

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
EXIT_PARENT_GONE = 3


def arm_parent_death_signal(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies.

    The parent may have died between our fork and this call, in which case the
    signal will never come; ``getppid()`` then no longer names the parent
    passed in, and we exit instead.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if parent_pid is not None and os.getppid() != parent_pid:
        log.error("parent %d is gone; exiting", parent_pid)
        sys.exit(EXIT_PARENT_GONE)
