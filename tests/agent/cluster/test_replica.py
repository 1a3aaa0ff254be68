"""The replicated registry map: last writer wins, tombstones, deltas, anti-entropy."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from agent.cluster.hlc import HybridClock, Timestamp
from agent.cluster.replica import Entry, Replica, push_pull

MINUTE_MS = 60_000
DAY_S = 24 * 3600.0
T0 = 1_700_000_000_000


class Sim:
    """Simulated real time; each node's physical clock reads it with its own skew."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def clock(self, skew_ms: int = 0) -> Callable[[], int]:
        return lambda: self.ms + skew_ms


def replica(sim: Sim, node: str, skew_ms: int = 0, ttl_s: float = DAY_S) -> Replica:
    clock = HybridClock(node, sim.clock(skew_ms), max_drift_ms=MINUTE_MS)
    return Replica(clock, tombstone_ttl_s=ttl_s)


def state(r: Replica) -> dict[str, dict[str, object]]:
    return dict(r.items())


def spec(uri: str) -> dict[str, object]:
    return {"uri": uri, "runtime": "mlserver", "labels": {"team": "x"}}


# --- local writes and last-writer-wins ---------------------------------------


def test_put_get_delete() -> None:
    r = replica(Sim(), "a")
    value = spec("s3://b/m1")
    e = r.put("model/m1", value)
    value["uri"] = "changed after put"  # the replica keeps its own copy
    assert r.get("model/m1") == spec("s3://b/m1") and len(r) == 1
    t = r.delete("model/m1")
    assert t.deleted and t.stamp > e.stamp
    assert r.get("model/m1") is None and r.entry("model/m1") == t and len(r) == 0
    # Deleting an unknown key still leaves a tombstone, to beat a put in flight.
    assert r.delete("model/never").deleted and r.entry("model/never") is not None
    with pytest.raises(ValueError, match="key is empty"):
        r.put("", {})


def test_apply_keeps_the_newest_in_any_order_and_is_idempotent() -> None:
    sim = Sim()
    a, b = replica(sim, "a"), replica(sim, "b")
    old = a.put("model/m", spec("old"))
    sim.ms += 1
    new = b.put("model/m", spec("new"))
    for order in ([old, new], [new, old], [new, new, old, old]):
        c = replica(sim, "c")
        c.apply(order)
        assert c.get("model/m") == spec("new")
    c = replica(sim, "c")
    assert c.apply([new]) == [new]
    assert c.apply([new, old]) == []  # nothing changed


def test_a_tombstone_beats_an_older_put_and_loses_to_a_newer_one() -> None:
    sim = Sim()
    a, b = replica(sim, "a"), replica(sim, "b")
    put = a.put("model/m", spec("v1"))
    sim.ms += 1
    tomb = b.delete("model/m")
    assert a.apply([tomb]) == [tomb] and a.get("model/m") is None
    sim.ms += 1
    again = a.put("model/m", spec("v2"))
    assert b.apply([put, again]) == [again] and b.get("model/m") == spec("v2")


def test_a_node_five_minutes_ahead_does_not_lock_others_out_of_a_key() -> None:
    sim = Sim()
    fast, slow = replica(sim, "fast", skew_ms=5 * MINUTE_MS), replica(sim, "slow")
    first = fast.put("vmodel/v", {"active": "m1", "target": "m1"})
    slow.apply([first])
    sim.ms += 1_000  # well before real time reaches the fast stamp
    second = slow.put("vmodel/v", {"active": "m2", "target": "m2"})
    assert second.stamp > first.stamp
    fast.apply([second])
    assert fast.get("vmodel/v") == slow.get("vmodel/v") == {"active": "m2", "target": "m2"}
    assert slow.clock.ahead_observed == 1


def test_equal_stamps_resolve_the_same_way_everywhere() -> None:
    """Impossible between correct nodes, but replicas must still agree."""
    stamp = Timestamp(T0, 0, "x")
    v1, v2, tomb = Entry("k", {"a": 1}, stamp), Entry("k", {"a": 2}, stamp), Entry("k", None, stamp)
    sim = Sim()
    for batch in ([v1, v2, tomb], [tomb, v2, v1], [v2, v1]):
        r = replica(sim, "r")
        r.apply(batch)
        assert r.entry("k") == (tomb if tomb in batch else v2)


# --- deltas and the wire -----------------------------------------------------


