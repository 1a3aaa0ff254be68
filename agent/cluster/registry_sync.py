"""The registry, replicated: SQLite rows on one side, the gossiped ``Replica`` on the other.

* **Local writes** (any API, any door) reach ``ModelRegistry.on_write``; each
  becomes a replica entry stamped by the hybrid clock, is stored in the
  ``repl`` table and handed to ``publish`` (gossip) to spread.
* **Remote entries** that changed the replica are stored the same way and made
  real: a model put or deleted in the registry without notifying (so it is not
  echoed), and unloaded here when its spec changed or it was deleted
  (``apply_model``); vmodels likewise.
* **At start** the stored entries are loaded into the replica (their stamps are
  observed, so this node's next write is newer than any it wrote before a
  restart), then the registry is reconciled with it: the SQLite rows are this
  node's truth, so a registration missing from the replica is stamped now and
  a replicated model missing from the registry (a crash between the two
  writes) is deleted. A node that comes back after others deleted a model
  holds it with an old stamp; the peers' newer tombstone deletes it at the
  first exchange, so a deleted model stays deleted.
* Tombstones are collected after ``Replica``'s TTL (7 days) by ``gc``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable

from agent.cluster.hlc import Timestamp
from agent.cluster.replica import Entry, Replica, canonical_json
from agent.registry.spec import ModelSpec
from agent.registry.store import (
    MODEL_PREFIX,
    VMODEL_PREFIX,
    ModelRegistry,
    VModel,
    Write,
    spec_from_value,
)

log = logging.getLogger(__name__)

ModelApplier = Callable[[str, ModelSpec | None, bool], Awaitable[None]]
"""``apply(model_id, spec or None for a delete, auto_delete)``: a peer's registry write."""


class RegistrySync:
    def __init__(
        self, registry: ModelRegistry, replica: Replica, apply_model: ModelApplier
    ) -> None:
        self._registry = registry
        self.replica = replica
        self._apply_model = apply_model
        self.publish: Callable[[list[Entry]], None] = lambda entries: None

    def load(self) -> list[Entry]:
        """Load the stored entries, reconcile with the registry, start listening
        for local writes. Returns the entries written by the reconciliation
        (give them to ``publish`` once gossip runs)."""
        stored = [
            Entry(key, json.loads(value) if value else None, Timestamp.decode(stamp))
            for key, stamp, value in self._registry.repl_rows()
        ]
        self.replica.apply(stored)
        current = dict(self._registry.iter_values())
        written: list[Entry] = []
        for key, value in current.items():
            if value is not None and self.replica.get(key) != value:
                written.append(self.replica.put(key, value))
        live = [key for key, _ in self.replica.items() if key not in current]
        written += [self.replica.delete(key) for key in live]
        self._store(written)
        self._registry.on_write(self._local)
        if written:
            log.info("registry: %d entries stamped at start (%d held)", len(written),
                     len(self.replica))
        return written

    def _local(self, writes: list[Write]) -> None:
        entries = [
            self.replica.put(key, value) if value is not None else self.replica.delete(key)
            for key, value in writes
        ]
        self._store(entries)
        self.publish(entries)

    async def apply(self, changed: list[Entry]) -> None:
        """Make entries from peers (already in the replica) real here."""
        self._store(changed)
        for entry in changed:
            try:
                await self._apply_one(entry)
            except ValueError as e:
                log.warning("registry: ignored a malformed entry %s: %s", entry.key, e)

    async def _apply_one(self, entry: Entry) -> None:
        key, value = entry.key, entry.value
        if key.startswith(MODEL_PREFIX):
            model_id = key[len(MODEL_PREFIX):]
            if value is None:
                await self._apply_model(model_id, None, False)
            else:
                spec, auto_delete = spec_from_value(model_id, value)
                await self._apply_model(model_id, spec, auto_delete)
        elif key.startswith(VMODEL_PREFIX):
            vmodel_id = key[len(VMODEL_PREFIX):]
            if value is None:
                self._registry.delete_vmodel(vmodel_id, notify=False)
            else:
                self._registry.put_vmodel(VModel(
                    vmodel_id, str(value["active"]), str(value["target"]),
                    str(value.get("owner", "")),
                ), notify=False)

    def gc(self) -> int:
        """Collect expired tombstones (in memory and on disk)."""
        tombstones = [e.key for e in self.replica.entries() if e.deleted]
        collected = self.replica.gc()
        if collected:
            self._registry.delete_repl(k for k in tombstones if self.replica.entry(k) is None)
        return collected

    def _store(self, entries: Iterable[Entry]) -> None:
        rows: list[tuple[str, str, str | None]] = []
        gone: list[str] = []
        for entry in entries:
            held = self.replica.entry(entry.key)
            if held is None:
                gone.append(entry.key)  # an expired tombstone: deleted, not kept
            elif held is entry:
                value = canonical_json(entry.value) if entry.value is not None else None
                rows.append((entry.key, entry.stamp.encode(), value))
        if rows:
            self._registry.put_repl(rows)
        if gone:
            self._registry.delete_repl(gone)
