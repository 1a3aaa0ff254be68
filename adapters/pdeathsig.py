"""Tie a runtime process's life to the agent's: the kernel SIGKILLs it when
the agent dies (``PR_SET_PDEATHSIG``), however the agent exits.

Python runtimes (the MLServer launcher) call ``arm_parent_death_signal``
themselves. A native binary (``tritonserver``) is started through this module,
which arms the signal and then ``exec``s the binary; the setting survives
``execve``::

    python -m adapters.pdeathsig --parent-pid PID -- PROGRAM [ARGS...]
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger("adapters.pdeathsig")

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
EXIT_PARENT_GONE = 3
EXIT_EXEC_FAILED = 127


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


def command(program: str, args: Sequence[str], parent_pid: int) -> list[str]:
    """The argv that runs ``program args`` tied to ``parent_pid``."""
    return [sys.executable, "-m", "adapters.pdeathsig", "--parent-pid", str(parent_pid),
            "--", program, *args]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[0] != "--parent-pid" or args[2] != "--":
        print("usage: python -m adapters.pdeathsig --parent-pid PID -- PROGRAM [ARGS...]",
              file=sys.stderr)
        sys.exit(2)
    arm_parent_death_signal(int(args[1]))
    program = args[3:]
    try:
        os.execv(program[0], program)
    except OSError as err:
        print(f"cannot run {program[0]}: {err}", file=sys.stderr)
        sys.exit(EXIT_EXEC_FAILED)


if __name__ == "__main__":
    main()
