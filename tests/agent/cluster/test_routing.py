"""Copies and placement from the gossiped node states (``ClusterRouting``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from agent.cluster.membership import State
from agent.cluster.routing import DEFAULT_PLACEMENT_BYTES, ClusterRouting, NodeSummary
from agent.cluster.states import NodeStates
from agent.cluster.transport import PeerUnreachable
from agent.registry.spec import ModelSpec

A, B, C, D = "10.0.0.1:8034", "10.0.0.2:8034", "10.0.0.3:8034", "10.0.0.4:8034"
MAX_HOPS = 2
CPU = ModelSpec("cpu-model", "builtin://simple-string", "mlserver", "simple-string")
GPU = ModelSpec("gpu-model", "s3://b/gpu", "triton", "onnx", gpu=True)


def cpu(n: int) -> ModelSpec:
    """Another CPU model: placement remembers where each model went, so a burst of
    placements needs distinct models."""
    return ModelSpec(f"cpu-{n}", "builtin://simple-string", "mlserver", "simple-string")


@dataclass(frozen=True)
class FakeMember:
    state: State


class FakeMembership:
    """What routing asks of ``Membership``: ``member(address).state``. As the real
    one, it holds this node itself, ALIVE."""

    def __init__(self) -> None:
        self.states: dict[str, State] = {A: State.ALIVE}

    def member(self, address: str) -> FakeMember | None:
        state = self.states.get(address)
        return FakeMember(state) if state is not None else None


class FakeForwarder:
    """``forward`` held open until ``gate`` is set, then failing with ``fail`` (or
    ``failing[address]``) or answering ``b"from <address>"``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes, int, bool]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.failing: dict[str, Exception] = {}
        self.arrived: asyncio.Queue[str] = asyncio.Queue()

    async def forward(
        self, address: str, model_id: str, request: bytes, hops: int, load_here: bool
    ) -> bytes:
        self.calls.append((address, model_id, request, hops, load_here))
        self.arrived.put_nowait(address)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if address in self.failing:
            raise self.failing[address]
        return b"from " + address.encode()


class View:
    """This node (A) and the peers whose state reaches it through ``sync``."""

    def __init__(self) -> None:
        self.local = NodeStates(A, 1)
        self.peers: dict[str, NodeStates] = {}
        self.membership = FakeMembership()
        self.forwarder = FakeForwarder()
        fake_membership: Any = self.membership
        fake_forwarder: Any = self.forwarder
        self.routing = ClusterRouting(self.local, fake_membership, fake_forwarder, MAX_HOPS)

    def peer(self, address: str, state: State = State.ALIVE) -> NodeStates:
        if address not in self.peers:
            self.peers[address] = NodeStates(address, 1)
        self.membership.states[address] = state
        return self.peers[address]

    def summary(self, address: str, **fields: Any) -> None:
        value = NodeSummary(**fields).to_value()
        if address == A:
            self.local.set("node", value)
        else:
            self.peer(address).set("node", value)
            self.sync()

    def hold(self, address: str, *model_ids: str) -> None:
        for model_id in model_ids:
            if address == A:
                self.local.set("m/" + model_id, {"s": 1})
            else:
                self.peer(address).set("m/" + model_id, {"s": 1})
        self.sync()

    def drop(self, address: str, model_id: str) -> None:
        self.peer(address).delete("m/" + model_id)
        self.sync()

    def sync(self) -> None:
        for states in self.peers.values():
            self.local.apply(states.delta_for(self.local.digest(), 1000))


def mlserver_node(free: int, **fields: Any) -> dict[str, Any]:
    return {"free_bytes": free, "kinds": ("mlserver",), **fields}


# -- NodeSummary ---------------------------------------------------------------------


def test_summary_round_trips_through_its_value() -> None:
    summary = NodeSummary("10.0.0.2:8033", 123, ("mlserver", "triton"), 456, 7, True, 9)
    assert NodeSummary.from_value(summary.to_value()) == summary


@pytest.mark.parametrize("value", [None, {"free": "lots"}, {"kinds": 5}])
def test_a_missing_or_malformed_summary_is_none(value: dict[str, Any] | None) -> None:
    assert NodeSummary.from_value(value) is None


def test_summary_of_a_peer_comes_from_gossip() -> None:
    view = View()
    assert view.routing.summary(B) is None
    view.summary(B, free_bytes=10, kinds=("mlserver",))
    assert view.routing.summary(B) == NodeSummary(free_bytes=10, kinds=("mlserver",))


