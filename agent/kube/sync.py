"""The watchers' event handlers: resources in, vmodels and models out.

Every handler is idempotent (an event may come twice, a list repeats what a
watch said) and runs under one lock, so events of different kinds about one
name never interleave. Every node indexes every resource (``agent.kube.index``),
but only the name's owner (``agent.kube.ownership``) writes to the registry;
the others receive its writes by gossip.

What a resource does to the registry, as ModelMesh-serving did it:

- valid spec: ``vmodels.set(name, <derived model id>, spec=..., auto_delete=True)``.
  A new vmodel points at its model at once (loaded on the first request); a
  changed spec registers the new model and the vmodel moves once that has
  loaded (``agent.vmodels``), and the old model is unregistered then.
- invalid spec: nothing changes; the vmodel keeps serving what it served, and
  the status says InvalidSpec naming the field.
- deleted (or no longer meshlet's): the vmodel is deleted with its model; a
  resource waiting for the name takes it over.
- gone while the agent was not watching: the next list does not show it, and
  it is handled as deleted; once every watcher has listed, vmodels this
  integration made whose resource no longer exists are deleted too.
- a name two resources use: the older holds it (``agent.kube.index``); when
  the holder changes, the vmodel switches to the new holder's model at once
  (``force``: the other resource's model is no older version to keep serving).

When this node comes to own names (a member left, or it has just settled),
it finishes what their previous owner may have left undone: a transition is
resumed here; a registration missing from the registry is made from the
object, read again (one GET each, or one list again when there are many).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from agent.errors import AlreadyExists, InvalidRequest, MeshletError, PackageMissing
from agent.kube.index import Claim, Index, conflict, older
from agent.kube.kinds import Kind, meta_of
from agent.kube.ownership import Ownership
from agent.kube.status import Problem, digest, ready_of
from agent.kube.translate import Buckets, Entry, Invalid
from agent.registry.store import ModelRegistry
from agent.vmodels import VModels

log = logging.getLogger(__name__)

OWNER = "kube"  # the vmodel owner of every vmodel a resource makes

Fetch = Callable[[Kind, str, str], Awaitable["dict[str, Any] | None"]]
"""``fetch(kind, namespace, name)``: the object as it is now, or None."""

REFETCH_MAX = 100  # more objects to read again than this: list everything again instead
YIELD_EVERY = 16  # objects handled between yields to the loop (registrations write SQLite)


class ResourceSync:
    def __init__(
        self, index: Index, ownership: Ownership, vmodels: VModels, registry: ModelRegistry,
        buckets: Buckets, fetch: Fetch, mark: Callable[[str], None],
        relist: Callable[[], None] = lambda: None,
    ) -> None:
        """``fetch`` reads one object again; ``relist()`` has every watcher list again."""
        self.index = index
        self.ownership = ownership
        self._vmodels = vmodels
        self._registry = registry
        self._buckets = buckets
        self._fetch = fetch
        self._mark = mark
        self._relist = relist
        self._lock = asyncio.Lock()
        self._epoch = 0
        self._pending_lists: set[tuple[str, str]] = set()  # watchers yet to list once
        self.synced = asyncio.Event()  # every watcher has listed once

    def expect(self, scopes: Iterable[tuple[Kind, str]]) -> None:
        """The (kind, namespace) scopes whose first lists must all complete
        before orphaned vmodels are collected."""
        self._pending_lists = {(k.name, ns) for k, ns in scopes}

    # --- what the watchers call ------------------------------------------------------

    def begin_list(self) -> int:
        """A list starts: the epoch its items carry."""
        self._epoch += 1
        return self._epoch

    async def upsert_many(self, kind: Kind, objects: Iterable[Mapping[str, Any]],
                          epoch: int = 0) -> None:
        async with self._lock:
            for i, obj in enumerate(objects, 1):
                await self._guarded(self._upsert(kind, obj, epoch), kind, obj)
                if i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a page is hundreds: let requests in between

    async def upsert(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        async with self._lock:
            await self._guarded(self._upsert(kind, obj, 0), kind, obj)

    async def delete(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        meta = meta_of(obj)
        if meta is None:
            return
        async with self._lock:
            await self._guarded(self._remove(kind, meta.namespace, meta.name, meta.uid), kind, obj)

    @staticmethod
    async def _guarded(handler: Awaitable[None], kind: Kind, obj: Mapping[str, Any]) -> None:
        """Run one handler; a bug it hits is logged, and the watch goes on."""
        try:
            await handler
        except Exception:
            meta = obj.get("metadata")
            name = meta.get("name") if isinstance(meta, Mapping) else "?"
            log.exception("kube: handling %s %s failed", kind.name, name)

    async def end_list(self, kind: Kind, namespace: str, epoch: int) -> None:
        """A list is complete: what it did not show is gone."""
        async with self._lock:
            gone = [c for c in self.index.claims()
                    if c.kind is kind and (not namespace or c.namespace == namespace)
                    and c.epoch != epoch]
            for claim in gone:
                log.info("%s %s/%s is gone (not in the list)", kind.name, claim.namespace,
                         claim.name)
                await self._remove(kind, claim.namespace, claim.name, claim.uid)
            self._pending_lists.discard((kind.name, namespace))
            if not self._pending_lists and not self.synced.is_set():
                self.synced.set()
                await self._collect_orphans()

    async def members_changed(self) -> None:
        """Re-read the member list; take up the names this node now owns."""
        added, removed = self.ownership.refresh()
        if not added and not removed:
            return
        async with self._lock:
            gained: list[Claim] = []
            for i, claim in enumerate(list(self.index.winners.values()), 1):
                if i % (YIELD_EVERY * 64) == 0:
                    await asyncio.sleep(0)  # a hash per name and member: let requests in
                was_mine = claim.owner == self.ownership.self_id
                claim.owner, claim.score = self.ownership.reassign(
                    claim.name, claim.owner, claim.score, added, removed)
                if claim.owner == self.ownership.self_id and not was_mine:
                    gained.append(claim)
            for loser in self.index.losers.values():
                holder = self.index.winners.get(loser.name)
                loser.owner, loser.score = (
                    (holder.owner, holder.score) if holder else self.ownership.owner_of(loser.name))
            log.info("cluster members changed (+%d, -%d): this node now acts for %d more "
                     "resources", len(added), len(removed), len(gained))
            unfinished = [c for c in gained if not self._finished(c)]
            for claim in gained:
                self._mark(claim.name)
            if len(unfinished) > REFETCH_MAX:  # a fresh cluster: one list beats many gets
                for claim in unfinished:
                    claim.rehandle = True  # the list's object, though not newer
                self._relist()
            else:
                for claim in unfinished:
                    await self._take_over(claim)
            if self.synced.is_set():
                await self._collect_orphans()  # those of names this node now owns

    # --- handlers ----------------------------------------------------------------------

    async def _upsert(self, kind: Kind, obj: Mapping[str, Any], epoch: int,
                      force: bool = False) -> None:
        """``force``: the claim takes a name another resource held; its model
        serves at once (the other resource's model is not an older version of
        it to keep serving while it loads)."""
        meta = meta_of(obj)
        if meta is None:
            log.warning("%s without a name or uid ignored", kind.name)
            return
        if meta.deleting:
            await self._remove(kind, meta.namespace, meta.name, meta.uid)
            return
        claim = self.index.find(kind, meta.namespace, meta.name)
        if (claim is not None and claim.uid == meta.uid and not claim.rehandle
                and claim.resource_version == meta.resource_version):
            claim.epoch = epoch or claim.epoch
            return  # this very version again
        result = kind.translate(obj, self._buckets)
        if result is None:
            await self._remove(kind, meta.namespace, meta.name, None)
            return
        if claim is None:
            claim = Claim(kind, meta.namespace, meta.name, meta.uid, meta.created)
        claim.uid, claim.created, claim.rehandle = meta.uid, meta.created, False
        claim.resource_version, claim.generation = meta.resource_version, meta.generation
        claim.epoch = epoch or claim.epoch
        status = obj.get("status")
        if isinstance(status, Mapping):
            claim.digest = digest(status, kind.status_keys)
            claim.ready, claim.since = ready_of(status)
        if isinstance(result, Invalid):
            claim.model_id, claim.problem = "", Problem(result.reason, str(result))
        else:
            claim.model_id, claim.problem = result.spec.model_id, None
        held = self._hold_name(claim)
        if held is None:
            self._mark(claim.name)
            return
        if isinstance(result, Entry) and claim.owner == self.ownership.self_id:
            await self._apply(claim, result, force=force or held)
        self._mark(claim.name)

    def _hold_name(self, claim: Claim) -> bool | None:
        """Settle who holds the claim's name: None when another does; else
        whether the claim took it from another resource."""
        holder = self.index.winners.get(claim.name)
        if holder is claim:
            return False
        if holder is None or older(claim, holder):
            self.index.losers.pop(claim.loser_key, None)
            if holder is None:
                claim.owner, claim.score = self.ownership.owner_of(claim.name)
            else:
                holder.problem = conflict(holder, claim)
                self.index.losers[holder.loser_key] = holder
                claim.owner, claim.score = holder.owner, holder.score
                log.warning("%s %s/%s takes the name %r from the newer %s %s/%s", claim.kind.name,
                            claim.namespace, claim.name, claim.name, holder.kind.name,
                            holder.namespace, holder.name)
            self.index.winners[claim.name] = claim
            return holder is not None
        claim.problem = conflict(claim, holder)
        claim.owner, claim.score = holder.owner, holder.score
        if claim.loser_key not in self.index.losers:
            log.warning("%s %s/%s: %s", claim.kind.name, claim.namespace, claim.name,
                        claim.problem.message)
        self.index.losers[claim.loser_key] = claim
        return None

    async def _apply(self, claim: Claim, entry: Entry, force: bool = False) -> None:
        """Point the vmodel at the entry's model (this node owns the name)."""
        spec = entry.spec
        current = self._registry.get_vmodel(entry.vmodel_id)
        if (current is not None and current.active == current.target == spec.model_id
                and self._registry.get(spec.model_id) == spec):
            return
        try:
            await self._vmodels.set(entry.vmodel_id, spec.model_id, owner=OWNER, spec=spec,
                                    auto_delete=True, force=force)
        except AlreadyExists as err:
            claim.problem = Problem("NameConflict", f"{err.message} (made through the ModelMesh "
                                    "API, not by a resource)")
        except PackageMissing as err:
            claim.problem = Problem("NoSupportingRuntime", err.message)
        except InvalidRequest as err:
            claim.problem = Problem("InvalidSpec", f"spec: {err.message}")
        except MeshletError as err:
            claim.problem = Problem("InvalidSpec", err.message)
            log.warning("%s %s/%s could not be registered: %s", claim.kind.name,
                        claim.namespace, claim.name, err.message)

    async def _remove(self, kind: Kind, namespace: str, name: str, uid: str | None) -> None:
        claim = self.index.find(kind, namespace, name)
        if claim is None or (uid is not None and claim.uid != uid):
            return
        self._mark(name)
        if self.index.winners.get(name) is not claim:
            del self.index.losers[claim.loser_key]
            return
        del self.index.winners[name]
        successor = self.index.successor(name)
        if successor is not None:
            del self.index.losers[successor.loser_key]
            successor.problem = None
            self.index.winners[name] = successor
            log.info("%s %s/%s takes the name %r over", successor.kind.name,
                     successor.namespace, name, name)
        if claim.owner != self.ownership.self_id:
            return
        if successor is not None:
            obj = await self._fetch(successor.kind, successor.namespace, name)
            if obj is not None:
                successor.rehandle = True  # the object is the version it has seen
                await self._upsert(successor.kind, obj, successor.epoch, force=True)
                return
        try:
            await self._vmodels.delete(name, owner=OWNER)
        except MeshletError as err:  # the vmodel is someone else's
            log.info("vmodel %s not deleted: %s", name, err.message)

    def _finished(self, claim: Claim) -> bool:
        """The registry is as ``claim`` asks (true of almost every name a node
        takes over: its previous owner wrote them, and gossip brought them)."""
        if claim.problem is not None or not claim.model_id:
            return True
        current = self._registry.get_vmodel(claim.name)
        return (current is not None and current.target == claim.model_id
                and not current.transitioning
                and self._registry.get(claim.model_id) is not None)

    async def _take_over(self, claim: Claim) -> None:
        """This node now acts for ``claim``'s name: finish what its previous
        owner left undone (it may have died mid-way)."""
        current = self._registry.get_vmodel(claim.name)
        if (current is not None and current.target == claim.model_id
                and self._registry.get(claim.model_id) is not None):
            try:  # a transition under way: go on with it here
                await self._vmodels.set(claim.name, claim.model_id, owner=OWNER)
            except MeshletError as err:
                log.info("vmodel %s: transition not resumed: %s", claim.name, err.message)
            return
        obj = await self._fetch(claim.kind, claim.namespace, claim.name)
        if obj is not None:
            claim.rehandle = True
            await self._upsert(claim.kind, obj, claim.epoch)

    async def _collect_orphans(self) -> None:
        """Delete the vmodels this integration made whose resource is gone
        (deleted while no agent watched)."""
        orphans = [v.vmodel_id for v in self._registry.iter_vmodels()
                   if v.owner == OWNER and v.vmodel_id not in self.index.winners
                   and self.ownership.owner_of(v.vmodel_id)[0] == self.ownership.self_id]
        for vmodel_id in orphans:
            log.info("vmodel %s: its resource is gone; deleting it", vmodel_id)
            try:
                await self._vmodels.delete(vmodel_id, owner=OWNER)
            except MeshletError as err:
                log.info("vmodel %s not deleted: %s", vmodel_id, err.message)
