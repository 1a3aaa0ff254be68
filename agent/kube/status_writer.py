"""The one status writer: each resource's status, written by its owner only,
at most once per ``status_interval_s``, and only when it changed.

Anything that may change a resource's status marks its name (a watch event,
a registry write, a load or unload here, a copy appearing or going on a
peer, a load failure, a change of owner). Every ``status_interval_s`` the
writer looks at the marked names this node owns, computes each status
(``agent.kube.status``) from what the cluster knows now, and patches those
whose digest differs from the status the object carries. So a model that
loads, serves and is evicted within one interval costs at most one write,
and a status is never written twice with the same content.

Failures: 409 (the object changed since this node saw it; the patch carries
its resourceVersion, so a status computed for an older spec is never
written) retries that name after a backoff, once the watch has brought the
new version; 429 and 5xx pause every write for the server's ``Retry-After``
(or the backoff, doubling up to ``backoff_max_s``); 404 drops it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.api.mmesh import model_status_info
from agent.kube.api import ApiError, ApiUnreachable, KubeApi
from agent.kube.index import Claim, Index
from agent.kube.ownership import Ownership
from agent.kube.status import NAME_CONFLICT, Copies, Observed, digest, ready_of
from agent.kube.translate import vmodel_of
from agent.models import ModelService, ModelState, ModelStatus
from agent.proto import model_mesh_pb2 as mm
from agent.vmodels import VModels, VModelState

log = logging.getLogger(__name__)

WRITERS = 4  # status patches in flight at once
BATCH = 16  # names looked at (and their statuses written) between yields to the loop


class Observer:
    """Gathers ``Observed`` for a claim from the registry, this node's models
    and the copies peers hold."""

    def __init__(
        self, models: ModelService, vmodels: VModels, location: Callable[[], str],
        peer_copies: Callable[[str], Sequence[str]],
        failures: Callable[[], Mapping[str, tuple[float, str]]] = dict,
    ) -> None:
        self._models = models
        self._vmodels = vmodels
        self._location = location
        self._peer_copies = peer_copies
        self._failures = failures

    def observe(self, claim: Claim, now: float) -> Observed:
        vstatus = self._vmodels.status(claim.name)
        conflict = claim.problem is not None and claim.problem.reason == NAME_CONFLICT
        active = target = None
        if vstatus.state is not VModelState.NOT_FOUND and not conflict:
            active = self.copies(vstatus.active)
            if vstatus.target != vstatus.active:
                target = self.copies(vstatus.target)
        return Observed(
            generation=claim.generation, vmodel=vstatus.state.name, active=active,
            target=target, problem=claim.problem, node=self._location(), now=now,
            ready_before=claim.ready, ready_since=claim.since,
        )

    def copies(self, model_id: str) -> Copies:
        """One model cluster-wide, counted as ModelMesh's getModelStatus counts.

        A failed model being loaded again (a vmodel's retry, or a new request)
        stays failed until a load succeeds: a status that went Loading and back
        to FailedToLoad with every retry would be written with every retry."""
        here = self._models.status(model_id)
        failure = self._failures().get(model_id)
        if here.state is ModelState.LOADING and failure is not None:
            here = ModelStatus(model_id, ModelState.LOADING_FAILED, errors=[failure[1]],
                               spec=here.spec, since=failure[0])
        info = model_status_info(here, self._location(), self._peer_copies(model_id))
        counts = {mm.ModelStatusInfo.LOADED: 0, mm.ModelStatusInfo.LOADING: 0,
                  mm.ModelStatusInfo.LOADING_FAILED: 0}
        for copy in info.modelCopyInfos:
            if copy.copyStatus in counts:
                counts[copy.copyStatus] += 1
        failed = here.state is ModelState.LOADING_FAILED
        return Copies(
            model_id=model_id,
            state=mm.ModelStatusInfo.ModelStatus.Name(info.status),
            loaded=counts[mm.ModelStatusInfo.LOADED],
            loading=counts[mm.ModelStatusInfo.LOADING],
            failed=counts[mm.ModelStatusInfo.LOADING_FAILED],
            failure=here.errors[0] if failed and here.errors else "",
            failure_location=self._location() if failed else "",
            failure_time=here.since if failed else 0.0,
        )


class StatusWriter:
    def __init__(
        self, api: KubeApi, index: Index, ownership: Ownership, observer: Observer,
        interval_s: float, backoff_initial_s: float, backoff_max_s: float,
        failures: Callable[[], Mapping[str, tuple[float, str]]] = dict,
        before_flush: Callable[[], Any] | None = None,
    ) -> None:
        """``failures()``: this node's load failures (model id -> (when, why)),
        looked at every interval for new ones; ``before_flush``: a coroutine
        function run first in every round (the member list check)."""
        self._api = api
        self._index = index
        self._ownership = ownership
        self._observer = observer
        self.interval_s = interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._failures = failures
        self._before_flush = before_flush
        self._dirty: set[str] = set()
        self._retry: dict[str, tuple[float, float]] = {}  # name -> (not before, backoff)
        self._paused_until = 0.0
        self._backoff_s = backoff_initial_s
        self._failures_seen = 0.0
        self._executor = ThreadPoolExecutor(WRITERS, thread_name_prefix="kube-status")
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # rounds done (each looks at every marked name)
        self.writes = 0
        self.conflicts = 0

    def mark(self, name: str) -> None:
        """``name``'s status may have changed."""
        if name:
            self._dirty.add(name)

    def model_changed(self, model_id: str) -> None:
        """A model's state changed (loaded, unloaded, a copy on a peer)."""
        name = vmodel_of(model_id)
        if name in self._index.winners:
            self._dirty.add(name)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kube-status")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)  # the coalescing period
            try:
                if self._before_flush is not None:
                    await self._before_flush()
                await self.flush()
            except Exception:
                log.exception("kube: status round failed")
            self.rounds += 1

    async def flush(self) -> int:
        """Write the statuses that changed; returns how many were written. Works
        through the marked names a batch at a time, yielding to the loop between
        batches (a first start marks every name)."""
        loop = asyncio.get_running_loop()
        self._note_failures()
        if loop.time() < self._paused_until:
            return 0
        names, self._dirty = list(self._dirty), set()
        written = 0
        for start in range(0, len(names), BATCH):
            if loop.time() < self._paused_until:
                self._dirty.update(names[start:])
                break
            written += await self._write_batch(names[start:start + BATCH])
            await asyncio.sleep(0)  # let requests in between batches
        return written

    async def _write_batch(self, names: list[str]) -> int:
        loop = asyncio.get_running_loop()
        now, wall = loop.time(), time.time()
        writes: list[tuple[Claim, dict[str, Any], int]] = []
        for name in names:
            retry = self._retry.get(name)
            if retry is not None and now < retry[0]:
                self._dirty.add(name)
                continue
            for claim in self._index.named(name):
                if claim.owner != self._ownership.self_id:
                    continue
                if claim.rehandle:  # its object is about to be handled again
                    self._dirty.add(name)
                    continue
                status = claim.kind.status(self._observer.observe(claim, wall))
                d = digest(status, claim.kind.status_keys)
                if d != claim.digest:
                    writes.append((claim, status, d))
        limit = asyncio.Semaphore(WRITERS)

        async def write(claim: Claim, status: dict[str, Any], d: int) -> bool:
            async with limit:
                if loop.time() < self._paused_until:
                    self._dirty.add(claim.name)
                    return False
                return await self._write(claim, status, d)

        return sum(await asyncio.gather(*(write(*w) for w in writes)))

    async def _write(self, claim: Claim, status: dict[str, Any], d: int) -> bool:
        loop = asyncio.get_running_loop()
        patch = {"metadata": {"resourceVersion": claim.resource_version}, "status": status}
        try:
            obj = await loop.run_in_executor(
                self._executor, self._api.patch_status, claim.kind, claim.namespace,
                claim.name, patch,
            )
        except ApiError as err:
            return self._failed(claim, err.code, err.retry_after_s, str(err))
        except ApiUnreachable as err:
            return self._failed(claim, 0, 0.0, str(err))
        self.writes += 1
        self._backoff_s = self._backoff_initial_s
        self._retry.pop(claim.name, None)
        meta = obj.get("metadata")
        if isinstance(meta, Mapping) and meta.get("uid") == claim.uid:
            claim.resource_version = str(meta.get("resourceVersion") or claim.resource_version)
        written = obj.get("status")
        claim.digest = d
        claim.ready, claim.since = ready_of(written if isinstance(written, Mapping) else status)
        return True

    def _failed(self, claim: Claim, code: int, retry_after_s: float, why: str) -> bool:
        now = asyncio.get_running_loop().time()
        if code == 404:
            return False  # deleted meanwhile; the watch says so
        self._dirty.add(claim.name)
        if code == 409:
            self.conflicts += 1
            _, backoff = self._retry.get(claim.name, (0.0, self._backoff_initial_s / 2))
            backoff = min(backoff * 2, self._backoff_max_s)
            self._retry[claim.name] = (now + backoff, backoff)
            log.debug("status of %s/%s: conflict, again in %.1f s", claim.namespace,
                      claim.name, backoff)
            return False
        wait = max(retry_after_s, self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
        if now + wait > self._paused_until:
            self._paused_until = now + wait
            log.warning("kube: status writes paused for %.1f s: %s", wait, why)
        return False

    def _note_failures(self) -> None:
        """Mark the models whose load failed here since the last round."""
        latest = self._failures_seen
        for model_id, (when, _) in list(self._failures().items()):
            if when > self._failures_seen:
                self.model_changed(model_id)
                latest = max(latest, when)
        self._failures_seen = latest
