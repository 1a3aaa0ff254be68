"""The durable registry: model id -> spec, and vmodel aliases, in SQLite.

Durability: WAL journal with ``synchronous=NORMAL``. Every committed write is in
the WAL before the call returns, so an agent killed with SIGKILL loses nothing;
a power loss may lose the last few transactions (``FULL`` would fsync each
commit, ~100x slower for bulk registration). Nothing is cached in memory: one
million registrations cost the agent no RAM, and a point lookup is a B-tree
probe of a few microseconds.

Calls are synchronous and short; bulk calls (``put_many``, ``list_page``) may
run in a worker thread — a lock serialises use of the one connection.

Replication (``agent.cluster.registry_sync``): every write calls the
``on_write`` listeners with ``(key, value)`` pairs (``"model/<id>"`` or
``"vmodel/<id>"``; value ``None`` for a delete) after it commits, unless the
caller passes ``notify=False`` (a write that came from a peer). The ``repl``
table keeps the replicated entries with their hybrid-clock stamps, so a
restarted node resumes with the stamps it had.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from agent.registry.spec import ModelSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id          TEXT PRIMARY KEY,
    uri         TEXT NOT NULL,
    runtime     TEXT NOT NULL,
    model_type  TEXT NOT NULL,
    size_hint   INTEGER NOT NULL DEFAULT 0,
    labels      TEXT NOT NULL DEFAULT '{}',
    auto_delete INTEGER NOT NULL DEFAULT 0,
    storage_key TEXT NOT NULL DEFAULT '',
    gpu         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vmodels (
    id          TEXT PRIMARY KEY,
    active      TEXT NOT NULL,
    target      TEXT NOT NULL,
    owner       TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sizes (
    id          TEXT PRIMARY KEY,
    runtime     TEXT NOT NULL,
    bytes       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS repl (
    key         TEXT PRIMARY KEY,
    stamp       TEXT NOT NULL,
    value       TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vmodels_active ON vmodels(active);
CREATE INDEX IF NOT EXISTS vmodels_target ON vmodels(target);
"""

