"""Per-node versioned state: own writes, Scuttlebutt deltas, tombstones, resets, generations."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from agent.cluster.states import Change, NodeStates

A, B, C, D = "10.0.0.1:8034", "10.0.0.2:8034", "10.0.0.3:8034", "10.0.0.9:8034"


def node(origin: str, generation: int = 1, max_tombstones: int = 10_000) -> NodeStates:
    return NodeStates(origin, generation, max_tombstones=max_tombstones)


def exchange(a: NodeStates, b: NodeStates, n: int = 1000) -> None:
    """One push-pull round, as the transport does it."""
    a.apply(b.delta_for(a.digest(), n))
    b.apply(a.delta_for(b.digest(), n))


def live(s: NodeStates, origin: str) -> dict[str, Any]:
    return dict(s.items(origin))


def view(s: NodeStates) -> dict[str, dict[str, Any]]:
    return {o: live(s, o) for o in s.origins()}


def converge(nodes: list[NodeStates], n: int, max_rounds: int = 500) -> int:
    """Exchange between every pair until all digests agree; return the rounds taken."""
    for rounds in range(max_rounds):
        heads = [{o: (g, v) for o, (g, v, _) in s.digest().items()} for s in nodes]
        if all(h == heads[0] for h in heads):
            return rounds
        for a in nodes:
            for b in nodes:
                if a is not b:
                    exchange(a, b, n)
    raise AssertionError(f"no convergence after {max_rounds} rounds")


def assert_holds_owners_state(nodes: list[NodeStates]) -> None:
    owners = {s.self_origin: s for s in nodes}
    for s in nodes:
        assert s.origins() == sorted(owners)
        for origin, owner in owners.items():
            assert live(s, origin) == live(owner, origin), (s.self_origin, origin)
            assert s.version(origin) == owner.version(origin)
            assert s.key_count(origin) == owner.key_count(origin)


class Mirror:
    """Rebuilds a node's view from its change stream alone."""

    def __init__(self, s: NodeStates) -> None:
        self.data: dict[tuple[str, str], Any] = {
            (o, k): v for o in s.origins() for k, v in s.items(o)
        }
        self.changes: list[Change] = []
        s.on_change(self.on_change)

    def on_change(self, change: Change) -> None:
        self.changes.append(change)
        if change.value is None:
            self.data.pop((change.origin, change.key), None)
        else:
            self.data[(change.origin, change.key)] = change.value

    def matches(self, s: NodeStates) -> bool:
        return self.data == {(o, k): v for o in s.origins() for k, v in s.items(o)}


# --- own writes ----------------------------------------------------------------


def test_own_writes_bump_versions_and_equal_set_is_a_no_op() -> None:
    s = node(A)
    assert s.self_origin == A and s.origins() == [A] and s.version(A) == 0
    value = {"s": 10}
    assert s.set("m/x", value)
    value["s"] = 99  # the state keeps its own copy
    assert s.get(A, "m/x") == {"s": 10} and s.version(A) == 1
    assert not s.set("m/x", {"s": 10}) and s.version(A) == 1
    assert s.set("m/x", {"s": 11}) and s.version(A) == 2
    assert s.set("node", {"free": 5}) and s.key_count(A) == 2
    assert s.delete("m/x") and s.version(A) == 4 and s.get(A, "m/x") is None
    assert not s.delete("m/x") and not s.delete("never") and s.version(A) == 4
    assert list(s.items(A)) == [("node", {"free": 5})] and s.key_count(A) == 1
    assert s.digest() == {A: [1, 4, 0]}
    assert s.version("unknown") == 0 and s.get("unknown", "k") is None
    assert list(s.items("unknown")) == [] and s.key_count("unknown") == 0
    with pytest.raises(ValueError):
        s.set("", {})
    with pytest.raises(ValueError):
        s.set("k" * 513, {})
    with pytest.raises(ValueError, match="plain JSON"):
        s.set("k", {"x": float("nan")})
    with pytest.raises(ValueError, match="plain JSON"):
        s.set("k", {"x": object()})


