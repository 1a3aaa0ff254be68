"""Rendezvous hashing: one owner per name, and little moves when members change."""

from __future__ import annotations

from collections import Counter

from agent.kube.ownership import Ownership

NAMES = [f"model-{i}" for i in range(3000)]


def test_alone_owns_everything() -> None:
    alone = Ownership("me")
    assert alone.alone
    assert alone.owner_of("anything") == ("me", 0)
    assert alone.refresh() == (set(), set())


def test_every_member_computes_the_same_owner_and_names_spread_evenly() -> None:
    members = ["10.0.0.1:8034", "10.0.0.2:8034", "10.0.0.3:8034"]
    views = [Ownership(m, lambda: members) for m in members]
    for view in views:
        view.refresh()
    owners = [views[0].owner_of(n)[0] for n in NAMES]
    for view in views[1:]:
        assert [view.owner_of(n)[0] for n in NAMES] == owners
    counts = Counter(owners)
    assert set(counts) == set(members)
    assert min(counts.values()) > len(NAMES) / 3 * 0.85


def test_reassign_after_join_and_leave_matches_a_full_recompute() -> None:
    members = ["a", "b", "c"]
    own = Ownership("a", lambda: members)
    own.refresh()
    before = {n: own.owner_of(n) for n in NAMES}
    members[:] = ["a", "c", "d", "e"]  # b left, d and e joined
    added, removed = own.refresh()
    assert (added, removed) == ({"d", "e"}, {"b"})
    moved = 0
    for name in NAMES:
        owner, score = own.reassign(name, *before[name], added, removed)
        assert (owner, score) == own.owner_of(name)
        moved += owner != before[name][0]
    # only b's names and the names d and e now win move: about 3/5 of them, not all
    assert moved < len(NAMES) * 0.75
    assert all(before[n][0] == own.owner_of(n)[0] for n in NAMES
               if before[n][0] != "b" and own.owner_of(n)[0] not in ("d", "e"))


def test_a_node_that_has_just_started_owns_nothing_until_it_sees_a_peer() -> None:
    now = [0.0]
    members = ["me"]
    own = Ownership("me", lambda: members, settle_s=30.0, clock=lambda: now[0])
    assert own.refresh() == (set(), set())
    assert own.owner_of("m") == ("", 0)  # nobody, as far as this node can tell yet
    members.append("peer")
    assert own.refresh() == ({"me", "peer"}, set())
    assert own.settled and own.owner_of("m")[0] in ("me", "peer")


def test_a_cluster_of_one_acts_alone_after_settle_s() -> None:
    now = [0.0]
    own = Ownership("me", lambda: ["me"], settle_s=30.0, clock=lambda: now[0])
    assert own.refresh() == (set(), set()) and not own.settled
    now[0] = 30.0
    assert own.refresh() == ({"me"}, set())
    assert own.owner_of("m")[0] == "me"
