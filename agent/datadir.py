"""One agent per data dir, and listening ports that are free before anything starts.

Two agents on one data dir would share its registry, delete each other's
runtime sockets and model folders, and evict each other's unpacked
artifacts. ``DataDirLock`` takes ``<data-dir>/agent.lock`` with ``flock``
before the agent touches anything else there; the kernel drops the lock when
the process dies, however it dies, so a SIGKILLed agent never leaves a stale
lock behind. The file holds the owner's pid, for the message a second agent
prints.

``check_ports`` binds each fixed listening port once (with ``SO_REUSEADDR``,
as the servers do) before the runtimes start, so an agent whose port is taken
fails at once with one line naming the port, rather than after starting its
runtimes and with gRPC's traceback. The real bind can still lose a race; its
failure is reported the same way (``StartupError``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterable
from pathlib import Path

LOCK_FILENAME = "agent.lock"


class StartupError(Exception):
    """The agent cannot start as configured; the message says why and what to do."""


class DataDirLock:
    """An exclusive, process-lifetime lock on one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``StartupError`` naming the dir and the owner's pid."""
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            owner = _read_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise StartupError(f"cannot lock data dir {self.data_dir}: {err}") from None
            who = f"pid {owner}" if owner else "another process"
            raise StartupError(
                f"data dir {self.data_dir} is in use by another meshlet agent ({who}); "
                "stop that agent or give this one its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (also safe when never taken). The file stays: removing
        it could let a third agent lock a new file while a second holds the old."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def check_ports(ports: Iterable[tuple[str, str, int]]) -> None:
    """``(what, host, port)``: raise ``StartupError`` for the first that cannot
    be bound. Port 0 (any free port) and negative ports (off) are skipped."""
    for what, host, port in ports:
        if port <= 0:
            continue
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as err:
            raise StartupError(f"{what} host {host!r} does not resolve: {err}") from None
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                raise StartupError(port_in_use(what, host, port, err.strerror or str(err))) \
                    from None


def port_in_use(what: str, host: str, port: int, why: str) -> str:
    return (f"cannot listen on {what} port {host or '*'}:{port}: {why} "
            "(another agent or program holds it; choose another port or stop it)")