# -- copies --------------------------------------------------------------------------


def test_copies_are_the_live_peers_holding_the_model() -> None:
    view = View()
    view.hold(A, "m")
    view.hold(B, "m")
    view.hold(C, "m")
    view.hold(D, "other")
    assert view.routing.copies("m") == [B, C]
    assert view.routing.copies("m", exclude={B}) == [C]
    assert view.routing.copies("unknown") == []
    assert view.routing.holders("m") == [A, B, C]


@pytest.mark.parametrize("state", [State.SUSPECT, State.DEAD, State.LEFT])
def test_copies_skip_members_not_alive(state: State) -> None:
    view = View()
    view.hold(B, "m")
    view.hold(C, "m")
    view.membership.states[B] = state
    assert view.routing.copies("m") == [C]
    assert view.routing.holders("m") == [C]


def test_copies_skip_peers_membership_does_not_know() -> None:
    view = View()
    view.hold(B, "m")
    view.hold(C, "m")
    del view.membership.states[C]
    assert view.routing.copies("m") == [B]


def test_a_copy_unloaded_on_the_peer_is_gone() -> None:
    view = View()
    view.hold(B, "m")
    view.hold(C, "m")
    view.drop(B, "m")
    assert view.routing.copies("m") == [C]


def test_copies_order_by_gossiped_requests_in_flight() -> None:
    view = View()
    view.summary(B, in_flight=5)
    view.summary(C, in_flight=1)
    view.summary(D, in_flight=3)
    view.hold(B, "m")
    view.hold(C, "m")
    view.hold(D, "m")
    assert view.routing.copies("m") == [C, D, B]
    view.summary(C, in_flight=9)
    assert view.routing.copies("m") == [D, B, C]


async def test_copies_count_this_nodes_unanswered_forwards() -> None:
    view = View()
    view.summary(B, in_flight=2)
    view.summary(C, in_flight=0)
    view.hold(B, "m")
    view.hold(C, "m")
    assert view.routing.copies("m") == [C, B]
    view.forwarder.gate.clear()
    pending = [
        asyncio.create_task(view.routing.forward(C, "m", b"x", 0, False)) for _ in range(3)
    ]
    for _ in pending:  # until every forward is waiting on the peer
        await asyncio.wait_for(view.forwarder.arrived.get(), 5)
    assert view.routing.in_flight == {C: 3}
    assert view.routing.copies("m") == [B, C]
    view.forwarder.gate.set()
    assert await asyncio.gather(*pending) == [b"from " + C.encode()] * 3
    assert view.routing.in_flight == {}
    assert view.routing.forwarded == 3
    assert view.routing.copies("m") == [C, B]


async def test_a_failed_forward_is_no_longer_in_flight() -> None:
    view = View()
    view.forwarder.fail = PeerUnreachable("gone")
    with pytest.raises(PeerUnreachable):
        await view.routing.forward(B, "m", b"x", 1, True)
    assert view.routing.in_flight == {}
    assert view.routing.forwarded == 1
    assert view.forwarder.calls == [(B, "m", b"x", 1, True)]


# -- placement -----------------------------------------------------------------------


def test_placement_picks_the_most_free_room() -> None:
    view = View()
    view.summary(A, **mlserver_node(100))
    view.summary(B, **mlserver_node(500))
    view.summary(C, **mlserver_node(900))
    assert view.routing.place(CPU, 10) == C


def test_placement_needs_a_runtime_of_the_models_kind() -> None:
    view = View()
    view.summary(A, **mlserver_node(100))
    view.summary(B, free_bytes=900, kinds=("triton",))
    view.summary(C, free_bytes=500, kinds=("mlserver", "triton"))
    assert view.routing.place(CPU, 10) == C
    triton_cpu = ModelSpec("t", "s3://b/t", "triton", "onnx")
    assert view.routing.place(triton_cpu, 10) == B


def test_placement_skips_draining_and_dead_nodes_and_the_excluded() -> None:
    view = View()
    view.summary(A, **mlserver_node(100))
    view.summary(B, **mlserver_node(900, draining=True))
    view.summary(C, **mlserver_node(800))
    view.summary(D, **mlserver_node(700))
    view.membership.states[C] = State.SUSPECT
    assert view.routing.place(CPU, 10) == D
    assert view.routing.place(CPU, 10, exclude={D}) is None  # only this node is left


