"""The router with peers: local, a peer's copy, placement, retries, hops, drain.

This node (A) runs the real router, model service and loader over a fake
runtime; what it knows of peers B, C and D comes through real ``NodeStates``
and ``ClusterRouting`` (``tests.agent.cluster.test_routing.View``), and its
forwards go to a fake forwarder that can fail per peer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent.cluster.forward import RemoteError
from agent.cluster.membership import State
from agent.cluster.transport import PeerUnreachable
from agent.errors import Code, ModelNotFound
from tests.agent.cluster.test_routing import MAX_HOPS, A, B, C, D, View, mlserver_node
from tests.agent.test_loader import Node


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.node = Node(tmp, budget=300)
        self.peers = View()
        self.node.router.peers = self.peers.routing
        self.peers.summary(A, **mlserver_node(300))

    @property
    def calls(self) -> list[tuple[str, str, bytes, int, bool]]:
        return self.peers.forwarder.calls

    async def infer(self, name: str, hops: int = 0, load_here: bool = False) -> bytes:
        return await self.node.router.infer(request(name), hops=hops, load_here=load_here)


def request(name: str) -> bytes:
    return b"\x0a" + bytes([len(name)]) + name.encode()


def from_(address: str) -> bytes:
    return b"from " + address.encode()


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    await c.node.add("m")
    yield c
    await c.node.vmodels.stop()
    c.node.registry.close()


async def test_a_model_loaded_here_is_served_here(cluster: Cluster) -> None:
    await cluster.infer("m")  # loads here: no peer holds it, A has the most room
    cluster.peers.hold(B, "m")
    assert await cluster.infer("m") == request("m")
    assert cluster.calls == []


async def test_a_model_held_by_a_peer_is_forwarded_to_it(cluster: Cluster) -> None:
    cluster.peers.hold(B, "m")
    assert await cluster.infer("m") == from_(B)
    assert cluster.calls == [(B, "m", request("m"), 0, False)]
    assert cluster.node.adapter.load_calls == []


async def test_the_copy_with_fewest_requests_in_flight_gets_it(cluster: Cluster) -> None:
    cluster.peers.summary(B, **mlserver_node(100, in_flight=5))
    cluster.peers.summary(C, **mlserver_node(100, in_flight=1))
    cluster.peers.hold(B, "m")
    cluster.peers.hold(C, "m")
    assert await cluster.infer("m") == from_(C)


async def test_a_peer_that_fails_mid_request_is_retried_on_the_next_copy(
    cluster: Cluster,
) -> None:
    cluster.peers.summary(B, **mlserver_node(100, in_flight=0))
    cluster.peers.summary(C, **mlserver_node(100, in_flight=1))
    cluster.peers.hold(B, "m")
    cluster.peers.hold(C, "m")
    cluster.peers.forwarder.failing[B] = PeerUnreachable("connection reset")
    assert await cluster.infer("m") == from_(C)
    assert [c[0] for c in cluster.calls] == [B, C]
    assert cluster.peers.routing.retries == 1


async def test_a_draining_peer_is_retried_elsewhere(cluster: Cluster) -> None:
    cluster.peers.hold(B, "m")
    cluster.peers.hold(C, "m")
    cluster.peers.forwarder.failing[B] = RemoteError(Code.UNAVAILABLE, "draining")
    cluster.peers.forwarder.failing[C] = PeerUnreachable("gone")
    # Both copies refused before a runtime saw the request: it is loaded here.
    assert await cluster.infer("m") == request("m")
    assert sorted(c[0] for c in cluster.calls) == [B, C]
    assert cluster.node.adapter.load_calls == ["m"]


async def test_an_answer_from_a_runtime_is_not_retried(cluster: Cluster) -> None:
    cluster.peers.hold(B, "m")
    cluster.peers.hold(C, "m")
    cluster.peers.forwarder.failing[B] = RemoteError(Code.INVALID_ARGUMENT, "bad tensor")
    cluster.peers.forwarder.failing[C] = RemoteError(Code.INVALID_ARGUMENT, "bad tensor")
    with pytest.raises(RemoteError) as err:
        await cluster.infer("m")
    assert err.value.code == Code.INVALID_ARGUMENT
    assert len(cluster.calls) == 1
    assert cluster.peers.routing.retries == 0


async def test_a_model_loaded_nowhere_goes_where_there_is_most_room(cluster: Cluster) -> None:
    cluster.peers.summary(B, **mlserver_node(900))
    cluster.peers.summary(C, **mlserver_node(500))
    assert await cluster.infer("m") == from_(B)
    assert cluster.calls == [(B, "m", request("m"), 0, True)]  # with the load-here marker
    assert cluster.node.adapter.load_calls == []


async def test_a_model_loaded_nowhere_loads_here_when_this_node_has_most_room(
    cluster: Cluster,
) -> None:
    cluster.peers.summary(B, **mlserver_node(100))
    assert await cluster.infer("m") == request("m")
    assert cluster.calls == []
    assert cluster.node.adapter.load_calls == ["m"]


async def test_a_failed_placement_tries_the_next_node_then_here(cluster: Cluster) -> None:
    cluster.peers.summary(B, **mlserver_node(900))
    cluster.peers.summary(C, **mlserver_node(800))
    cluster.peers.forwarder.failing[B] = PeerUnreachable("refused")
    cluster.peers.forwarder.failing[C] = PeerUnreachable("refused")
    assert await cluster.infer("m") == request("m")
    assert [(c[0], c[4]) for c in cluster.calls] == [(B, True), (C, True)]
    assert cluster.peers.routing.retries == 2


async def test_a_request_marked_load_here_is_served_here(cluster: Cluster) -> None:
    cluster.peers.hold(B, "m")
    assert await cluster.infer("m", hops=1, load_here=True) == request("m")
    assert cluster.calls == []


async def test_a_forwarded_request_whose_copy_moved_goes_on_within_the_hop_limit(
    cluster: Cluster,
) -> None:
    cluster.peers.hold(B, "m")
    assert await cluster.infer("m", hops=1) == from_(B)
    assert cluster.calls[0][3] == 1
    # At the limit it is served here instead of travelling further.
    assert await cluster.infer("m", hops=MAX_HOPS) == request("m")
    assert len(cluster.calls) == 1


async def test_a_forwarded_request_is_not_placed_again(cluster: Cluster) -> None:
    cluster.peers.summary(B, **mlserver_node(900))
    assert await cluster.infer("m", hops=1) == request("m")  # sent here: loaded here
    assert cluster.calls == []


async def test_a_draining_node_places_new_loads_elsewhere(cluster: Cluster) -> None:
    cluster.peers.summary(B, **mlserver_node(100))  # less room than A
    cluster.node.router.draining = True
    assert await cluster.infer("m") == from_(B)
    assert cluster.calls == [(B, "m", request("m"), 0, True)]


async def test_dead_and_suspect_holders_are_not_forwarded_to(cluster: Cluster) -> None:
    cluster.peers.hold(B, "m")
    cluster.peers.hold(C, "m")
    cluster.peers.hold(D, "m")
    cluster.peers.membership.states[B] = State.DEAD
    cluster.peers.membership.states[C] = State.SUSPECT
    assert await cluster.infer("m") == from_(D)


async def test_an_unknown_model_is_not_found_without_a_forward(cluster: Cluster) -> None:
    cluster.peers.summary(B, **mlserver_node(900))
    with pytest.raises(ModelNotFound):
        await cluster.infer("nope")
    assert cluster.calls == []