_MODEL_COLUMNS = "id, uri, runtime, model_type, size_hint, labels, storage_key, gpu"
_INSERT_MODEL = (
    "INSERT OR REPLACE INTO models (id, uri, runtime, model_type, size_hint, labels, "
    "storage_key, gpu, auto_delete) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class PutResult(Enum):
    CREATED = "created"
    REPLACED = "replaced"  # the id existed with a different spec
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class VModel:
    """An alias. ``active`` takes traffic; ``target`` is where it is heading."""

    vmodel_id: str
    active: str
    target: str
    owner: str = ""

    @property
    def transitioning(self) -> bool:
        return self.active != self.target


def _spec(row: tuple[str, str, str, str, int, str, str, int]) -> ModelSpec:
    labels = json.loads(row[5]) if row[5] != "{}" else {}
    return ModelSpec(row[0], row[1], row[2], row[3], row[4], labels, row[6], bool(row[7]))


Write = tuple[str, dict[str, Any] | None]
"""One replicated write: ``(key, value)``; value ``None`` deletes."""

MODEL_PREFIX = "model/"
VMODEL_PREFIX = "vmodel/"


def model_value(spec: ModelSpec, auto_delete: bool = False) -> dict[str, Any]:
    """A registration as the replicated registry carries it."""
    return {
        "uri": spec.uri, "runtime": spec.runtime, "type": spec.model_type,
        "size_hint": spec.size_hint, "labels": dict(spec.labels),
        "storage_key": spec.storage_key, "gpu": spec.gpu, "auto_delete": auto_delete,
    }


def spec_from_value(model_id: str, value: dict[str, Any]) -> tuple[ModelSpec, bool]:
    """``model_value``'s inverse: (spec, auto_delete); ValueError if malformed."""
    try:
        labels = {str(k): str(v) for k, v in dict(value.get("labels") or {}).items()}
        spec = ModelSpec(
            model_id, str(value["uri"]), str(value["runtime"]), str(value["type"]),
            int(value.get("size_hint", 0)), labels, str(value.get("storage_key", "")),
            bool(value.get("gpu", False)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"registry entry for {model_id!r} is malformed: {e!r}") from None
    return spec, bool(value.get("auto_delete", False))


def vmodel_value(vmodel: VModel) -> dict[str, Any]:
    return {"active": vmodel.active, "target": vmodel.target, "owner": vmodel.owner}


class ModelRegistry:
    """SQLite-backed registry. Open with ``ModelRegistry.open(path)``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._listeners: list[Callable[[list[Write]], None]] = []

    def on_write(self, listener: Callable[[list[Write]], None]) -> None:
        """Call ``listener(writes)`` after every committed local write."""
        self._listeners.append(listener)

    def _notify(self, writes: list[Write], notify: bool) -> None:
        if notify and writes:
            for listener in self._listeners:
                listener(writes)

    @classmethod
    def open(cls, path: Path) -> ModelRegistry:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        _migrate(conn)
        return cls(conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- models ------------------------------------------------------------

    def get(self, model_id: str) -> ModelSpec | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE id = ?", (model_id,)
            ).fetchone()
        return _spec(row) if row else None

    def is_auto_delete(self, model_id: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT auto_delete FROM models WHERE id = ?", (model_id,)
            ).fetchone()
        return bool(row and row[0])

    def put(self, spec: ModelSpec, auto_delete: bool = False, notify: bool = True) -> PutResult:
        """Create or replace one registration; a no-op when the spec is equal."""
        result = self._put(spec, auto_delete)
        if result is not PutResult.UNCHANGED:
            self._notify([(MODEL_PREFIX + spec.model_id, model_value(spec, auto_delete))], notify)
        return result

    def _put(self, spec: ModelSpec, auto_delete: bool) -> PutResult:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            row = self._conn.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE id = ?", (spec.model_id,)
            ).fetchone()
            if row and _spec(row) == spec:
                return PutResult.UNCHANGED
            self._conn.execute(_INSERT_MODEL, (*_row(spec), int(auto_delete)))
            if row:  # a new spec: the old measured size says nothing about it
                self._conn.execute("DELETE FROM sizes WHERE id = ?", (spec.model_id,))
            return PutResult.REPLACED if row else PutResult.CREATED

    def put_many(self, specs: Iterable[ModelSpec]) -> tuple[int, list[str]]:
        """Register many in one transaction.

        Returns (how many were created or replaced, ids whose spec was replaced).
        """
        written = 0
        replaced: list[str] = []
        writes: list[Write] = []
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for spec in specs:
                row = self._conn.execute(
                    f"SELECT {_MODEL_COLUMNS} FROM models WHERE id = ?", (spec.model_id,)
                ).fetchone()
                if row:
                    if _spec(row) == spec:
                        continue
                    replaced.append(spec.model_id)
                self._conn.execute(_INSERT_MODEL, (*_row(spec), 0))
                if row:
                    self._conn.execute("DELETE FROM sizes WHERE id = ?", (spec.model_id,))
                writes.append((MODEL_PREFIX + spec.model_id, model_value(spec)))
                written += 1
        self._notify(writes, True)
        return written, replaced

    def delete(self, model_id: str, notify: bool = True) -> bool:
        """Forget a registration. Replicated as a delete even when it was not
        held here: it may be on its way from a peer, and must lose to this."""
        with self._lock, self._conn:
            cur = self._conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
            self._conn.execute("DELETE FROM sizes WHERE id = ?", (model_id,))
        self._notify([(MODEL_PREFIX + model_id, None)], notify)
        return cur.rowcount > 0

    def count(self) -> int:
        with self._lock:
            (n,) = self._conn.execute("SELECT count(*) FROM models").fetchone()
        return int(n)

    def list_page(self, after: str = "", limit: int = 10_000) -> list[ModelSpec]:
        """Specs ordered by id, starting after ``after``: page through any number."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [_spec(r) for r in rows]

    def iter_values(self, page: int = 10_000) -> Iterator[Write]:
        """Every registration and vmodel as replicated writes (``model_value``)."""
        after = ""
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_MODEL_COLUMNS}, auto_delete FROM models WHERE id > ? "
                    "ORDER BY id LIMIT ?", (after, page),
                ).fetchall()
            if not rows:
                break
            for row in rows:
                yield MODEL_PREFIX + row[0], model_value(_spec(row[:8]), bool(row[8]))
            after = rows[-1][0]
        for vmodel in self.iter_vmodels():
            yield VMODEL_PREFIX + vmodel.vmodel_id, vmodel_value(vmodel)

    def iter_ids(self, page: int = 50_000) -> Iterator[str]:
        after = ""
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT id FROM models WHERE id > ? ORDER BY id LIMIT ?", (after, page)
                ).fetchall()
            if not rows:
                return
            for (model_id,) in rows:
                yield model_id
            after = rows[-1][0]

    # --- measured sizes -----------------------------------------------------

    def measured_size(self, model_id: str, runtime: str) -> int | None:
        """The size a load of this model on ``runtime`` was last measured at."""
        with self._lock:
            row = self._conn.execute(
                "SELECT bytes FROM sizes WHERE id = ? AND runtime = ?", (model_id, runtime)
            ).fetchone()
        return int(row[0]) if row else None

    def put_sizes(self, sizes: Iterable[tuple[str, str, int]]) -> None:
        """Record (model id, runtime, bytes) measurements of registered models, in
        one transaction."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR REPLACE INTO sizes SELECT ?, ?, ? WHERE EXISTS "
                "(SELECT 1 FROM models WHERE id = ?1)",
                sizes,
            )

    # --- vmodels -----------------------------------------------------------

    def get_vmodel(self, vmodel_id: str) -> VModel | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, active, target, owner FROM vmodels WHERE id = ?", (vmodel_id,)
            ).fetchone()
        return VModel(*row) if row else None

    def put_vmodel(self, vmodel: VModel, notify: bool = True) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO vmodels VALUES (?, ?, ?, ?)",
                (vmodel.vmodel_id, vmodel.active, vmodel.target, vmodel.owner),
            )
        self._notify([(VMODEL_PREFIX + vmodel.vmodel_id, vmodel_value(vmodel))], notify)

    def delete_vmodel(self, vmodel_id: str, notify: bool = True) -> bool:
        with self._lock:
            cur = self._conn.execute("DELETE FROM vmodels WHERE id = ?", (vmodel_id,))
        self._notify([(VMODEL_PREFIX + vmodel_id, None)], notify)
        return cur.rowcount > 0

    def iter_vmodels(self) -> list[VModel]:
        with self._lock:
            rows = self._conn.execute("SELECT id, active, target, owner FROM vmodels").fetchall()
        return [VModel(*r) for r in rows]

    # --- replicated entries (agent.cluster.registry_sync) ------------------

    def repl_rows(self) -> list[tuple[str, str, str | None]]:
        """Every stored replicated entry: (key, stamp, value JSON or None)."""
        with self._lock:
            return list(self._conn.execute("SELECT key, stamp, value FROM repl"))

    def put_repl(self, rows: Iterable[tuple[str, str, str | None]]) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT OR REPLACE INTO repl VALUES (?, ?, ?)", rows)

    def delete_repl(self, keys: Iterable[str]) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("DELETE FROM repl WHERE key = ?", ((k,) for k in keys))

    def vmodels_referencing(self, model_id: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM vmodels WHERE active = ? OR target = ?", (model_id, model_id)
            ).fetchall()
        return [r[0] for r in rows]

    def transitioning_vmodels(self) -> list[VModel]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, active, target, owner FROM vmodels WHERE active != target"
            ).fetchall()
        return [VModel(*r) for r in rows]


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a registry written by an older meshlet up to this schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(models)")}
    if "storage_key" not in columns:  # before the node cache (issue 3)
        conn.execute("ALTER TABLE models ADD COLUMN storage_key TEXT NOT NULL DEFAULT ''")
    if "gpu" not in columns:  # before GPU placement (issue 5)
        conn.execute("ALTER TABLE models ADD COLUMN gpu INTEGER NOT NULL DEFAULT 0")


def _row(spec: ModelSpec) -> tuple[str, str, str, str, int, str, str, int]:
    return (
        spec.model_id,
        spec.uri,
        spec.runtime,
        spec.model_type,
        spec.size_hint,
        spec.labels_json(),
        spec.storage_key,
        int(spec.gpu),
    )
