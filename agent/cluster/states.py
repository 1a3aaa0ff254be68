"""Per-node versioned state, spread Scuttlebutt-style (like chitchat and Cassandra gossip).

Each node (an *origin*, named by its peer address) owns a small key -> dict
map about itself (``"node"``, ``"m/<model id>"``, ...). Every node holds a
copy of every origin's map. Each own write bumps the origin's *version* and
stamps the key with it, so "what changed after version v" is one walk over a
per-origin ``OrderedDict`` kept in version order, from its newest end, that
stops at ``v``: an exchange costs O(changes the peer lacks), never O(keys).

The exchange: a node sends ``digest()`` (per origin ``[generation, version,
floor]``); the peer answers ``delta_for(digest, max_entries)`` and the node
``apply``-s it. Wire form of a delta, per origin::

    {"o": {origin: {"g": generation, "v": sender's version, "f": sender's floor,
                    "r": 1 for a reset else 0, "b": base version (0 for a reset),
                    "e": [[key, version, value or null], ...]}}}

``e`` holds the sender's stored entries with versions above ``b``, oldest
first, cut to the entry budget; the receiver ends at the last one's version
and the next exchange continues from there.

Decisions:

* **Tombstones and the floor.** A delete keeps a tombstone (value ``None``)
  so peers learn of it. When an origin has more than ``max_tombstones``, the
  oldest half are dropped and its *floor* rises to the highest dropped
  version. Every node prunes every origin this way, relayed ones included.
  A peer that may hold a key deleted by a dropped tombstone (its version is
  below our floor, and so is its own floor) gets a *reset*.
* **Invariant.** A node at version ``v`` with floor ``f`` for an origin holds,
  for every key whose latest write is at version <= ``v``, exactly that write
  (or nothing, if it is a tombstone <= ``f``); and for every key whose latest
  write is a tombstone <= ``f``, nothing or that tombstone, never a stale
  value. The rules below keep it; the tests check what it implies.
* **A reset** sends every stored entry from version 0 (live values *and* the
  tombstones we still hold, all of which are above our floor): the receiver
  drops what it held and takes our floor. Sending tombstones too (at most
  ``max_tombstones``) lets the receiver adopt our floor; with live values
  only it would have to raise its floor to its version and then reset every
  peer behind it in turn.
* **A reset cut short** leaves the receiver *mid-reset*: version ``last``
  below floor ``f``, holding a prefix of the sender's entries. Its digest
  says so (``floor > version``), and since it holds no value older than a
  tombstone <= ``f``, a peer whose floor is <= ``f`` continues it with an
  ordinary delta instead of resetting it again (which could never finish
  with many keys below the floor). A peer that is behind both ``f`` in
  version and floor sends it nothing for that origin: its stale values could
  be the very ones a pruned tombstone deleted. The origin itself always
  covers, so this cannot stall while the origin lives.
* **Receivers re-check.** A delta may be computed against an old digest, and
  be delayed or reordered. ``apply`` decides again from its *current* state:
  an ordinary delta must continue from at most our version (``b``), and the
  floor rules above must hold with the sender's ``v`` and ``f``; a reset
  that could be applied as a continuation is, and one from a sender not
  ahead of us is ignored.
* **Generations.** A restarted node uses a larger generation; a delta with a
  newer generation must be a reset and replaces the old state, an older one
  is ignored. Entries about ourselves are always ignored (our state is
  authoritative). A reset or new generation emits a ``Change`` only for keys
  whose live value ends up different.
* **Forget.** ``forget`` drops an origin and remembers its generation: deltas
  for that generation or an older one, still relayed by peers that have not
  forgotten it yet, are ignored; a restarted node (newer generation) is
  accepted again.
* **No copies.** Values are stored and sent as given (``set`` copies the
  caller's mapping once): treat every ``Value`` from here as immutable.
  Received values are checked to be dicts, not walked.
* Listeners are called after the whole write or ``apply`` has been made; one
  that raises is logged and does not stop the others.
* Not thread-safe: it belongs to one event loop (the cluster service).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Value = dict[str, Any]
"""A JSON-able dict. Shared, never copied after ``set``: do not mutate it."""

MAX_NAME_CHARS = 512
DEFAULT_MAX_TOMBSTONES = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    """One key of one origin changed; ``value is None``: deleted (or the origin dropped)."""

    origin: str
    key: str
    value: Value | None


@dataclass(slots=True)
class _Origin:
    """What this node holds of one origin."""

    generation: int
    version: int = 0
    floor: int = 0
    # key -> (version, value or None for a tombstone), oldest version first.
    entries: OrderedDict[str, tuple[int, Value | None]] = field(default_factory=OrderedDict)
    # tombstoned key -> version, oldest first: pruning pops from the front.
    tombstones: OrderedDict[str, int] = field(default_factory=OrderedDict)


@dataclass(frozen=True, slots=True)
class _Part:
    """One origin's section of a parsed delta."""

    origin: str
    generation: int
    version: int
    floor: int
    reset: bool
    base: int
    entries: list[tuple[str, int, Value | None]]