def test_holders_follow_set_delete_forget_and_reset() -> None:
    a, b = node(A), node(B)
    a.set("m/x", {"s": 1})
    b.set("m/x", {"s": 1})
    b.set("m/y", {"s": 2})
    a.set("node", {"free": 1})
    exchange(a, b)
    assert a.holders("m/x") == [A, B] and a.holders("m/y") == [B] and a.holders("m/z") == []
    with pytest.raises(ValueError, match="not indexed"):
        a.holders("node")
    b.delete("m/x")
    exchange(a, b)
    assert a.holders("m/x") == [A]
    a.delete("m/x")
    assert a.holders("m/x") == []
    a.forget(B)
    assert a.holders("m/y") == [] and a.origins() == [A]
    exchange(a, b)  # B's forgotten generation is not taken back
    assert a.holders("m/y") == []
    # B restarts without m/y and with m/x.
    b2 = node(B, generation=2)
    b2.set("m/x", {"s": 3})
    exchange(a, b2)
    assert a.holders("m/x") == [B] and a.holders("m/y") == []


# --- exchanges -------------------------------------------------------------------


def test_two_nodes_exchange_and_converge() -> None:
    a, b = node(A), node(B)
    a.set("node", {"free": 1})
    b.set("node", {"free": 2})
    b.set("m/q", {"s": 7})
    exchange(a, b)
    assert (
        view(a) == view(b) == {A: {"node": {"free": 1}}, B: {"node": {"free": 2}, "m/q": {"s": 7}}}
    )
    assert a.digest() == b.digest()
    # Up to date: nothing to send either way.
    assert a.delta_for(b.digest(), 10) == {"o": {}} and b.delta_for(a.digest(), 10) == {"o": {}}
    b.delete("m/q")
    b.set("node", {"free": 3})
    delta = b.delta_for(a.digest(), 10)
    assert delta == {
        "o": {
            B: {
                "g": 1,
                "v": 4,
                "f": 0,
                "r": 0,
                "b": 2,
                "e": [["m/q", 3, None], ["node", 4, {"free": 3}]],
            }
        }
    }
    assert a.apply(delta) == [Change(B, "m/q", None), Change(B, "node", {"free": 3})]
    assert a.apply(delta) == []  # idempotent
    assert view(a) == view(b)


def test_relay_through_a_third_node_and_chunking() -> None:
    a, b, c = node(A), node(B), node(C)
    for i in range(10):
        a.set(f"m/{i}", {"s": i})
    a.delete("m/3")
    a.set("m/0", {"s": 100})
    exchange(a, b, n=3)
    assert b.version(A) == 5  # cut after m/1, m/2, m/4: it continues from there
    for _ in range(3):
        exchange(a, b, n=3)
    assert live(b, A) == live(a, A) and b.version(A) == a.version(A)
    # C learns A's state from B alone, chunked again.
    for _ in range(6):
        exchange(b, c, n=2)
    assert live(c, A) == live(a, A) and c.version(A) == a.version(A)
    assert c.get(A, "m/3") is None


def test_budget_is_shared_between_origins() -> None:
    a, b, c = node(A), node(B), node(C)
    for i in range(50):
        a.set(f"k{i}", {"i": i})
    for i in range(3):
        b.set(f"k{i}", {"i": i})
    exchange(a, c, n=1000)
    exchange(b, c, n=1000)
    fresh = node("10.0.0.4:8034")
    delta = c.delta_for(fresh.digest(), 10)["o"]
    sizes = {o: len(part["e"]) for o, part in delta.items()}
    # C has nothing of its own: an empty reset; B needs 3, A gets the rest.
    assert sizes == {C: 0, B: 3, A: 7}
    assert all(part["r"] == 1 for part in delta.values())
    assert sum(len(p["e"]) for p in c.delta_for(fresh.digest(), 1)["o"].values()) <= 1


def test_delta_cost_follows_changes_not_keys() -> None:
    a, b = node(A), node(B)
    n = 100_000
    for i in range(n):
        a.set(f"m/{i}", {"s": i})
    b.apply(a.delta_for(b.digest(), n + 10))
    assert b.key_count(A) == n and b.version(A) == n
    a.set("m/7", {"s": -1})
    delta = a.delta_for(b.digest(), 1000)
    assert delta == {
        "o": {A: {"g": 1, "v": n + 1, "f": 0, "r": 0, "b": n, "e": [["m/7", n + 1, {"s": -1}]]}}
    }
    assert b.apply(delta) == [Change(A, "m/7", {"s": -1})]
    assert b.holders("m/7") == [A] and b.version(A) == n + 1
    # B relays to C, which is one change behind too.
    c = node(C)
    c.apply(b.delta_for(c.digest(), n + 10))
    a.delete("m/8")
    b.apply(a.delta_for(b.digest(), 1000))
    assert [len(p["e"]) for p in b.delta_for(c.digest(), 1000)["o"].values()] == [1]


