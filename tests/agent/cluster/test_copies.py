"""Copies follow load (``CopyKeeper``) over a real ``ClusterRouting``, on an injected clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cluster.copies import CopyKeeper, CopySettings
from agent.cluster.membership import State
from agent.cluster.transport import PeerUnreachable, run_in_virtual_time
from agent.inventory import Inventory, LoadedModel
from agent.registry.spec import ModelSpec
from agent.registry.store import ModelRegistry
from tests.agent.cluster.test_routing import A, B, C, D, View, mlserver_node
from tests.fakes import FakeAdapter

LOW = "10.0.0.0:8034"  # sorts below this node (A)
SETTINGS = CopySettings(
    rate_threshold=10.0, max_copies=3, idle_s=100.0, recent_s=30.0,
    check_interval_s=1.0, cooldown_s=5.0, max_requests=8,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """This node (A): its inventory and registry, peers seen through ``View``, and
    fakes for the load requests it sends and the unloads it makes."""

    def __init__(self, tmp: Path, settings: CopySettings = SETTINGS) -> None:
        self.view = View()
        self.clock = Clock()
        self.registry = ModelRegistry.open(tmp / "registry.db")
        self.inventory = Inventory()
        self.adapter = FakeAdapter()
        self.asked: list[tuple[str, str]] = []
        self.unloaded: list[str] = []
        self.refuse: Exception | None = None
        self.loads_show_after_s: float | None = 0.0  # None: the peer never loads it
        self.keeper = CopyKeeper(
            self.view.routing, self.inventory, self.registry, self.request_load,
            self.unload, settings, self.clock,
        )
        self.view.summary(A, **mlserver_node(100))

    async def request_load(self, peer: str, model_id: str) -> None:
        self.asked.append((peer, model_id))
        if self.refuse is not None:
            raise self.refuse
        delay = self.loads_show_after_s
        if delay == 0.0:
            self.view.hold(peer, model_id)
        elif delay is not None:
            asyncio.get_running_loop().call_later(delay, self.view.hold, peer, model_id)

    async def unload(self, model_id: str) -> bool:
        self.unloaded.append(model_id)
        self.inventory.remove(model_id)
        self.view.local.delete("m/" + model_id)
        return True

    def register(self, model_id: str, size_hint: int = 0) -> ModelSpec:
        spec = ModelSpec(model_id, "builtin://simple-string", "mlserver", "simple-string",
                         size_hint)
        self.registry.put(spec)
        return spec

    def load(self, model_id: str, loaded_s_ago: float = 0.0) -> None:
        """``model_id`` loaded here ``loaded_s_ago`` (wall) seconds ago, and gossiped."""
        spec = self.registry.get(model_id) or self.register(model_id)
        self.inventory.add(LoadedModel(spec, self.adapter, 100,
                                       loaded_at=time.time() - loaded_s_ago))
        self.view.hold(A, model_id)

    def serve(self, model_id: str, times: int = 1) -> None:
        for _ in range(times):
            self.keeper.record(model_id)

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    n.registry.close()


def hot(node: Node, model_id: str) -> None:
    """One check interval of traffic well over the threshold."""
    node.serve(model_id, int(SETTINGS.rate_threshold * SETTINGS.check_interval_s * 3))
    node.advance(SETTINGS.check_interval_s)


# -- more copies of hot models -----------------------------------------------------


async def test_a_hot_model_gets_a_copy_where_placement_says(node: Node) -> None:
    node.view.summary(B, **mlserver_node(500))
    node.view.summary(C, **mlserver_node(900))
    node.load("m")
    node.view.hold(C, "m")  # C already holds it: the new copy goes elsewhere
    hot(node, "m")
    await node.keeper.check()
    assert node.asked == [(B, "m")]
    assert node.keeper.copies_asked == 1


async def test_a_model_below_the_rate_threshold_gets_no_copy(node: Node) -> None:
    node.view.summary(B, **mlserver_node(500))
    node.load("m")
    node.view.hold(C, "m")  # not alone, so not a "recent sole copy" either
    node.serve("m", int(SETTINGS.rate_threshold * 10 * 0.5))
    node.advance(10.0)
    await node.keeper.check()
    assert node.asked == []


async def test_a_hot_model_stops_growing_at_max_copies(node: Node) -> None:
    node.view.summary(D, **mlserver_node(900))
    node.load("m")
    node.view.hold(B, "m")
    node.view.hold(C, "m")  # A, B, C: max_copies (3) held
    hot(node, "m")
    await node.keeper.check()
    assert node.asked == []


async def test_a_copy_asked_for_waits_out_the_cooldown(node: Node) -> None:
    node.view.summary(B, **mlserver_node(900))
    node.view.summary(C, **mlserver_node(800))
    node.load("m")
    node.loads_show_after_s = None  # the copy is slow to show in gossip
    hot(node, "m")
    await node.keeper.check()
    assert node.asked == [(B, "m")]
    hot(node, "m")
    await node.keeper.check()
    assert node.asked == [(B, "m")], "asked again within the cooldown"
    node.advance(SETTINGS.cooldown_s)
    hot(node, "m")
    await node.keeper.check()
    assert len(node.asked) == 2
    assert node.keeper.copies_asked == 2


async def test_a_refused_load_request_is_asked_again_next_check(node: Node) -> None:
    node.view.summary(B, **mlserver_node(900))
    node.load("m")
    node.refuse = PeerUnreachable("gone")
    hot(node, "m")
    await node.keeper.check()
    assert node.asked == [(B, "m")]
    assert node.keeper.copies_asked == 0
    node.refuse = None
    hot(node, "m")
    await node.keeper.check()  # no cooldown: nothing was asked for
    assert node.asked == [(B, "m"), (B, "m")]
    assert node.keeper.copies_asked == 1


async def test_no_copy_without_a_better_node_or_a_registration(node: Node) -> None:
    node.load("m")
    hot(node, "m")
    await node.keeper.check()  # no peer has a summary: placement says "here"
    node.view.summary(B, **mlserver_node(900))
    node.serve("unregistered", 100)
    node.advance(SETTINGS.check_interval_s)
    await node.keeper.check()
    assert node.asked == [(B, "m")]  # the second check only; never the unregistered model


async def test_at_most_max_requests_copies_are_asked_per_check(tmp_path: Path) -> None:
    node = Node(tmp_path, CopySettings(rate_threshold=10.0, max_requests=2, recent_s=0.0))
    try:
        node.view.summary(B, **mlserver_node(10_000_000))
        for model_id in ("a", "b", "c"):
            node.load(model_id)
            node.serve(model_id, 100)
        node.advance(1.0)
        await node.keeper.check()
        assert len(node.asked) == 2
    finally:
        node.registry.close()


# -- a second copy of recently used sole copies --------------------------------------


async def test_a_recently_used_sole_copy_gets_a_second_copy(node: Node) -> None:
    node.view.summary(B, **mlserver_node(900))
    node.load("m")
    node.serve("m")
    node.advance(SETTINGS.recent_s / 2)
    await node.keeper.check()
    assert node.asked == [(B, "m")]


async def test_a_recently_used_model_held_elsewhere_gets_none(node: Node) -> None:
    node.view.summary(B, **mlserver_node(900))
    node.load("m")
    node.view.hold(C, "m")
    node.serve("m")
    node.advance(SETTINGS.recent_s / 2)
    await node.keeper.check()
    assert node.asked == []


async def test_a_sole_copy_held_by_a_suspect_peer_counts_as_alone(node: Node) -> None:
    node.view.summary(B, **mlserver_node(900))
    node.load("m")
    node.view.hold(C, "m")
    node.view.membership.states[C] = State.SUSPECT
    node.serve("m")
    node.advance(1.0)
    await node.keeper.check()
    assert node.asked == [(B, "m")]


async def test_a_model_used_long_ago_or_no_longer_loaded_gets_none(node: Node) -> None:
    node.view.summary(B, **mlserver_node(900))
    node.load("old")
    node.load("gone")
    node.serve("old")
    node.serve("gone")
    node.inventory.remove("gone")
    node.advance(SETTINGS.recent_s + 1)
    await node.keeper.check()
    assert node.asked == []


# -- dropping idle extra copies ------------------------------------------------------


async def test_an_idle_copy_is_dropped_when_a_lower_live_holder_keeps_one(node: Node) -> None:
    node.load("m", loaded_s_ago=SETTINGS.idle_s + 1)
    node.view.hold(LOW, "m")
    await node.keeper.check()
    assert node.unloaded == ["m"]
    assert node.keeper.copies_dropped == 1
    assert "m" not in node.inventory


async def test_the_lowest_address_holder_keeps_its_idle_copy(node: Node) -> None:
    node.load("m", loaded_s_ago=SETTINGS.idle_s + 1)
    node.view.hold(B, "m")
    node.view.hold(C, "m")
    await node.keeper.check()
    assert node.unloaded == []


async def test_an_idle_sole_copy_is_kept(node: Node) -> None:
    node.load("m", loaded_s_ago=SETTINGS.idle_s + 1)
    await node.keeper.check()
    assert node.unloaded == []


async def test_an_idle_copy_is_kept_when_the_other_holder_is_not_alive(node: Node) -> None:
    node.load("m", loaded_s_ago=SETTINGS.idle_s + 1)
    node.view.hold(LOW, "m")
    node.view.membership.states[LOW] = State.DEAD
    await node.keeper.check()
    assert node.unloaded == []


async def test_a_copy_used_within_the_idle_time_is_kept(node: Node) -> None:
    node.load("m", loaded_s_ago=SETTINGS.idle_s + 1)
    node.view.hold(LOW, "m")
    node.serve("m")
    node.advance(SETTINGS.idle_s - 1)
    await node.keeper.check()
    assert node.unloaded == []
    node.advance(2)
    await node.keeper.check()
    assert node.unloaded == ["m"]


async def test_a_copy_with_requests_in_flight_is_kept(node: Node) -> None:
    node.load("m", loaded_s_ago=SETTINGS.idle_s + 1)
    node.view.hold(LOW, "m")
    model = node.inventory.get("m")
    assert model is not None
    model.in_flight = 1
    await node.keeper.check()
    assert node.unloaded == []


# -- drain ---------------------------------------------------------------------------


def test_drain_hands_sole_copies_off_and_waits_for_gossip(tmp_path: Path) -> None:
    async def main() -> None:
        node = Node(tmp_path)
        node.view.summary(B, **mlserver_node(900))
        node.view.summary(C, **mlserver_node(800))
        for model_id in ("a", "b", "shared", "stale"):
            node.load(model_id)
            node.serve(model_id)
        node.view.hold(D, "shared")
        node.clock.now += 1.0
        node.serve("a")
        node.serve("b")
        node.clock.now += SETTINGS.recent_s - 0.5  # "stale" is past recent_s now
        node.loads_show_after_s = 1.0
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await node.keeper.drain(timeout_s=10.0) == 0
        took = loop.time() - began
        assert 1.0 <= took < 2.0
        assert sorted(node.asked) == [(B, "a"), (C, "b")]  # spread by promised room
        assert node.view.routing.copies("a") == [B]
        node.registry.close()

    run_in_virtual_time(main())


def test_drain_returns_what_gossip_never_showed_at_its_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        node = Node(tmp_path)
        node.view.summary(B, **mlserver_node(900))
        node.load("a")
        node.serve("a")
        node.loads_show_after_s = None
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await node.keeper.drain(timeout_s=3.0) == 1
        assert 3.0 <= loop.time() - began < 3.5
        assert node.asked == [(B, "a")]
        node.registry.close()

    run_in_virtual_time(main())


def test_drain_with_no_possible_target_returns_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        node = Node(tmp_path)  # no peer with a summary: nowhere to hand off to
        node.load("a")
        node.serve("a")
        loop = asyncio.get_running_loop()
        began = loop.time()
        await node.keeper.drain(timeout_s=30.0)
        assert loop.time() == began
        assert node.asked == []
        node.registry.close()

    run_in_virtual_time(main())


def test_drain_counts_sole_copies_it_could_not_hand_off(tmp_path: Path) -> None:
    """``drain`` "returns how many are still only here": a recently used sole copy
    that no peer could take is one of them."""

    async def main() -> None:
        node = Node(tmp_path)
        node.load("a")
        node.serve("a")
        assert await node.keeper.drain(timeout_s=30.0) == 1
        node.registry.close()

    run_in_virtual_time(main())
