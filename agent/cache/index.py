"""The cache index in SQLite: key -> digest, and per blob its sizes, last use
and pins.

Same conventions as ``agent.registry.store``: WAL, ``synchronous=NORMAL``,
one connection guarded by a lock, ``busy_timeout`` so that two agents sharing
the directory wait for each other's short write transactions. Rows are only
written after the blob file is durable, so a row always names a complete blob
(the file may still go bad on disk: unpack verifies).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.cache.pack import Kind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest     TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    csize      INTEGER NOT NULL,
    last_used  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    key        TEXT PRIMARY KEY,
    digest     TEXT NOT NULL,
    name       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_digest ON keys(digest);
CREATE TABLE IF NOT EXISTS pins (
    digest     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (digest, owner)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name       TEXT PRIMARY KEY,
    value      INTEGER NOT NULL
) WITHOUT ROWID;
"""

_INFO = """SELECT b.digest, b.kind, b.name, b.size, b.csize, b.last_used,
    (SELECT coalesce(sum(count), 0) FROM pins p WHERE p.digest = b.digest) FROM blobs b"""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One cached artifact. ``name`` is the file name a file artifact unpacks
    to (the key's own, when looked up by key); ``pins`` counts all owners."""

    digest: str
    kind: Kind
    name: str
    size_bytes: int
    compressed_bytes: int
    last_used_ns: int
    pins: int
    key: str | None = None


class CacheIndex:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> CacheIndex:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return cls(conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _info(self, row: tuple | None, key: str | None = None, name: str = "") -> BlobInfo | None:
        if row is None:
            return None
        return BlobInfo(row[0], row[1], name or row[2], row[3], row[4], row[5], row[6], key=key)

    def by_key(self, key: str) -> BlobInfo | None:
        with self._lock:
            k = self._conn.execute("SELECT digest, name FROM keys WHERE key = ?", (key,)).fetchone()
            if k is None:
                return None
            row = self._conn.execute(f"{_INFO} WHERE b.digest = ?", (k[0],)).fetchone()
        return self._info(row, key, k[1])

    def by_digest(self, digest: str) -> BlobInfo | None:
        with self._lock:
            row = self._conn.execute(f"{_INFO} WHERE b.digest = ?", (digest,)).fetchone()
        return self._info(row)

    def _touch(self, digest: str) -> None:
        # Strictly increasing, so LRU order is exact even within one clock tick.
        self._conn.execute(
            "UPDATE blobs SET last_used = max(?, (SELECT coalesce(max(last_used), 0) + 1"
            " FROM blobs)) WHERE digest = ?",
            (time.time_ns(), digest),
        )

    def touch(self, digest: str) -> None:
        with self._lock:
            self._touch(digest)

    def add(self, key: str, digest: str, kind: Kind, name: str, size: int, csize: int) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?, 0)",
                (digest, kind, name, size, csize),
            )
            self._conn.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)", (key, digest, name))
            self._touch(digest)

    def forget(self, key: str) -> bool:
        with self._lock:
            cur = self._conn.execute("DELETE FROM keys WHERE key = ?", (key,))
        return cur.rowcount > 0

    def delete_blob(self, digest: str) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for table in ("keys", "pins", "blobs"):
                self._conn.execute(f"DELETE FROM {table} WHERE digest = ?", (digest,))

    def used_bytes(self) -> int:
        with self._lock:
            (n,) = self._conn.execute("SELECT coalesce(sum(csize), 0) FROM blobs").fetchone()
        return int(n)

    def lru_unpinned(self) -> list[tuple[str, int]]:
        """(digest, compressed size) of unpinned blobs, least recently used first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT digest, csize FROM blobs WHERE digest NOT IN"
                " (SELECT digest FROM pins WHERE count > 0) ORDER BY last_used"
            ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def unreferenced(self) -> list[str]:
        """Unpinned blobs that no key names any more."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT digest FROM blobs WHERE digest NOT IN (SELECT digest FROM keys)"
                " AND digest NOT IN (SELECT digest FROM pins WHERE count > 0)"
            ).fetchall()
        return [r[0] for r in rows]

    def pin(self, digest: str, owner: str, delta: int) -> int:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO pins VALUES (?, ?, max(?, 0)) ON CONFLICT(digest, owner)"
                " DO UPDATE SET count = max(count + ?, 0)",
                (digest, owner, delta, delta),
            )
            self._conn.execute("DELETE FROM pins WHERE count = 0")
            (n,) = self._conn.execute(
                "SELECT coalesce(sum(count), 0) FROM pins WHERE digest = ?", (digest,)
            ).fetchone()
        return int(n)

    def clear_pins(self, owner: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM pins WHERE owner = ?", (owner,))

    def bump(self, counter: str, by: int = 1) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name)"
                " DO UPDATE SET value = value + excluded.value",
                (counter, by),
            )

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT name, value FROM counters").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def blobs(self) -> list[BlobInfo]:
        with self._lock:
            rows = self._conn.execute(f"{_INFO} ORDER BY b.last_used").fetchall()
        return [i for r in rows if (i := self._info(r)) is not None]

    def keys(self) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._conn.execute("SELECT key, digest FROM keys ORDER BY key").fetchall()
        return [(r[0], r[1]) for r in rows]