# --- tombstones, floors and resets ----------------------------------------------------


def test_tombstone_pruning_raises_the_floor_and_resets_a_peer_behind_it() -> None:
    a, b = node(A, max_tombstones=4), node(B)
    for i in range(8):
        a.set(f"m/{i}", {"s": i})
    exchange(a, b)
    for i in range(5):
        a.delete(f"m/{i}")  # the fifth tombstone prunes the oldest two
    assert a.digest()[A] == [1, 13, 10]
    assert a.key_count(A) == 3
    mirror = Mirror(b)
    delta = a.delta_for(b.digest(), 1000)
    assert delta["o"][A]["r"] == 1 and delta["o"][A]["b"] == 0
    # Live keys and the tombstones still held, from version 0.
    assert [e[0] for e in delta["o"][A]["e"]] == ["m/5", "m/6", "m/7", "m/2", "m/3", "m/4"]
    changes = b.apply(delta)
    # Only keys that differ at the end: the five deleted ones.
    assert sorted(c.key for c in changes) == [f"m/{i}" for i in range(5)]
    assert all(c.value is None for c in changes)
    assert live(b, A) == live(a, A) and b.digest()[A] == [1, 13, 10]
    assert mirror.matches(b)
    for i in range(5):
        assert b.get(A, f"m/{i}") is None and b.holders(f"m/{i}") == []


def test_chunked_reset_converges_and_a_deleted_key_stays_deleted() -> None:
    a, b = node(A, max_tombstones=2), node(B, max_tombstones=2)
    for i in range(12):
        a.set(f"m/{i}", {"s": i})
    exchange(a, b, n=5)  # B holds m/0..m/4 (all live, no floor)
    assert b.version(A) == 5
    for i in range(6):
        a.delete(f"m/{i}")
    a.set("m/new", {"s": 1})
    assert a.digest()[A][2] > b.version(A)  # B is below A's floor: a reset
    mirror = Mirror(b)
    rounds = 0
    while b.version(A) != a.version(A) and rounds < 20:
        b.apply(a.delta_for(b.digest(), 2))
        rounds += 1
        # Never holds a value A deleted, even mid-reset.
        for i in range(6):
            assert b.get(A, f"m/{i}") is None
    assert rounds > 2 and live(b, A) == live(a, A) and b.version(A) == a.version(A)
    assert mirror.matches(b)


def test_a_node_that_learned_by_reset_relays_the_deletes_too() -> None:
    o, y, z = node(D), node(A), node(B)
    o.set("m/x", {"s": 1})
    o.set("m/y", {"s": 2})
    exchange(o, z)  # Z holds x and y at version 2
    o.delete("m/x")
    o.set("m/w", {"s": 3})
    exchange(o, y)  # Y learns D by a reset: it must keep the tombstone of x
    assert y.digest()[D] == [1, 4, 0]
    exchange(y, z)  # Z continues from 2 through Y alone
    assert live(z, D) == live(o, D) and z.get(D, "m/x") is None


def test_a_mid_reset_peer_gets_nothing_from_a_stale_relay() -> None:
    o, x, y = node(D, max_tombstones=2), node(A), node(B)
    o.set("m/a", {"s": 1})
    o.set("m/b", {"s": 2})
    o.set("m/c", {"s": 3})
    exchange(o, x)  # X: a, b, c at version 3
    early = x.delta_for(y.digest(), 100)  # X's reset for Y, delivered late
    o.set("m/d", {"s": 4})
    o.delete("m/b")
    o.delete("m/c")
    o.set("m/e", {"s": 5})
    o.delete("m/d")  # the third tombstone prunes m/b: floor 5
    assert o.digest()[D] == [1, 8, 5]
    y.apply(o.delta_for(y.digest(), 1))  # a reset cut after one entry
    assert y.digest()[D] == [1, 1, 5] and live(y, D) == {"m/a": {"s": 1}}
    # X is ahead of Y by version but covers neither Y's floor nor has m/b's tombstone.
    assert D not in x.delta_for(y.digest(), 100)["o"]
    # The late reset from X is applied as a reset (Y then matches X's older world)...
    y.apply(early)
    assert y.get(D, "m/b") == {"s": 2}
    # ...and D resets Y again, since X's world is below D's floor.
    converge([o, x, y], n=2)
    assert_holds_owners_state([o, x, y])
    assert y.get(D, "m/b") is None and x.get(D, "m/b") is None


