"""The one watcher class: client-go's informer contract for one kind in one
namespace (or all), on a thread of its own that feeds the event loop.

- List, in pages (``continue`` tokens), then watch from the list's
  resourceVersion with ``allowWatchBookmarks``; every event's (and bookmark's)
  resourceVersion is remembered once its handler has run, so a watch that
  ends or drops resumes exactly where it was.
- 410 Gone (an in-band ERROR event, an HTTP 410 when the watch starts, or a
  continue token that expired mid-list) means the version is too old: list
  again. The list's items are handled as any event (idempotently), and what
  it no longer shows is handled as deleted (``ResourceSync.end_list``).
- Any other failure (refused, reset, cut mid-stream, 429, 5xx) is retried
  after a backoff: ``backoff_initial_s``, doubling to ``backoff_max_s``, with
  jitter, and at least the server's ``Retry-After``; it resets once a list
  succeeds or a watch delivers an event. A watch lasts ``watch_timeout_s``
  to twice that (random, as client-go, so agents do not re-watch in step);
  then the next one starts at once.
- Handlers run on the loop (``asyncio.run_coroutine_threadsafe``) and the
  thread waits for each: events are handled in order, one page of a list at
  a time, and a slow handler slows the reading instead of piling events up.

``stop()`` shuts the watch's socket so a blocked read returns at once, and
joins the thread. A list in flight ends within ``request_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from agent.kube.api import ApiError, ApiUnreachable, KubeApi, WatchStream, error_from_status
from agent.kube.kinds import Kind
from agent.kube.sync import ResourceSync

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchSettings:
    page_size: int = 500
    watch_timeout_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    stop_timeout_s: float = 30.0  # longest wait for the thread on stop


class _Stopped(Exception):
    pass


class Watcher:
    def __init__(
        self, api: KubeApi, kind: Kind, namespace: str, sync: ResourceSync,
        settings: WatchSettings, loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._api = api
        self.kind = kind
        self.namespace = namespace  # "": every namespace
        self._sync = sync
        self._settings = settings
        self._loop = loop
        self._stopping = threading.Event()
        self._relist = False  # asked to list again (``relist``)
        self._failing = False  # the last request failed (reported once per run of failures)
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self.resource_version = ""  # the version handled last ("" before the first list)
        self.lists = 0  # completed lists
        self.events = 0  # watch events handled (bookmarks included)
        self.failures = 0  # failed requests or streams, 410s excluded

    @property
    def scope(self) -> str:
        return f"{self.kind.plural} in {self.namespace or 'all namespaces'}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, daemon=True,
            name=f"kube-watch-{self.kind.plural}-{self.namespace or 'all'}",
        )
        self._thread.start()

    def relist(self) -> None:
        """List again (from any thread): the watch in progress is cut short."""
        self._relist = True
        stream = self._stream
        if stream is not None:
            stream.close()

    async def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, self._settings.stop_timeout_s)
            if thread.is_alive():
                log.warning("kube: watcher of %s did not stop within %.0f s", self.scope,
                            self._settings.stop_timeout_s)
            self._thread = None

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        s = self._settings
        backoff = s.backoff_initial_s
        while not self._stopping.is_set():
            wait = 0.0
            if self._relist:
                self._relist = False
                self.resource_version = ""
            listed = False
            try:
                if not self.resource_version:
                    self._list()
                    listed = True
                    backoff = s.backoff_initial_s
                started = time.monotonic()
                delivered = self._watch()
                if delivered:
                    backoff = s.backoff_initial_s
                elif time.monotonic() - started < s.backoff_initial_s:
                    wait = backoff  # ended at once with nothing: do not spin
            except _Stopped:
                return
            except ApiError as err:
                if err.gone:
                    log.info("kube: %s: version %s is too old (%s); listing again", self.scope,
                             self.resource_version or "-", err.message or err.reason)
                    self.resource_version = ""
                    if not listed:
                        continue
                    wait = backoff  # too old just after a list: a server in trouble
                else:
                    self.failures += 1
                    wait = max(backoff, err.retry_after_s)
                    self._report(str(err), wait)
            except ApiUnreachable as err:
                if self._stopping.is_set():
                    return
                if self._relist:
                    continue  # the watch was cut to list again
                self.failures += 1
                wait = backoff
                self._report(str(err), wait)
            except Exception:
                if self._stopping.is_set():
                    return
                self.failures += 1
                wait = backoff
                log.exception("kube: watcher of %s failed", self.scope)
            if wait:
                self._stopping.wait(wait * random.uniform(1.0, 1.25))  # backoff, with jitter
                backoff = min(backoff * 2, s.backoff_max_s)

    def _report(self, why: str, wait: float) -> None:
        """A failure: a warning for the first of a run, then quieter."""
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "kube: %s: %s; retrying in %.1f s (meshlet serves on from its "
                "registry meanwhile)", self.scope, why, wait)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("kube: watching %s again (from version %s)", self.scope,
                     self.resource_version)

    def _list(self) -> None:
        epoch = self._call(self._begin())
        token = ""
        while True:
            if self._stopping.is_set():
                raise _Stopped
            page = self._api.list_page(self.kind, self.namespace, self._settings.page_size, token)
            items = page.get("items") or []
            if isinstance(items, list) and items:
                self._call(self._sync.upsert_many(self.kind, items, epoch))
            meta = page.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            token = str(meta.get("continue") or "")
            if not token:
                break
        self._call(self._sync.end_list(self.kind, self.namespace, epoch))
        self.resource_version = str(meta.get("resourceVersion") or "")
        self.lists += 1
        if not self.resource_version:  # a server that gives none: watch from "now"
            self.resource_version = "0"

    async def _begin(self) -> int:
        return self._sync.begin_list()

    def _watch(self) -> int:
        """One watch request, to its end; the events it delivered."""
        timeout = int(self._settings.watch_timeout_s * random.uniform(1.0, 2.0))
        stream = self._api.watch(self.kind, self.namespace, self.resource_version, max(timeout, 1))
        self._stream = stream
        if self._stopping.is_set() or self._relist:
            stream.close()
        self._recovered()
        delivered = 0
        try:
            for event in stream:
                kind, obj = event.get("type"), event.get("object")
                if kind == "ERROR":
                    raise error_from_status(obj if isinstance(obj, dict) else {})
                if not isinstance(obj, dict):
                    continue
                if kind in ("ADDED", "MODIFIED"):
                    self._call(self._sync.upsert(self.kind, obj))
                elif kind == "DELETED":
                    self._call(self._sync.delete(self.kind, obj))
                meta = obj.get("metadata")
                version = meta.get("resourceVersion") if isinstance(meta, dict) else None
                if version:
                    self.resource_version = str(version)
                delivered += 1
                self.events += 1
        finally:
            self._stream = None
            stream.close()
        if self._stopping.is_set():
            raise _Stopped
        return delivered

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a handler on the loop and wait for it."""
        if self._stopping.is_set():
            coro.close()
            raise _Stopped
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
