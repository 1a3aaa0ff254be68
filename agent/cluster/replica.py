"""A last-writer-wins replicated map: the registry as gossip carries it.

Each node holds a ``Replica``: keys (``"model/<id>"``, ``"vmodel/<id>"``) to
JSON-able dicts, each written with a hybrid-clock ``Timestamp``. A delete
writes a tombstone (value ``None``). Replicas exchange ``Entry`` objects and
keep, per key, the one with the greatest stamp; since ``max`` is commutative,
associative and idempotent, any two replicas that have received the same set
of entries, in any order and with any repeats, hold the same state.

Two ways entries spread, both defined here and carried by the transport:

* **Piggybacked deltas**: every change gets a local sequence number;
  ``delta_since(version)`` returns what changed after ``version``, oldest
  first, so gossip messages can carry recent changes. Losing one is fine.
* **Push-pull anti-entropy** with a random peer: ``digest()`` is one hash per
  bucket (keys are spread over ``buckets`` buckets by key hash); the peer
  answers with ``diff`` (the buckets that differ) and its ``entries_in`` them,
  and gets ours back (``push_pull`` is the reference for the three messages).
  With 100,000 keys and 256 buckets one differing key costs a 256-hash digest
  plus about 2 x 400 entries, not 100,000. Bucket hashes are the XOR of the
  entry hashes, updated in O(1) per change.

Decisions:

* **Equal stamps** cannot come from two correct nodes (the node id is part of
  the stamp, and a node never repeats one). Should they meet anyway, the
  tombstone wins, then the greater canonical JSON, so replicas still agree;
  the entry hash covers the value, so anti-entropy sees the difference.
* **Tombstone age is the stamp's ``wall_ms``**, not when this node received
  it: every node then agrees (within clock skew) when a tombstone expires. Age
  by receipt would make tombstones ping-pong forever: a node that had dropped
  one would take it back from a peer that had not yet, with a fresh age.
  For the same reason an *expired* tombstone that arrives is never stored: it
  still deletes an older value here, then is dropped.
* **TTL rule**: ``tombstone_ttl_s`` must exceed the longest partition or
  downtime tolerated plus the worst clock skew (default 7 days). A node out of
  contact for longer may hold values whose tombstones are gone everywhere;
  pushing them would resurrect deleted models. ``needs_full_sync(last_seen)``
  says so; such a node calls ``forget_older_than(now - ttl)`` before its first
  exchange, then pulls. Entries younger than the TTL are kept, since any
  tombstone that beats one is younger still and so still held by the peers:
  its recent registrations survive, old ones come back from peers, and a
  deleted model stays deleted. This fits one side rejoining a live cluster;
  a split where *both* sides run on past the TTL has no safe automatic merge.
* Not thread-safe: one replica belongs to one event loop (the cluster
  service); the shared ``HybridClock`` is the only part that locks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.cluster.hlc import HybridClock, Timestamp

log = logging.getLogger(__name__)

DEFAULT_TOMBSTONE_TTL_S = 7 * 24 * 3600.0
DEFAULT_BUCKETS = 256


def canonical_json(value: Mapping[str, Any] | None) -> str:
    """The one JSON text of a value (sorted keys, no spaces); ``""`` for a tombstone."""
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Entry:
    """One write of one key: a value, or a tombstone (``value is None``).

    The value dict is shared, never copied on the hot path: treat it as
    immutable (``Replica.put`` stores its own copy).
    """

    key: str
    value: dict[str, Any] | None
    stamp: Timestamp

    @property
    def deleted(self) -> bool:
        return self.value is None

    def to_wire(self) -> dict[str, Any]:
        """JSON-able form: ``{"k": key, "v": value or null, "t": "<stamp>"}``."""
        return {"k": self.key, "v": self.value, "t": self.stamp.encode()}

    @classmethod
    def from_wire(cls, data: Any) -> Entry:
        """Parse ``to_wire``'s output from an untrusted peer; ValueError if malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"entry must be an object, got {type(data).__name__}")
        key, value, stamp = data.get("k"), data.get("v"), data.get("t")
        if not isinstance(key, str) or not key:
            raise ValueError("entry key 'k' must be a non-empty string")
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"entry {key!r}: value 'v' must be an object or null")
        if not isinstance(stamp, str):
            raise ValueError(f"entry {key!r}: stamp 't' must be a string")
        try:  # JSON parsers let NaN and Infinity through; the entry hash cannot
            canonical_json(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"entry {key!r}: value is not plain JSON: {exc}") from None
        return cls(key, value, Timestamp.decode(stamp))