def test_a_late_continuation_after_a_shorter_reset_is_not_applied_across_a_gap() -> None:
    a, b = node(A, max_tombstones=2), node(B)
    for i in range(6):
        a.set(f"m/{i}", {"s": i})
    exchange(a, b, n=3)
    assert b.version(A) == 3
    b_digest_at_3 = b.digest()
    exchange(a, b, n=3)
    assert b.version(A) == 6
    a.delete("m/0")
    a.delete("m/1")
    a.delete("m/2")  # floor 7 > B's 6
    b.apply(a.delta_for(b.digest(), 1))  # reset cut: B back at version 4 (m/3)
    assert b.version(A) == 4
    late = a.delta_for(b_digest_at_3, 100)  # a reset too: A's floor is above 3
    stale_normal = {"o": {A: {"g": 1, "v": 9, "f": 7, "r": 0, "b": 6, "e": [["m/2", 9, None]]}}}
    assert b.apply(stale_normal) == []  # continues from 6, B holds 4: a gap
    assert b.version(A) == 4
    b.apply(late)
    exchange(a, b, n=100)
    assert live(b, A) == live(a, A) and b.version(A) == a.version(A)


# --- generations ---------------------------------------------------------------------


def test_restart_with_a_higher_generation_replaces_the_old_state() -> None:
    a1, b, c = node(A, generation=1), node(B), node(C)
    for key in ("node", "m/x", "m/y", "m/z"):
        a1.set(key, {"v": key})
    exchange(a1, b)
    exchange(b, c)
    old_delta = a1.delta_for(node(C).digest(), 100)  # gen 1, delivered late
    a2 = node(A, generation=2)
    a2.set("node", {"v": "node"})
    a2.set("m/x", {"v": "again"})
    mirror = Mirror(b)
    exchange(a2, b)
    assert live(b, A) == {"node": {"v": "node"}, "m/x": {"v": "again"}}
    assert b.digest()[A] == [2, 2, 0]
    # Only keys that end up different: m/x changed, m/y and m/z gone; node unchanged.
    assert sorted(mirror.changes, key=lambda ch: ch.key) == [
        Change(A, "m/x", {"v": "again"}),
        Change(A, "m/y", None),
        Change(A, "m/z", None),
    ]
    # C, still holding generation 1, gets it from B (a reset), never the other way round.
    assert A not in c.delta_for(b.digest(), 100)["o"]
    exchange(b, c)
    assert live(c, A) == live(a2, A)
    # A delta from the previous life is ignored.
    assert c.apply(old_delta) == [] and live(c, A) == live(a2, A)
    # A non-reset delta claiming a newer generation cannot be continued: ignored.
    bogus = {"o": {A: {"g": 3, "v": 9, "f": 0, "r": 0, "b": 2, "e": [["m/q", 9, {}]]}}}
    assert c.apply(bogus) == [] and c.digest()[A] == [2, 2, 0]


def test_restart_with_no_keys_still_clears_peers() -> None:
    a1, b = node(A, generation=1), node(B)
    a1.set("m/x", {"s": 1})
    exchange(a1, b)
    a2 = node(A, generation=5)
    exchange(a2, b)
    assert b.digest()[A] == [5, 0, 0] and live(b, A) == {} and b.holders("m/x") == []


def test_entries_about_self_are_ignored() -> None:
    a, b = node(A), node(B)
    a.set("node", {"free": 1})
    forged = {"o": {A: {"g": 9, "v": 50, "f": 0, "r": 1, "b": 0, "e": [["node", 50, {"free": 0}]]}}}
    assert a.apply(forged) == []
    assert a.get(A, "node") == {"free": 1} and a.digest()[A] == [1, 1, 0]
    # B's stale copy of A never flows back into A.
    exchange(a, b)
    a.set("node", {"free": 2})
    assert A not in b.delta_for(a.digest(), 10)["o"]


def test_forget_drops_an_origin_and_ignores_its_old_generation() -> None:
    a, b, c = node(A), node(B), node(C)
    b.set("m/x", {"s": 1})
    b.set("node", {"free": 1})
    exchange(a, b)
    exchange(a, c)
    mirror = Mirror(a)
    changes = a.forget(B)
    assert sorted(changes, key=lambda ch: ch.key) == [
        Change(B, "m/x", None),
        Change(B, "node", None),
    ]
    assert mirror.changes == changes and a.origins() == [A, C] and a.holders("m/x") == []
    assert a.forget(B) == [] and a.forget("10.9.9.9:1") == []
    with pytest.raises(ValueError):
        a.forget(A)
    # C has not forgotten B yet: what it relays of B's old life is ignored.
    exchange(a, c)
    assert a.origins() == [A, C]
    # B restarted: its new generation is taken.
    b2 = node(B, generation=2)
    b2.set("node", {"free": 9})
    exchange(a, b2)
    assert a.origins() == [A, B, C] and live(a, B) == {"node": {"free": 9}}


