"""The puller interface and what every puller shares: the result, the byte
budget, writing one file to disk, and removing a partial artifact on failure."""

from __future__ import annotations

import abc
import contextlib
import errno
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agent.storage.errors import ArtifactTooLarge, DiskFull, UnsafeArtifact

log = logging.getLogger(__name__)

# Errors that mean "the disk is full" rather than "this pull is broken".
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Query parameters whose values are credentials (presigned URLs, tokens).
_SECRET_QUERY_HINTS = ("signature", "token", "credential", "secret", "password", "key")


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull wrote. ``path`` is the artifact: a file, or a directory
    (``dest`` itself) holding the files of a directory/prefix."""

    path: Path
    bytes_written: int
    file_count: int
    is_dir: bool


class Puller(abc.ABC):
    """Fetches one artifact named by a URI into a local directory.

    One implementation per URI scheme, registered by name in
    ``agent.storage.pull.PULLERS``. Contract for implementations:

    - ``dest`` is a fresh directory the caller owns (created if missing); a
      single file is written as ``dest / <its name>``, a directory or prefix
      as files under ``dest``.
    - Never more than ``max_bytes`` bytes in all: ``ArtifactTooLarge``.
    - On any failure (and on cancellation) nothing the puller wrote is left
      under ``dest``.
    - Failures are ``agent.errors`` classes: ``InvalidStorageUri`` for a URI
      it refuses, ``LoadFailed`` naming the URI and the storage's answer
      (never a secret), ``CapacityExhausted`` for size and disk.
    """

    #: URI schemes this puller serves ("" means a plain absolute path).
    schemes: tuple[str, ...] = ()

    @abc.abstractmethod
    async def pull(
        self, uri: str, dest: Path, max_bytes: int, *, storage_key: str | None = None
    ) -> PullResult:
        """Write the artifact at ``uri`` under ``dest``; see the class docstring."""


def display_uri(uri: str) -> str:
    """``uri`` fit for a message or a log: no password, no signature values."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _is_secret_param(k) else v) for k, v in pairs]
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _is_secret_param(name: str) -> bool:
    return any(hint in name.lower() for hint in _SECRET_QUERY_HINTS)


class ByteBudget:
    """Counts bytes written across all files of one pull against its limit."""

    def __init__(self, uri: str, max_bytes: int) -> None:
        self.uri = uri
        self.max_bytes = max_bytes
        self.used = 0

    def check_total(self, total: int) -> None:
        """Refuse up front when the announced size is already over the limit."""
        if total > self.max_bytes:
            raise ArtifactTooLarge(
                f"artifact {display_uri(self.uri)} is {total} bytes, "
                f"over the limit of {self.max_bytes} bytes"
            )

    def add(self, n: int) -> None:
        self.used += n
        if self.used > self.max_bytes:
            raise ArtifactTooLarge(
                f"artifact {display_uri(self.uri)} is over the limit of {self.max_bytes} bytes "
                f"(stopped after {self.used} bytes)"
            )


def safe_relpath(uri: str, name: str) -> Path:
    """A relative path from a remote name (object key suffix, URL path) that
    stays inside the destination; anything else is ``UnsafeArtifact``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or "\\" in p or "\x00" in p for p in parts):
        raise UnsafeArtifact(
            f"artifact {display_uri(uri)}: entry {name!r} would be written outside the artifact"
        )
    return Path(*parts)


def open_new(path: Path) -> BinaryIO:
    """Create ``path`` (and its parents) for writing; it must not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "xb")


def disk_error(uri: str, path: Path, exc: OSError) -> Exception:
    """Translate an OSError from writing ``path``: ENOSPC becomes ``DiskFull``."""
    if exc.errno in _DISK_FULL_ERRNOS:
        return DiskFull(
            f"no space left on device under {exc.filename or path} while pulling "
            f"{display_uri(uri)}; "
            "the partial artifact was removed"
        )
    return exc


@contextlib.asynccontextmanager
async def removed_on_failure(uri: str, dest: Path) -> AsyncIterator[Path]:
    """Create ``dest`` if needed; on any exception remove every entry that
    appeared in it (and ``dest`` itself if this created it), then re-raise.
    An ENOSPC ``OSError`` is re-raised as ``DiskFull``."""
    created, before = _prepare(dest)
    try:
        yield dest
    except BaseException as exc:
        _remove_new_entries(dest, before, created)
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            raise disk_error(uri, dest, exc) from exc
        raise


def _prepare(dest: Path) -> tuple[bool, set[str]]:
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    return created, set(os.listdir(dest))


def _remove_new_entries(dest: Path, before: set[str], created: bool) -> None:
    try:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
            return
        for name in set(os.listdir(dest)) - before:
            entry = dest / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    except OSError:
        log.exception("could not remove the partial artifact under %s", dest)