def test_delta_since_returns_each_changed_key_once_oldest_first() -> None:
    r = replica(Sim(), "a")
    assert r.delta_since(0) == ([], 0)
    r.put("k1", {"n": 1})
    v1 = r.version
    r.put("k2", {"n": 2})
    r.put("k1", {"n": 3})  # k1 changed again: sent once, at its newest position
    r.delete("k3")
    entries, version = r.delta_since(v1)
    assert [(e.key, e.value) for e in entries] == [("k2", {"n": 2}), ("k1", {"n": 3}), ("k3", None)]
    assert version == r.version == 4
    first, v = r.delta_since(0, limit=2)
    rest, v_end = r.delta_since(v)
    assert [e.key for e in first + rest] == ["k2", "k1", "k3"] and v_end == 4
    assert r.delta_since(4) == ([], 4)


def test_entries_round_trip_through_the_wire_form() -> None:
    r = replica(Sim(), "node.with.dots")
    for e in (r.put("model/m", spec("u")), r.delete("model/n")):
        assert Entry.from_wire(e.to_wire()) == e


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be an object"),
        ({"k": "", "v": None, "t": "1.0.n"}, "non-empty string"),
        ({"k": "m", "v": [1], "t": "1.0.n"}, "object or null"),
        ({"k": "m", "v": None, "t": 5}, "stamp 't' must be a string"),
        ({"k": "m", "v": None, "t": "1.0"}, "timestamp"),
        ({"k": "m", "v": {"x": float("nan")}, "t": "1.0.n"}, "not plain JSON"),
    ],
)
def test_malformed_wire_entries_are_rejected(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Entry.from_wire(data)


# --- anti-entropy ------------------------------------------------------------


def test_push_pull_with_one_difference_among_100000_keys_sends_one_bucket() -> None:
    sim = Sim()
    a, b = replica(sim, "a"), replica(sim, "b")
    for i in range(100_000):
        a.put(f"model/m{i}", {"uri": f"s3://b/m{i}"})
    b.apply(a.entries())
    assert push_pull(a, b) == 0  # equal digests: nothing but the digest travels
    b.put("model/m77", {"uri": "s3://b/new"})
    assert len(a.diff(b.digest())) == 1
    sent = push_pull(a, b)
    assert 0 < sent < 1_500  # about 2 x 100,000 / 256, not 100,000
    assert a.get("model/m77") == {"uri": "s3://b/new"}
    assert a.digest() == b.digest()


def test_malformed_digests_and_buckets_are_rejected() -> None:
    r = replica(Sim(), "a")
    with pytest.raises(ValueError, match="list of 256"):
        r.diff(["0" * 32] * 3)
    with pytest.raises(ValueError, match="list of 256"):
        r.diff("nope")
    with pytest.raises(ValueError, match=r"not in 0\.\.255"):
        r.entries_in([256])


# --- tombstones, partitions, rejoining ----------------------------------------


def test_gc_drops_tombstones_only_after_the_ttl() -> None:
    sim = Sim()
    r = replica(sim, "a", ttl_s=60)
    r.put("model/live", spec("u"))
    r.delete("model/gone")
    sim.ms += 60_000
    assert r.gc() == 0
    sim.ms += 1
    assert r.gc() == 1
    assert r.entry("model/gone") is None and r.get("model/live") == spec("u")
    assert [e.key for e in r.delta_since(0)[0]] == ["model/live"]


def test_an_expired_tombstone_deletes_an_old_value_but_is_not_kept() -> None:
    """So tombstones cannot ping-pong between nodes that collect them at different times."""
    sim = Sim()
    a, b = replica(sim, "a", ttl_s=60), replica(sim, "b", skew_ms=-5_000, ttl_s=60)
    put = a.put("model/m", spec("u"))
    b.apply([put, a.delete("model/m")])
    sim.ms += 63_000  # expired for a, not yet for b (its clock is 5 s behind)
    assert a.gc() == 1
    assert push_pull(b, a) > 0  # b still has the tombstone and offers it back...
    assert a.entry("model/m") is None  # ...but a refuses to keep it
    sim.ms += 5_000
    assert b.gc() == 1 and a.digest() == b.digest()
    # And a stale replica that still has the value is cleaned, not resurrecting it.
    c = replica(sim, "c", ttl_s=60)
    c.apply([put])
    expired = Entry("model/m", None, Timestamp(put.stamp.wall_ms + 1, 0, "a"))
    assert c.apply([expired]) == [expired] and c.entry("model/m") is None


def test_a_deleted_model_stays_deleted_when_a_partitioned_node_rejoins() -> None:
    sim = Sim()
    nodes = [replica(sim, f"n{i}", skew_ms=(i - 1) * MINUTE_MS) for i in range(3)]
    a, b, c = nodes
    put = a.put("model/m", spec("u"))
    b.apply([put])
    c.apply([put])
    # c is partitioned away; the others delete the model and run gc for hours.
    a.apply([b.delete("model/m")])
    sim.ms += 6 * 3600 * 1000
    assert a.gc() == b.gc() == 0  # within the TTL: the tombstone stays
    assert not c.needs_full_sync(last_seen_ms=sim.ms - 6 * 3600 * 1000)
    push_pull(c, a)
    push_pull(c, b)
    assert [r.get("model/m") for r in nodes] == [None, None, None]


def test_a_node_back_after_the_ttl_forgets_old_entries_and_keeps_recent_ones() -> None:
    sim = Sim()
    a, c = replica(sim, "a", ttl_s=3600), replica(sim, "c", ttl_s=3600)
    c.apply([a.put("model/old", spec("u"))])
    last_seen = sim.ms
    a.delete("model/old")
    sim.ms += 2 * 3600 * 1000
    a.gc()
    recent = c.put("model/registered-while-away", spec("r"))
    # Pushing c's state as it is would bring the deleted model back:
    stale, careless = replica(sim, "c2", ttl_s=3600), replica(sim, "a2", ttl_s=3600)
    stale.apply(c.entries())
    careless.apply(a.entries())
    push_pull(stale, careless)
    assert careless.get("model/old") == spec("u")
    assert c.needs_full_sync(last_seen_ms=last_seen)
    assert c.forget_older_than(sim.ms - 3600 * 1000) == 1
    push_pull(c, a)
    assert a.get("model/old") is None and c.get("model/old") is None
    assert a.entry("model/registered-while-away") == recent


# --- the property test ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_random_schedule_converges_to_the_last_writer_everywhere(seed: int) -> None:
    """Seeded random writes, conflicts, lost deltas, partitions and restarts on
    five nodes with clocks up to 5 minutes apart; after one full round of
    anti-entropy every replica holds the newest write of every key, so a
    deleted model is deleted everywhere."""
    rng = random.Random(seed)
    sim = Sim()
    n = 5
    skews = [rng.randint(-5 * MINUTE_MS, 5 * MINUTE_MS) for _ in range(n)]
    nodes = [replica(sim, f"n{i}", skews[i]) for i in range(n)]
    keys = [f"model/m{k}" for k in range(12)] + [f"vmodel/v{k}" for k in range(4)]
    written: list[Entry] = []
    sent = [[0] * n for _ in range(n)]  # sent[i][j]: i's version last piggybacked to j
    cut: set[int] = set()

    def write(i: int, key: str, step: int) -> None:
        if rng.random() < 0.3:
            written.append(nodes[i].delete(key))
        else:
            written.append(nodes[i].put(key, {"uri": f"s3://b/{key}/{step}", "by": i}))

    def linked(i: int, j: int) -> bool:
        return (i in cut) == (j in cut)

    for step in range(500):
        sim.ms += rng.randint(0, 200)
        roll = rng.random()
        i, j = rng.sample(range(n), 2)
        if roll < 0.4:
            write(i, rng.choice(keys), step)
        elif roll < 0.5:  # concurrent conflicting writes: neither has seen the other
            key = rng.choice(keys)
            write(i, key, step)
            write(j, key, step)
        elif roll < 0.8:  # piggybacked delta, lost 30% of the time or across the cut
            delta, sent[i][j] = nodes[i].delta_since(sent[i][j], limit=rng.randint(1, 8))
            if linked(i, j) and rng.random() > 0.3:
                nodes[j].apply(Entry.from_wire(e.to_wire()) for e in delta)
        elif roll < 0.95:
            if linked(i, j):
                push_pull(nodes[i], nodes[j])
        elif roll < 0.98:
            cut = set() if cut else set(rng.sample(range(n), rng.randint(1, 2)))
        else:  # restart with the physical clock stepped back a minute
            skews[i] -= MINUTE_MS
            stored = list(nodes[i].entries())  # what its durable store would reload
            nodes[i] = replica(sim, f"n{i}", skews[i])
            nodes[i].apply(stored)
            sent[i] = [0] * n

    for i in range(1, n):  # one full round: node 0 gathers everything...
        push_pull(nodes[0], nodes[i])
    for i in range(1, n):  # ...and hands it back
        push_pull(nodes[0], nodes[i])

    assert len({e.stamp for e in written}) == len(written)  # a stamp names one write
    newest: dict[str, Entry] = {}
    for e in written:
        if e.key not in newest or e.stamp > newest[e.key].stamp:
            newest[e.key] = e
    expected = {k: e.value for k, e in newest.items() if e.value is not None}
    assert any(e.deleted for e in newest.values())  # the schedule did delete something
    rebuilt = replica(sim, "fresh")  # the incrementally kept digest matches a fresh one
    rebuilt.apply(nodes[0].entries())
    for r in nodes:
        assert state(r) == expected
        assert r.digest() == nodes[0].digest() == rebuilt.digest()