def test_placement_ignores_nodes_without_a_summary() -> None:
    view = View()
    view.summary(A, **mlserver_node(100))
    view.hold(B, "something")  # B gossips, but no "node" key yet
    assert view.routing.place(CPU, 10) is None


def test_placement_on_this_node_is_none() -> None:
    view = View()
    view.summary(A, **mlserver_node(900))
    view.summary(B, **mlserver_node(500))
    assert view.routing.place(CPU, 10) is None


def test_a_tie_goes_to_this_node() -> None:
    view = View()
    view.summary(A, **mlserver_node(500))
    view.summary(B, **mlserver_node(500))
    view.summary(C, **mlserver_node(500))
    assert view.routing.place(CPU, 10) is None


def test_a_draining_node_that_excludes_itself_places_elsewhere() -> None:
    view = View()
    view.summary(A, **mlserver_node(900))
    view.summary(B, **mlserver_node(500))
    assert view.routing.place(CPU, 10, exclude={A}) == B


def test_gpu_models_go_to_the_most_free_gpu_memory_with_enough_of_it() -> None:
    view = View()
    view.summary(A, free_bytes=10_000, kinds=("triton",), gpu_free_bytes=0)
    view.summary(B, free_bytes=100, kinds=("triton",), gpu_free_bytes=3_000)
    view.summary(C, free_bytes=100, kinds=("triton",), gpu_free_bytes=5_000)
    view.summary(D, free_bytes=100, kinds=("mlserver",), gpu_free_bytes=9_000)
    assert view.routing.place(GPU, 2_000) == C
    # 4,000 needed: B is short, C has 5,000 - 2,000 promised = 3,000: nobody fits.
    other_gpu = ModelSpec("gpu-2", "s3://b/gpu2", "triton", "onnx", gpu=True)
    assert view.routing.place(other_gpu, 4_000) is None


def test_a_burst_of_placements_is_spread_by_promised_room() -> None:
    view = View()
    view.summary(A, **mlserver_node(100))
    view.summary(B, **mlserver_node(1_000))
    view.summary(C, **mlserver_node(900))
    placed = [view.routing.place(cpu(i), 200) for i in range(4)]
    # B 1000 -> 800; C 900 -> 700; B 800 -> 600; C 700 -> 500
    assert placed == [B, C, B, C]


def test_promised_room_resets_when_that_nodes_summary_changes() -> None:
    view = View()
    view.summary(A, **mlserver_node(100))
    view.summary(B, **mlserver_node(1_000))
    view.summary(C, **mlserver_node(900))
    assert view.routing.place(cpu(1), 300) == B  # B: 700 left by promise
    assert view.routing.place(cpu(2), 300) == C  # C: 600 left by promise
    # B reports again (its load has not shown in free bytes yet): its promise is cleared.
    view.summary(B, **mlserver_node(1_000, models=1))
    assert view.routing.place(cpu(3), 300) == B
    # C's promise still stands: B (700) beats C (600).
    assert view.routing.place(cpu(4), 10) == B


def test_a_placement_of_unknown_size_reserves_the_default() -> None:
    view = View()
    view.summary(A, **mlserver_node(0))
    view.summary(B, **mlserver_node(DEFAULT_PLACEMENT_BYTES + 10))
    view.summary(C, **mlserver_node(DEFAULT_PLACEMENT_BYTES))
    assert view.routing.place(cpu(1), 0) == B
    assert view.routing.place(cpu(2), 0) == C  # B has 10 bytes left by promise


def test_a_summary_from_another_node_keeps_the_promise() -> None:
    view = View()
    view.summary(A, **mlserver_node(100))
    view.summary(B, **mlserver_node(1_000))
    view.summary(C, **mlserver_node(900))
    assert view.routing.place(cpu(1), 300) == B
    view.summary(D, **mlserver_node(50))  # someone else's summary: B's promise stays
    assert view.routing.place(cpu(2), 300) == C


def test_a_model_placed_again_soon_goes_where_it_went_before() -> None:
    """Requests for a model loaded nowhere all follow the first placement, so a burst
    does not start a load on every node."""
    view = View()
    view.summary(A, **mlserver_node(100))
    view.summary(B, **mlserver_node(1_000))
    view.summary(C, **mlserver_node(900))
    assert [view.routing.place(CPU, 300) for _ in range(3)] == [B, B, B]
    assert view.routing.place(CPU, 300, exclude={B}) == C  # B failed: elsewhere
    view.membership.states[C] = State.DEAD
    assert view.routing.place(CPU, 300) == B  # C's placement is forgotten with C