# --- listeners ------------------------------------------------------------------------


def test_listeners_receive_the_changes() -> None:
    a, b = node(A), node(B)
    got: list[Change] = []
    b.on_change(got.append)

    def broken(change: Change) -> None:
        raise RuntimeError("listener bug")

    a.on_change(broken)  # logged, does not break the writer
    a.set("m/x", {"s": 1})
    a.set("node", {"free": 1})
    exchange(a, b)
    assert got == [Change(A, "m/x", {"s": 1}), Change(A, "node", {"free": 1})]
    got.clear()
    own: list[Change] = []
    b.on_change(own.append)
    b.set("node", {"free": 2})
    b.set("node", {"free": 2})  # equal: no change
    b.delete("node")
    assert own == [Change(B, "node", {"free": 2}), Change(B, "node", None)] == got
    got.clear()
    a.delete("m/x")
    a.set("m/x", {"s": 1})  # back to the value B holds: B sees no change
    returned = b.apply(a.delta_for(b.digest(), 10))
    assert returned == got == []
    assert b.version(A) == a.version(A)


# --- untrusted input --------------------------------------------------------------------


def _good_delta() -> dict[str, Any]:
    return {
        "o": {
            C: {"g": 1, "v": 2, "f": 0, "r": 0, "b": 0, "e": [["m/ok", 1, {"s": 1}]]},
            D: {"g": 1, "v": 3, "f": 0, "r": 1, "b": 0, "e": [["k", 1, {}], ["j", 3, None]]},
        }
    }


def _bad(path: list[Any], value: Any) -> dict[str, Any]:
    delta = copy.deepcopy(_good_delta())
    target: Any = delta
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return delta


MALFORMED_DELTAS = [
    None,
    [],
    {},
    {"o": []},
    {"o": {"": {}}},
    {"o": {"x" * 513: {}}},
    {"o": {3: {}}},
    _bad(["o", D], []),
    _bad(["o", D, "g"], -1),
    _bad(["o", D, "g"], True),
    _bad(["o", D, "g"], 1.0),
    _bad(["o", D, "v"], "3"),
    _bad(["o", D, "f"], None),
    _bad(["o", D, "r"], 2),
    _bad(["o", D, "r"], True),
    _bad(["o", D, "b"], 1),  # a reset with a base
    _bad(["o", C, "b"], 5),  # base above version
    _bad(["o", D, "e"], {}),
    _bad(["o", D, "e", 0], ["k", 1]),
    _bad(["o", D, "e", 0], "k"),
    _bad(["o", D, "e", 0, 0], ""),
    _bad(["o", D, "e", 0, 0], 7),
    _bad(["o", D, "e", 0, 1], 0),  # not above the base
    _bad(["o", D, "e", 0, 1], 3),  # not increasing
    _bad(["o", D, "e", 1, 1], 4),  # above the origin's version
    _bad(["o", D, "e", 0, 1], False),
    _bad(["o", D, "e", 0, 2], [1]),
    _bad(["o", D, "e", 0, 2], "value"),
]


@pytest.mark.parametrize("delta", MALFORMED_DELTAS)
def test_malformed_deltas_raise_and_change_nothing(delta: Any) -> None:
    a = node(A)
    a.set("m/x", {"s": 1})
    a.apply({"o": {B: {"g": 1, "v": 1, "f": 0, "r": 1, "b": 0, "e": [["m/x", 1, {"s": 2}]]}}})
    got: list[Change] = []
    a.on_change(got.append)
    before = (a.digest(), view(a), a.holders("m/x"))
    with pytest.raises(ValueError):
        a.apply(delta)
    assert (a.digest(), view(a), a.holders("m/x")) == before and got == []
    assert a.apply(_good_delta())  # the well-formed one does apply


