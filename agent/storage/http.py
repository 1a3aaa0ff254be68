"""``http://`` and ``https://``: one file, streamed to disk with aiohttp."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from agent.errors import InvalidStorageUri, LoadFailed
from agent.storage.base import (
    ByteBudget,
    Puller,
    PullResult,
    display_uri,
    open_new,
    removed_on_failure,
    safe_relpath,
)

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1024 * 1024
# Statuses that mean "try again later"; other 4xx are final.
_RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """How the HTTP puller talks to a server. Every value is a setting so tests
    can shrink them."""

    connect_timeout_s: float = 10.0
    """Seconds to open a connection (TCP + TLS)."""
    read_timeout_s: float = 60.0
    """Seconds to wait for the next bytes of a response."""
    max_attempts: int = 4
    """Attempts in all for connection errors, 408/429 and 5xx; 1 = no retry."""
    backoff_initial_s: float = 0.5
    """Wait before the 2nd attempt; doubles every attempt after."""
    backoff_max_s: float = 10.0
    """Longest wait between attempts."""
    max_redirects: int = 10
    """Redirects followed for one attempt before giving up."""
    chunk_bytes: int = _CHUNK_BYTES
    """Bytes read from the socket and written to disk at a time."""

    def backoff_s(self, attempt: int) -> float:
        """Wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1)))


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HttpPuller(Puller):
    """GETs one file. The file is named after the last segment of the URI's
    path (``artifact`` when it has none)."""

    schemes = ("http", "https")

    def __init__(self, options: HttpOptions | None = None) -> None:
        self.options = options or HttpOptions()

    async def pull(
        self, uri: str, dest: Path, max_bytes: int, *, storage_key: str | None = None
    ) -> PullResult:
        parts = urlsplit(uri)
        if parts.scheme.lower() not in self.schemes or not parts.hostname:
            raise InvalidStorageUri(f"storage uri {display_uri(uri)!r} is not an http(s) url")
        last = unquote(parts.path.rstrip("/").rpartition("/")[2]) or "artifact"
        target = dest / safe_relpath(uri, last)
        opts = self.options
        timeout = aiohttp.ClientTimeout(
            total=None, connect=opts.connect_timeout_s, sock_read=opts.read_timeout_s
        )
        async with (
            removed_on_failure(uri, dest),
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
        ):
            for attempt in range(1, opts.max_attempts + 1):
                try:
                    written = await self._attempt(session, uri, target, max_bytes)
                    return PullResult(target, written, 1, is_dir=False)
                except _Retryable as exc:
                    target.unlink(missing_ok=True)
                    if attempt == opts.max_attempts:
                        raise LoadFailed(
                            f"could not pull {display_uri(uri)} after {attempt} attempts: "
                            f"{exc.reason}"
                        ) from None
                    wait_s = opts.backoff_s(attempt)
                    log.warning(
                        "pull %s: attempt %d failed (%s); retrying in %.2f s",
                        display_uri(uri), attempt, exc.reason, wait_s,
                    )
                    await asyncio.sleep(wait_s)  # backoff between attempts
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, session: aiohttp.ClientSession, uri: str, target: Path, max_bytes: int
    ) -> int:
        budget = ByteBudget(uri, max_bytes)
        try:
            async with session.get(
                uri,
                allow_redirects=True,
                max_redirects=self.options.max_redirects,
                headers={"Accept-Encoding": "identity"},
            ) as resp:
                if resp.status >= 500 or resp.status in _RETRY_STATUSES:
                    raise _Retryable(f"HTTP {resp.status} {resp.reason or ''}".rstrip())
                if not 200 <= resp.status < 300:
                    # 4xx, and a 3xx that was not a redirect (304, no Location).
                    raise LoadFailed(
                        f"could not pull {display_uri(uri)}: HTTP {resp.status} "
                        f"{resp.reason or ''}".rstrip()
                    )
                if resp.content_length is not None:
                    budget.check_total(resp.content_length)
                with open_new(target) as out:
                    async for chunk in resp.content.iter_chunked(self.options.chunk_bytes):
                        budget.add(len(chunk))
                        out.write(chunk)
                return budget.used
        except aiohttp.TooManyRedirects as exc:
            raise LoadFailed(
                f"could not pull {display_uri(uri)}: more than {self.options.max_redirects} "
                f"redirects (last {exc.history[-1].url if exc.history else '?'})"
            ) from None
        except aiohttp.InvalidURL as exc:
            raise LoadFailed(f"could not pull {display_uri(uri)}: invalid url {exc}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise _Retryable(f"timed out ({exc or 'no data'})") from exc