# --- validation of untrusted input -----------------------------------------------


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{what} must be a string of 1..{MAX_NAME_CHARS} characters")
    return name


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _parse_digest(digest: Any) -> dict[str, tuple[int, int, int]]:
    if not isinstance(digest, dict):
        raise ValueError(f"digest must be an object, got {type(digest).__name__}")
    out: dict[str, tuple[int, int, int]] = {}
    for origin, item in digest.items():
        _check_name(origin, "digest origin")
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise ValueError(f"digest of {origin!r} must be [generation, version, floor]")
        gen, version, floor = (_uint(x, f"digest of {origin!r}") for x in item)
        out[origin] = (gen, version, floor)
    return out


def _parse_part(origin: Any, body: Any) -> _Part:
    _check_name(origin, "delta origin")
    if not isinstance(body, dict):
        raise ValueError(f"delta of {origin!r} must be an object")
    gen = _uint(body.get("g"), f"{origin!r} generation 'g'")
    version = _uint(body.get("v"), f"{origin!r} version 'v'")
    floor = _uint(body.get("f"), f"{origin!r} floor 'f'")
    reset = body.get("r")
    if type(reset) is not int or reset not in (0, 1):
        raise ValueError(f"{origin!r} reset flag 'r' must be 0 or 1")
    base = _uint(body.get("b"), f"{origin!r} base 'b'")
    if reset and base:
        raise ValueError(f"{origin!r}: a reset starts from base 0")
    if base > version:
        raise ValueError(f"{origin!r}: base {base} is above version {version}")
    raw = body.get("e")
    if not isinstance(raw, list):
        raise ValueError(f"{origin!r} entries 'e' must be a list")
    entries: list[tuple[str, int, Value | None]] = []
    previous = base
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise ValueError(f"{origin!r}: an entry must be [key, version, value]")
        key = _check_name(item[0], f"{origin!r} entry key")
        entry_version = _uint(item[1], f"{origin!r} entry {key!r} version")
        value = item[2]
        if not previous < entry_version <= version:
            raise ValueError(
                f"{origin!r} entry {key!r}: version {entry_version} is not in "
                f"increasing order within ({base}, {version}]"
            )
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{origin!r} entry {key!r}: value must be an object or null")
        entries.append((key, entry_version, value))
        previous = entry_version
    return _Part(origin, gen, version, floor, bool(reset), base, entries)


def _parse_delta(delta: Any) -> list[_Part]:
    if not isinstance(delta, dict) or not isinstance(delta.get("o"), dict):
        raise ValueError("delta must be an object with an 'o' object")
    return [_parse_part(origin, body) for origin, body in delta["o"].items()]


# --- the state -------------------------------------------------------------------


