"""A guard process: runs a runtime server so that the server, everything it
started, and its shared-memory files go with it, whoever dies first.

    python -I -S guard.py --parent-pid PID [--remove GLOB]... -- PROGRAM [ARGS...]

Why it exists: ``tritonserver`` forks one Python-backend stub per model
instance. The stub catches SIGTERM with a handler that does nothing. It
notices its server's death by polling ``kill(server, 0)`` every 300 ms (a
zombie server still counts as alive), then tears itself down from that
polling thread, which needs the GIL. An idle stub exits within a second or
two and unlinks its ``/dev/shm`` region. One whose main thread was in a
request keeps the GIL while it waits, forever, on a semaphore in shared
memory that the dead server should have posted: it lives on, reparented to
init, with its region. ``PR_SET_PDEATHSIG`` on the server cannot help: it does
not pass to the server's children, and nothing in the agent can act once the
agent itself is SIGKILLed.

Decisions:

* The guard sits between the agent and the server. It asks the kernel for
  ``SIGHUP`` when the agent dies (``PR_SET_PDEATHSIG``) and becomes a child
  subreaper (``PR_SET_CHILD_SUBREAPER``), so stubs orphaned by the server's
  death are reparented to it rather than to init, and it can always find and
  kill them: they are its own children, whose pids cannot be reused before it
  reaps them.
* The server is a direct child, exec'd with ``PR_SET_PDEATHSIG=SIGKILL`` toward
  the guard, so a guard killed alone takes the server with it.
* Whenever the server exits (a crash, a SIGKILL from anyone, a graceful stop),
  the guard SIGKILLs every process left under it, reaps them, removes the files
  matching ``--remove``, and only then exits. So the supervisor never respawns
  a server while its predecessor's stubs or files are still around.
* It exits the way the server did: killed by the same signal (core dumps
  off), or with the same status. The supervisor's report stays truthful:
  a server killed by SIGKILL reads "killed by SIGKILL".
* SIGTERM and SIGINT are forwarded to the server alone, which then stops its
  stubs and unlinks their regions in order (Triton's graceful stop). A SIGHUP
  means the agent died only when ``getppid()`` changed: ``PR_SET_PDEATHSIG``
  fires when the parent *thread* that forked us exits, which may be any
  thread of a live agent. On the agent's death the server is SIGKILLed at
  once: nobody is left to wait for a graceful stop.
* The supervisor starts the guard as a session leader, so its process group
  holds the guard, the server and the stubs, and a SIGKILL to that group (the
  liveness watchdog, the escalation of a stop) ends them all in one step; the
  agent removes the shared-memory files afterwards, since the guard cannot.
* Cost: one small Python interpreter, run with ``-I -S`` and stdlib imports only
  (measured: 11 MiB RSS of which 5 MiB its own, the rest libpython's pages
  shared with the agent; ~15 ms to start; one thread, no CPU while the server
  runs, blocked in ``sigwait``). This file must therefore import nothing from
  meshlet.
"""

from __future__ import annotations

import ctypes
import glob
import os
import resource
import signal
import sys
import time
from collections.abc import Iterable, Sequence

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
PARENT_DEATH_SIGNAL = signal.SIGHUP
EXIT_USAGE = 2
EXIT_PARENT_GONE = 3
EXIT_EXEC_FAILED = 127
# How long killed leftovers may take to die (one stuck in the kernel, D state)
# before the guard gives up on them and exits anyway.
SWEEP_TIMEOUT_S = 10.0
_WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, PARENT_DEATH_SIGNAL}
_FORWARDED = {signal.SIGTERM, signal.SIGINT}
USAGE = "usage: guard.py --parent-pid PID [--remove GLOB]... -- PROGRAM [ARGS...]"


def _say(message: str) -> None:
    os.write(2, f"meshlet guard {os.getpid()}: {message}\n".encode())


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def children_of(pid: int) -> list[int]:
    """Live (or not yet reaped) processes whose parent is ``pid``, from /proc
    (``/proc/PID/task/*/children`` needs a kernel option many lack)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _reap(server: int = 0) -> int | None:
    """Reap every child that exited; the server's wait status if it was one."""
    status = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == server:
            status = wait_status


