"""Channels of one peer port over the in-memory network, in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from agent.cluster.mux import FORWARD, GOSSIP, MEMBERSHIP, Mux
from agent.cluster.transport import InMemoryNetwork, PeerUnreachable, run_in_virtual_time

A = "10.0.0.1:8034"
B = "10.0.0.2:8034"
TIMEOUT_S = 0.5


class Recorder:
    """A channel handler that notes what it got and answers with its name."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.got: list[tuple[str, bytes]] = []

    async def __call__(self, sender: str, payload: bytes) -> bytes | None:
        self.got.append((sender, payload))
        return self.name + b":" + payload


def test_channels_on_one_endpoint_reach_their_own_handlers() -> None:
    async def main() -> None:
        net = InMemoryNetwork()
        client, server = Mux(net.endpoint(A)), Mux(net.endpoint(B))
        members, gossip = Recorder(b"members"), Recorder(b"gossip")
        server.channel(MEMBERSHIP).serve(members)
        server.channel(GOSSIP).serve(gossip)
        assert await client.channel(MEMBERSHIP).request(B, b"ping", TIMEOUT_S) == b"members:ping"
        assert await client.channel(GOSSIP).request(B, b"delta", TIMEOUT_S) == b"gossip:delta"
        assert members.got == [(A, b"ping")]
        assert gossip.got == [(A, b"delta")]

    run_in_virtual_time(main())


def test_channel_address_is_the_transports() -> None:
    net = InMemoryNetwork()
    assert Mux(net.endpoint(A)).channel(FORWARD).address == A


def test_a_request_on_a_channel_with_no_handler_is_dropped() -> None:
    async def main() -> None:
        net = InMemoryNetwork()
        client, server = Mux(net.endpoint(A)), Mux(net.endpoint(B))
        members = Recorder(b"members")
        server.channel(MEMBERSHIP).serve(members)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(PeerUnreachable):
            await client.channel(FORWARD).request(B, b"infer", TIMEOUT_S)
        assert loop.time() - began >= TIMEOUT_S  # a drop costs the whole timeout
        assert members.got == []
        assert net.counts["refused"] == 1

    run_in_virtual_time(main())


def test_an_empty_payload_is_dropped() -> None:
    async def main() -> None:
        net = InMemoryNetwork()
        server = Mux(net.endpoint(B))
        handler = Recorder(b"members")
        server.channel(MEMBERSHIP).serve(handler)
        # Straight to the endpoint, bypassing a channel: no tag at all.
        with pytest.raises(PeerUnreachable):
            await net.endpoint(A).request(B, b"", TIMEOUT_S)
        assert handler.got == []
        assert net.counts["refused"] == 1

    run_in_virtual_time(main())


def test_a_tag_alone_reaches_its_handler_with_an_empty_payload() -> None:
    async def main() -> None:
        net = InMemoryNetwork()
        server = Mux(net.endpoint(B))
        handler = Recorder(b"g")
        server.channel(GOSSIP).serve(handler)
        assert await net.endpoint(A).request(B, bytes([GOSSIP]), TIMEOUT_S) == b"g:"
        assert handler.got == [(A, b"")]

    run_in_virtual_time(main())


def test_serve_none_drops_that_channel_only() -> None:
    async def main() -> None:
        net = InMemoryNetwork()
        client, server = Mux(net.endpoint(A)), Mux(net.endpoint(B))
        members, gossip = Recorder(b"members"), Recorder(b"gossip")
        server.channel(MEMBERSHIP).serve(members)
        server.channel(GOSSIP).serve(gossip)
        server.channel(GOSSIP).serve(None)
        with pytest.raises(PeerUnreachable):
            await client.channel(GOSSIP).request(B, b"delta", TIMEOUT_S)
        assert gossip.got == []
        assert await client.channel(MEMBERSHIP).request(B, b"ping", TIMEOUT_S) == b"members:ping"

    run_in_virtual_time(main())


def test_a_handler_that_drops_drops_the_request() -> None:
    async def main() -> None:
        net = InMemoryNetwork()
        client, server = Mux(net.endpoint(A)), Mux(net.endpoint(B))

        async def refuse(sender: str, payload: bytes) -> bytes | None:
            return None

        server.channel(FORWARD).serve(refuse)
        with pytest.raises(PeerUnreachable):
            await client.channel(FORWARD).request(B, b"x", TIMEOUT_S)

    run_in_virtual_time(main())


@pytest.mark.parametrize("tag", [-1, 256])
def test_a_tag_that_is_not_a_byte_is_refused(tag: int) -> None:
    net = InMemoryNetwork()
    with pytest.raises(ValueError, match="not a byte"):
        Mux(net.endpoint(A)).channel(tag)