@pytest.mark.parametrize(
    "digest",
    [
        None,
        [],
        {"": [1, 1, 0]},
        {A: [1, 1]},
        {A: [1, 1, 0, 0]},
        {A: [1, -1, 0]},
        {A: [1, True, 0]},
        {A: [1, 1.5, 0]},
        {A: "1,1,0"},
        {A: None},
        {5: [1, 1, 0]},
    ],
)
def test_malformed_digests_raise(digest: Any) -> None:
    a = node(A)
    a.set("node", {"free": 1})
    with pytest.raises(ValueError):
        a.delta_for(digest, 10)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        NodeStates("", 1)
    with pytest.raises(ValueError):
        NodeStates(A, -1)
    with pytest.raises(ValueError):
        NodeStates(A, 1, max_tombstones=0)
    with pytest.raises(ValueError):
        node(A).delta_for({}, 0)


# --- property test -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_random_writes_drops_delays_and_restarts_converge(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"10.0.1.{i}:8034" for i in range(rng.randint(5, 8))]
    max_tombstones = rng.randint(1, 6)
    generation = dict.fromkeys(names, 1)
    nodes: dict[str, NodeStates] = {}
    mirrors: dict[str, Mirror] = {}

    def boot(name: str) -> None:
        nodes[name] = NodeStates(name, generation[name], max_tombstones=max_tombstones)
        mirrors[name] = Mirror(nodes[name])

    for name in names:
        boot(name)
    delayed: list[tuple[str, dict[str, Any]]] = []  # (receiver, delta)

    def send(receiver: str, delta: dict[str, Any]) -> None:
        roll = rng.random()
        if roll < 0.15:
            return  # lost
        if roll < 0.35:
            delayed.append((receiver, delta))
        else:
            nodes[receiver].apply(delta)

    for _ in range(600):
        roll = rng.random()
        name = rng.choice(names)
        me = nodes[name]
        if roll < 0.35:
            me.set(f"m/{rng.randrange(12)}", {"s": rng.randrange(3)})
        elif roll < 0.5:
            me.delete(f"m/{rng.randrange(12)}")
        elif roll < 0.52:
            generation[name] += 1
            boot(name)
            for i in rng.sample(range(12), rng.randint(0, 3)):
                nodes[name].set(f"m/{i}", {"s": 9})
        elif roll < 0.6 and delayed:
            receiver, delta = delayed.pop(rng.randrange(len(delayed)))
            nodes[receiver].apply(delta)
        else:
            other = rng.choice([n for n in names if n != name])
            n = rng.randint(1, 4)
            digest = me.digest()
            reply = nodes[other].delta_for(digest, n)
            other_digest = nodes[other].digest()
            send(name, reply)
            send(other, me.delta_for(other_digest, n))
    rng.shuffle(delayed)
    for receiver, delta in delayed:
        nodes[receiver].apply(delta)

    everyone = [nodes[n] for n in names]
    converge(everyone, n=rng.randint(1, 4))
    assert_holds_owners_state(everyone)
    for name in names:
        assert mirrors[name].matches(nodes[name])
        for key in (f"m/{i}" for i in range(12)):
            expected = sorted(n for n in names if nodes[n].get(n, key) is not None)
            assert nodes[name].holders(key) == expected


# --- digest diffs --------------------------------------------------------------------


def test_a_digest_diff_rebuilds_the_whole_digest() -> None:
    a, b = node(A), node(B)
    a.set("k", {"v": 1})
    b.set("k", {"v": 2})
    exchange(a, b)
    c = node(C)
    c.set("x", {"v": 1})
    b.apply(c.delta_for({}, 100))  # b knows C; a does not
    a.set("k", {"v": 3})  # a is ahead of b on A
    d = node(D)
    a.apply(d.delta_for({}, 100))  # a knows D; b does not
    sent = a.digest()
    diff = b.digest_diff(sent)
    assert set(diff) == {A, C, D}  # A differs, C only at b, D only at a
    assert diff[D] is None
    assert NodeStates.patch_digest(sent, diff) == b.digest()


def test_nodes_that_agree_have_an_empty_diff() -> None:
    a, b = node(A), node(B)
    a.set("k", {"v": 1})
    b.set("k", {"v": 1})
    converge([a, b], 100)
    assert b.digest_diff(a.digest()) == {}
    assert NodeStates.patch_digest(a.digest(), {}) == b.digest()


@pytest.mark.parametrize("diff", [None, [], {A: [1, 2]}, {A: "x"}, {A: [1, -1, 0]}])
def test_a_malformed_digest_diff_is_refused(diff: Any) -> None:
    with pytest.raises(ValueError):
        NodeStates.patch_digest({A: [1, 1, 0]}, diff)


def test_a_malformed_digest_has_no_diff() -> None:
    with pytest.raises(ValueError):
        node(A).digest_diff({B: [1, 2]})