class NodeStates:
    """Every origin's versioned key -> value map, as this node knows it.

    ``generation`` must grow across restarts of this node (boot time in ms),
    so peers replace what they hold of its previous life. Keys starting with
    ``index_prefix`` are indexed for ``holders``.
    """

    def __init__(
        self,
        self_origin: str,
        generation: int,
        max_tombstones: int = DEFAULT_MAX_TOMBSTONES,
        index_prefix: str = "m/",
    ) -> None:
        _check_name(self_origin, "self_origin")
        _uint(generation, "generation")
        if isinstance(max_tombstones, bool) or max_tombstones < 1:
            raise ValueError("max_tombstones must be at least 1")
        self._self = self_origin
        self._max_tombstones = max_tombstones
        self._prefix = index_prefix
        self._own = _Origin(generation)
        self._states: dict[str, _Origin] = {self_origin: self._own}
        self._holders: dict[str, set[str]] = {}  # indexed key -> origins holding it live
        self._forgotten: dict[str, int] = {}  # origin -> generation it was forgotten at
        self._listeners: list[Callable[[Change], None]] = []

    @property
    def self_origin(self) -> str:
        return self._self

    # --- own writes --------------------------------------------------------------

    def set(self, key: str, value: Mapping[str, Any]) -> bool:
        """Write our ``key`` (a copy of ``value``); False if it already holds an equal value."""
        _check_name(key, "key")
        try:
            copy: Value = json.loads(json.dumps(dict(value), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"value of {key!r} is not plain JSON: {exc}") from None
        current = self._own.entries.get(key)
        if current is not None and current[1] == copy:
            return False
        self._own.version += 1
        change = self._put(self._self, self._own, key, self._own.version, copy)
        self._notify([change] if change else [])
        return True

    def delete(self, key: str) -> bool:
        """Delete our ``key``, leaving a tombstone; False if it is not held."""
        current = self._own.entries.get(key)
        if current is None or current[1] is None:
            return False
        self._own.version += 1
        change = self._put(self._self, self._own, key, self._own.version, None)
        self._prune(self._own)
        self._notify([change] if change else [])
        return True

    # --- reads -------------------------------------------------------------------

    def get(self, origin: str, key: str) -> Value | None:
        """The live value of ``origin``'s ``key``, or None."""
        st = self._states.get(origin)
        entry = st.entries.get(key) if st else None
        return entry[1] if entry else None

    def items(self, origin: str) -> Iterator[tuple[str, Value]]:
        """``origin``'s live (key, value) pairs, oldest write first."""
        st = self._states.get(origin)
        if st is None:
            return
        for key, (_, value) in st.entries.items():
            if value is not None:
                yield key, value

    def origins(self) -> list[str]:
        """Every origin held, sorted, ourselves included."""
        return sorted(self._states)

    def version(self, origin: str) -> int:
        """The version held of ``origin`` (0 if unknown)."""
        st = self._states.get(origin)
        return st.version if st else 0

    def generation(self, origin: str) -> int | None:
        """The generation held of ``origin`` (None if unknown)."""
        st = self._states.get(origin)
        return st.generation if st else None

    def holders(self, key: str) -> list[str]:
        """Origins holding ``key`` live, sorted; ``key`` must start with the index prefix."""
        if not key.startswith(self._prefix):
            raise ValueError(f"{key!r} is not indexed (prefix {self._prefix!r})")
        return sorted(self._holders.get(key, ()))

    def key_count(self, origin: str) -> int:
        """How many live keys ``origin`` has here."""
        st = self._states.get(origin)
        return len(st.entries) - len(st.tombstones) if st else 0

    def on_change(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` for every change made, own writes and gossip alike."""
        self._listeners.append(listener)

    # --- gossip ------------------------------------------------------------------

    def digest(self) -> dict[str, list[int]]:
        """Per origin ``[generation, version, floor]``, to send to a peer."""
        return {o: [st.generation, st.version, st.floor] for o, st in self._states.items()}

    def digest_diff(self, remote_digest: Any) -> dict[str, list[int] | None]:
        """This node's digest where it differs from ``remote_digest``: ``None`` for
        an origin the peer has and this node does not. The peer rebuilds this
        node's whole digest from its own and the diff, so an exchange between
        nodes that agree carries one O(N) digest, not two. ValueError if the
        digest is malformed."""
        remote = _parse_digest(remote_digest)
        mine = self.digest()
        diff: dict[str, list[int] | None] = {
            o: d for o, d in mine.items() if remote.get(o) != tuple(d)
        }
        diff.update((o, None) for o in remote if o not in mine)
        return diff

    @staticmethod
    def patch_digest(base: dict[str, list[int]], diff: Any) -> dict[str, list[int]]:
        """A peer's digest from the ``base`` this node sent it and the peer's
        ``digest_diff`` of it. ValueError if the diff is malformed."""
        if not isinstance(diff, dict):
            raise ValueError(f"digest diff must be an object, got {type(diff).__name__}")
        gone = {o for o, d in diff.items() if d is None}
        _parse_digest({o: d for o, d in diff.items() if d is not None})  # checks them
        out = {o: d for o, d in base.items() if o not in gone}
        out.update((o, d) for o, d in diff.items() if d is not None)
        return out

    def delta_for(self, remote_digest: Any, max_entries: int) -> dict[str, Any]:
        """What a peer with ``remote_digest`` lacks, at most ``max_entries`` entries.

        The budget is shared out water-filling style: origins needing the
        fewest entries are served in full first, the rest split what is left,
        so one far-behind origin cannot starve the others. ValueError if the
        digest is malformed.
        """
        remote = _parse_digest(remote_digest)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError("max_entries must be a positive integer")
        plans: list[tuple[int, str, _Origin, int]] = []  # need, origin, state, base (-1: reset)
        for origin, st in self._states.items():
            base = self._base_for(st, remote.get(origin))
            if base is None:
                continue
            need = len(st.entries) if base < 0 else min(len(st.entries), st.version - base)
            plans.append((need, origin, st, base))
        plans.sort(key=lambda p: (p[0], p[1]))
        out: dict[str, Any] = {}
        budget = max_entries
        for left, (need, origin, st, base) in zip(range(len(plans), 0, -1), plans, strict=True):
            share = min(need, budget // left)
            if need and not share:
                continue
            entries = _entries_after(st, max(base, 0), share)
            budget -= len(entries)
            out[origin] = {
                "g": st.generation,
                "v": st.version,
                "f": st.floor,
                "r": int(base < 0),
                "b": max(base, 0),
                "e": entries,
            }
        return {"o": out}

    def apply(self, delta: Any) -> list[Change]:
        """Merge a peer's delta; return the changes (also sent to listeners).

        The whole delta is validated first: ValueError, and nothing changed,
        if any part is malformed.
        """
        parts = _parse_delta(delta)
        changes: list[Change] = []
        for part in parts:
            changes.extend(self._apply_part(part))
        self._notify(changes)
        return changes

    def forget(self, origin: str) -> list[Change]:
        """Drop everything held of ``origin`` (a member that died or left)."""
        if origin == self._self:
            raise ValueError("cannot forget ourselves")
        st = self._states.pop(origin, None)
        if st is None:
            return []
        self._forgotten[origin] = st.generation
        changes = self._replace(origin, st, None)
        self._notify(changes)
        return changes

    def remember(self, origin: str) -> None:
        """Accept ``origin``'s state again, even of the generation ``forget``
        dropped: it was declared dead, but it is alive (a false death it
        refuted, a healed partition), so its current state is real again."""
        self._forgotten.pop(origin, None)

    # --- internals ---------------------------------------------------------------

    def _base_for(self, st: _Origin, remote: tuple[int, int, int] | None) -> int | None:
        """From where to send ``st`` to a peer at ``remote``: -1 reset, None nothing."""
        if remote is None:
            return -1
        gen, version, floor = remote
        if gen != st.generation:
            return -1 if gen < st.generation else None
        if st.version <= version:
            return None
        if st.floor > max(version, floor):
            return -1  # it may hold values deleted by tombstones we have dropped
        if max(st.version, st.floor) < floor:
            return None  # mid-reset past what we cover: our stale values could leak
        return version

    def _apply_part(self, part: _Part) -> list[Change]:
        origin = part.origin
        if origin == self._self:
            if part.generation > self._own.generation:
                log.warning(
                    "a peer holds our state at generation %d, newer than ours (%d)",
                    part.generation,
                    self._own.generation,
                )
            return []
        if part.generation <= self._forgotten.get(origin, -1):
            return []
        st = self._states.get(origin)
        if st is None or part.generation > st.generation:
            return self._reset(part, st) if part.reset else []
        if part.generation < st.generation or part.version <= st.version:
            return []
        continues = (
            part.base <= st.version
            and part.floor <= max(st.version, st.floor)
            and max(part.version, part.floor) >= st.floor
        )
        if continues:
            return self._extend(part, st)
        return self._reset(part, st) if part.reset else []

    def _extend(self, part: _Part, st: _Origin) -> list[Change]:
        changes: list[Change] = []
        held = st.version
        for key, version, value in part.entries:
            if version <= held:
                continue
            change = self._put(part.origin, st, key, version, value)
            if change:
                changes.append(change)
            st.version = version
        self._prune(st)
        return changes

    def _reset(self, part: _Part, old: _Origin | None) -> list[Change]:
        new = _Origin(part.generation, floor=part.floor)
        for key, version, value in part.entries:
            _store(new, key, version, value)
            new.version = version
        self._states[part.origin] = new
        self._forgotten.pop(part.origin, None)
        changes = self._replace(part.origin, old, new)
        self._prune(new)
        return changes

    def _replace(self, origin: str, old: _Origin | None, new: _Origin | None) -> list[Change]:
        """Changes (and index updates) from ``old`` to ``new`` state of ``origin``."""
        empty: OrderedDict[str, tuple[int, Value | None]] = OrderedDict()
        old_entries = old.entries if old else empty
        new_entries = new.entries if new else empty
        same_gen = old is not None and new is not None and old.generation == new.generation
        changes: list[Change] = []
        for key, (version, value) in new_entries.items():
            if value is None:
                continue
            before = old_entries.get(key)
            old_value = before[1] if before else None
            if old_value is None:
                self._index(origin, key, True)
            if (same_gen and before and before[0] == version) or old_value == value:
                continue
            changes.append(Change(origin, key, value))
        for key, (_, value) in old_entries.items():
            after = new_entries.get(key)
            if value is not None and (after is None or after[1] is None):
                self._index(origin, key, False)
                changes.append(Change(origin, key, None))
        return changes

    def _put(
        self, origin: str, st: _Origin, key: str, version: int, value: Value | None
    ) -> Change | None:
        """Store one write; the change if the live value differs."""
        before = st.entries.get(key)
        old_value = before[1] if before else None
        _store(st, key, version, value)
        if old_value is None and value is None:
            return None
        if old_value is None or value is None:
            self._index(origin, key, value is not None)
        elif old_value == value:
            return None
        return Change(origin, key, value)

    def _index(self, origin: str, key: str, live: bool) -> None:
        if not key.startswith(self._prefix):
            return
        if live:
            self._holders.setdefault(key, set()).add(origin)
            return
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(origin)
            if not holders:
                del self._holders[key]

    def _prune(self, st: _Origin) -> None:
        """Drop the oldest half of the tombstones past the limit; raise the floor."""
        if len(st.tombstones) <= self._max_tombstones:
            return
        for _ in range(len(st.tombstones) // 2):
            key, version = st.tombstones.popitem(last=False)
            del st.entries[key]
            st.floor = max(st.floor, version)

    def _notify(self, changes: list[Change]) -> None:
        for listener in self._listeners:
            for change in changes:
                try:
                    listener(change)
                except Exception:
                    log.exception("state change listener failed on %s", change)


def _store(st: _Origin, key: str, version: int, value: Value | None) -> None:
    """Record a write in the entry and tombstone orders (no index, no changes)."""
    before = st.entries.get(key)
    st.entries[key] = (version, value)
    st.entries.move_to_end(key)
    if value is None:
        st.tombstones[key] = version
        st.tombstones.move_to_end(key)
    elif before is not None and before[1] is None:
        del st.tombstones[key]


def _entries_after(st: _Origin, base: int, limit: int) -> list[list[Any]]:
    """Wire entries with versions above ``base``, oldest first, at most ``limit``.

    From base 0 it walks forward and stops at ``limit``; otherwise it walks
    back from the newest and stops at ``base``: O(entries sent or newer than
    ``base``), never O(keys).
    """
    out: list[list[Any]] = []
    if limit <= 0:
        return out
    if base == 0:
        for key, (version, value) in st.entries.items():
            out.append([key, version, value])
            if len(out) == limit:
                break
        return out
    for key in reversed(st.entries):
        version, value = st.entries[key]
        if version <= base:
            break
        out.append([key, version, value])
    out.reverse()
    return out[:limit]