def _sweep() -> int:
    """SIGKILL and reap every process left under us (orphans come to us, the
    subreaper, as their parents die). Returns how many were killed."""
    me = os.getpid()
    killed: set[int] = set()
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while True:
        _reap()
        left = children_of(me)
        if not left:
            try:  # none in /proc: done if the kernel agrees we have no child
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return len(killed)
        for pid in left:
            if pid not in killed:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)  # our child: its pid is still ours
        if time.monotonic() > deadline:
            _say(f"processes {sorted(left)} still alive {SWEEP_TIMEOUT_S:g} s after SIGKILL")
            return len(killed)
        signal.sigtimedwait({signal.SIGCHLD}, 0.05)  # poll: wakes on the next exit


def _remove(patterns: Sequence[str]) -> None:
    for pattern in patterns:
        for path in glob.glob(pattern):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                _say(f"cannot remove {path}: {err}")


def _exit_like(wait_status: int) -> None:
    """Exit as the server did: by its signal, or with its status."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # its crash, not ours
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP keep their default anyway
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default is not to terminate
    os._exit(os.waitstatus_to_exitcode(wait_status))


def _spawn(program: Sequence[str], original_mask: Iterable[int]) -> int:
    guard = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: never return into the guard's code
        # As subprocess.Popen does: Python ignores these, exec would keep that.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, original_mask)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != guard:
            os._exit(EXIT_PARENT_GONE)
        os.execv(program[0], list(program))
    except BaseException as err:
        _say(f"cannot run {program[0]}: {err}")
    os._exit(EXIT_EXEC_FAILED)


def _describe(wait_status: int) -> str:
    if not os.WIFSIGNALED(wait_status):
        return f"exit status {os.waitstatus_to_exitcode(wait_status)}"
    sig = os.WTERMSIG(wait_status)
    try:
        return f"killed by {signal.Signals(sig).name}"
    except ValueError:
        return f"killed by signal {sig}"


def run(parent_pid: int, program: Sequence[str], remove: Sequence[str]) -> None:
    """Guard ``program`` (see the module docstring); never returns."""
    original_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    _prctl(PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)
    if os.getppid() != parent_pid:  # it died before the signal was armed
        os._exit(EXIT_PARENT_GONE)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    server = _spawn(program, original_mask)
    status: int | None = None
    parent_gone = False
    try:
        while status is None:
            sig = signal.sigwait(_WATCHED)
            if sig == signal.SIGCHLD:
                status = _reap(server)
            elif sig in _FORWARDED:
                os.kill(server, sig)  # not reaped yet: the pid is still the server's
            elif sig == PARENT_DEATH_SIGNAL and os.getppid() != parent_pid:
                parent_gone = True
                os.kill(server, signal.SIGKILL)
    finally:
        if status is None:  # the guard itself failed: the server must not outlive it
            os.kill(server, signal.SIGKILL)
    killed = _sweep()
    _remove(remove)
    if killed or parent_gone:
        why = "the agent died; " if parent_gone else ""
        _say(f"{why}{program[0]} {_describe(status)}; killed {killed} process(es) it left")
    _exit_like(status)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    parent_pid: int | None = None
    remove: list[str] = []
    while args and args[0] != "--":
        if len(args) < 2 or args[0] not in ("--parent-pid", "--remove"):
            _say(USAGE)
            sys.exit(EXIT_USAGE)
        option, value, args = args[0], args[1], args[2:]
        if option == "--parent-pid":
            parent_pid = int(value)
        else:
            remove.append(value)
    program = args[1:]
    if parent_pid is None or not program:
        _say(USAGE)
        sys.exit(EXIT_USAGE)
    run(parent_pid, program, remove)


def command(program: str, args: Sequence[str], parent_pid: int,
            remove: Sequence[str] = ()) -> list[str]:
    """The argv that runs ``program args`` under a guard tied to ``parent_pid``."""
    options = [item for pattern in remove for item in ("--remove", pattern)]
    return [sys.executable, "-I", "-S", os.path.abspath(__file__),
            "--parent-pid", str(parent_pid), *options, "--", program, *args]


if __name__ == "__main__":
    main()