def _beats(new: Entry, old: Entry) -> bool:
    """LWW order: stamp, then tombstone over value, then the greater canonical JSON."""
    if new.stamp != old.stamp:
        return new.stamp > old.stamp
    return (int(new.deleted), canonical_json(new.value)) > (
        int(old.deleted),
        canonical_json(old.value),
    )


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _entry_hash(entry: Entry) -> int:
    text = "\0".join((entry.key, entry.stamp.encode(), canonical_json(entry.value)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "big")


class Replica:
    """This node's copy of the replicated map.

    ``node`` must equal ``clock.node`` (the clock stamps our writes).
    ``buckets`` must be the same on every node: it is the digest's length.
    """

    def __init__(
        self,
        clock: HybridClock,
        tombstone_ttl_s: float = DEFAULT_TOMBSTONE_TTL_S,
        buckets: int = DEFAULT_BUCKETS,
    ) -> None:
        if tombstone_ttl_s <= 0:
            raise ValueError("tombstone_ttl_s must be positive")
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        self._clock = clock
        self._ttl_ms = int(tombstone_ttl_s * 1000)
        self._buckets = buckets
        self._entries: dict[str, Entry] = {}
        self._hashes: dict[str, int] = {}  # key -> _entry_hash of its stored entry
        self._tombstones: set[str] = set()
        # key -> sequence number of its last change, oldest first: delta_since
        # walks it from the newest end and stops at the caller's version.
        self._changes: OrderedDict[str, int] = OrderedDict()
        self._seq = 0
        self._bucket_hash = [0] * buckets
        self._bucket_keys: list[set[str]] = [set() for _ in range(buckets)]

    @property
    def node(self) -> str:
        return self._clock.node

    @property
    def clock(self) -> HybridClock:
        return self._clock

    @property
    def version(self) -> int:
        """The sequence number of the latest local change (0: none yet)."""
        return self._seq

    def __len__(self) -> int:
        """Live keys (tombstones not counted)."""
        return len(self._entries) - len(self._tombstones)

    # --- reads ---------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        """The live value of ``key``, or None if absent or deleted."""
        entry = self._entries.get(key)
        return entry.value if entry else None

    def entry(self, key: str) -> Entry | None:
        """The stored entry of ``key``, tombstone included."""
        return self._entries.get(key)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Live (key, value) pairs, in no particular order."""
        for key, entry in self._entries.items():
            if entry.value is not None:
                yield key, entry.value

    def entries(self) -> Iterator[Entry]:
        """Every stored entry, tombstones included: for persistence and full sync."""
        return iter(list(self._entries.values()))

    # --- local writes --------------------------------------------------------

    def put(self, key: str, value: Mapping[str, Any]) -> Entry:
        """Write ``value`` (a JSON-able dict, copied) at a fresh stamp; return the entry."""
        if not key:
            raise ValueError("replica key is empty")
        copy: dict[str, Any] = json.loads(canonical_json(value))
        entry = Entry(key, copy, self._clock.now())
        self._store(entry)
        return entry

    def delete(self, key: str) -> Entry:
        """Write a tombstone at a fresh stamp, whether or not ``key`` is held.

        A tombstone for an unknown key still matters: it beats a concurrent
        put that has not reached us yet.
        """
        if not key:
            raise ValueError("replica key is empty")
        entry = Entry(key, None, self._clock.now())
        self._store(entry)
        return entry

    # --- merging -------------------------------------------------------------

    def apply(self, entries: Iterable[Entry], now_ms: int | None = None) -> list[Entry]:
        """Merge received entries; return those that changed this replica.

        A returned entry with a value means "upsert", a tombstone "delete"
        (idempotent: the key may not have been held). Every stamp is observed
        by the clock, so our next write beats all of them. An expired
        tombstone deletes an older value but is not stored (see module doc).
        """
        now = self._clock.physical_ms() if now_ms is None else now_ms
        changed: list[Entry] = []
        for entry in entries:
            self._clock.observe(entry.stamp)
            current = self._entries.get(entry.key)
            if current is not None and not _beats(entry, current):
                continue
            if entry.deleted and self._expired(entry, now):
                if current is not None:
                    self._remove(entry.key)
                    changed.append(entry)
                continue
            self._store(entry)
            changed.append(entry)
        return changed

    def delta_since(self, version: int, limit: int | None = None) -> tuple[list[Entry], int]:
        """Entries changed after ``version``, oldest first, and the version they reach.

        With ``limit``, at most that many are returned and the version is that
        of the last one, so the caller resumes from it. Costs O(changes since
        ``version``), not O(keys).
        """
        recent: list[tuple[int, str]] = []
        for key in reversed(self._changes):
            seq = self._changes[key]
            if seq <= version:
                break
            recent.append((seq, key))
        recent.reverse()
        if limit is not None:
            recent = recent[:limit]
        if not recent:
            return [], self._seq
        return [self._entries[key] for _, key in recent], recent[-1][0]

    # --- anti-entropy --------------------------------------------------------

    def digest(self) -> list[str]:
        """One hash per bucket (32 hex digits each), to send to a peer."""
        return [f"{h:032x}" for h in self._bucket_hash]

    def diff(self, remote_digest: Any) -> list[int]:
        """Buckets whose hash differs from a peer's digest; ValueError if malformed."""
        if not isinstance(remote_digest, list) or len(remote_digest) != self._buckets:
            raise ValueError(f"digest must be a list of {self._buckets} bucket hashes")
        mine = self.digest()
        return [i for i, h in enumerate(remote_digest) if h != mine[i]]

    def entries_in(self, buckets: Iterable[int]) -> list[Entry]:
        """Every stored entry in the given buckets (ValueError on a bad bucket)."""
        out: list[Entry] = []
        for b in buckets:
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < self._buckets:
                raise ValueError(f"bucket {b!r} is not in 0..{self._buckets - 1}")
            out.extend(self._entries[key] for key in self._bucket_keys[b])
        return out

    # --- tombstones ----------------------------------------------------------

    def gc(self, now_ms: int | None = None) -> int:
        """Drop tombstones older than the TTL (by stamp); return how many."""
        now = self._clock.physical_ms() if now_ms is None else now_ms
        expired = [k for k in self._tombstones if self._expired(self._entries[k], now)]
        for key in expired:
            self._remove(key)
        return len(expired)

    def needs_full_sync(self, last_seen_ms: int, now_ms: int | None = None) -> bool:
        """True when contact with the cluster was lost for longer than the TTL.

        ``last_seen_ms`` is the physical time of the last successful exchange
        (persist it). Such a node must ``forget_older_than(now - ttl)`` before
        it pushes anything, or it may resurrect deleted models.
        """
        now = self._clock.physical_ms() if now_ms is None else now_ms
        return now - last_seen_ms > self._ttl_ms

    def forget_older_than(self, cutoff_ms: int) -> int:
        """Drop every entry stamped before ``cutoff_ms``; return how many.

        For a node rejoining after ``needs_full_sync``: entries older than the
        TTL may have been deleted with a tombstone already collected; the live
        ones come back from peers at the next pull.
        """
        old = [k for k, e in self._entries.items() if e.stamp.wall_ms < cutoff_ms]
        for key in old:
            self._remove(key)
        if old:
            log.info("forgot %d entries older than %d ms before a full sync", len(old), cutoff_ms)
        return len(old)

    # --- internals -----------------------------------------------------------

    def _expired(self, entry: Entry, now_ms: int) -> bool:
        return now_ms - entry.stamp.wall_ms > self._ttl_ms

    def _bucket(self, key: str) -> int:
        return _key_hash(key) % self._buckets

    def _store(self, entry: Entry) -> None:
        key = entry.key
        b = self._bucket(key)
        h = _entry_hash(entry)
        self._bucket_hash[b] ^= self._hashes.get(key, 0) ^ h
        self._hashes[key] = h
        self._bucket_keys[b].add(key)
        self._entries[key] = entry
        if entry.deleted:
            self._tombstones.add(key)
        else:
            self._tombstones.discard(key)
        self._seq += 1
        self._changes[key] = self._seq
        self._changes.move_to_end(key)

    def _remove(self, key: str) -> None:
        del self._entries[key]
        b = self._bucket(key)
        self._bucket_hash[b] ^= self._hashes.pop(key)
        self._bucket_keys[b].discard(key)
        self._tombstones.discard(key)
        self._changes.pop(key, None)


def push_pull(local: Replica, remote: Replica) -> int:
    """One anti-entropy round between two in-process replicas; return entries sent.

    The reference for the wire exchange: (1) local sends ``digest()``; (2)
    remote answers ``diff`` and its ``entries_in`` those buckets; (3) local
    applies them and sends its own entries in the same buckets, taken before
    applying so nothing is echoed back. Afterwards both hold the same state.
    """
    buckets = remote.diff(local.digest())
    if not buckets:
        return 0
    theirs = remote.entries_in(buckets)
    mine = local.entries_in(buckets)
    local.apply(theirs)
    remote.apply(mine)
    return len(theirs) + len(mine)
