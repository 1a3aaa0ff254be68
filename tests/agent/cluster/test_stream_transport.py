"""The peer port's transport over real loopback TCP (``StreamTransport``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agent.cluster.stream_transport import REQUEST, StreamTransport, _frame, _host
from agent.cluster.transport import PeerUnreachable

MAX_BYTES = 64 << 10
TIMEOUT_S = 5.0  # an upper bound: nothing here should come near it

Handler = Callable[[str, bytes], Awaitable[bytes | None]]


class Peer:
    """A listening transport whose handler the test sets."""

    def __init__(self) -> None:
        self.transport = StreamTransport("127.0.0.1", MAX_BYTES)
        self.senders: list[str] = []
        self.handler: Handler = self.echo
        self.transport.serve(self._handle)
        self.address = ""

    async def _handle(self, sender: str, payload: bytes) -> bytes | None:
        self.senders.append(sender)
        return await self.handler(sender, payload)

    @staticmethod
    async def echo(_sender: str, payload: bytes) -> bytes:
        return b"echo:" + payload

    def hold(self) -> tuple[asyncio.Event, asyncio.Event]:
        """From now on the handler waits to be let go: ``(started, release)``; once
        released it answers ``b"done " + payload``."""
        started, release = asyncio.Event(), asyncio.Event()

        async def held(_sender: str, payload: bytes) -> bytes:
            started.set()
            await release.wait()
            return b"done " + payload

        self.handler = held
        return started, release


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    port = await p.transport.listen("127.0.0.1", 0)
    p.address = f"127.0.0.1:{port}"
    yield p
    await p.transport.close()


@pytest.fixture
async def client() -> AsyncIterator[StreamTransport]:
    c = StreamTransport("127.0.0.1", MAX_BYTES)
    yield c
    await c.close()


async def test_a_request_gets_its_reply_and_the_handler_sees_the_host(
    peer: Peer, client: StreamTransport
) -> None:
    assert await client.request(peer.address, b"hi", TIMEOUT_S) == b"echo:hi"
    assert await client.request(peer.address, b"", TIMEOUT_S) == b"echo:"
    assert peer.senders == ["127.0.0.1", "127.0.0.1"]
    assert client.dials == 1


async def test_concurrent_requests_share_one_connection_and_get_their_own_replies(
    peer: Peer, client: StreamTransport
) -> None:
    gates = {i: asyncio.Event() for i in range(20)}

    async def answer_when_let(_sender: str, payload: bytes) -> bytes:
        await gates[int(payload)].wait()
        return b"reply " + payload

    peer.handler = answer_when_let
    asked = [asyncio.create_task(client.request(peer.address, str(i).encode(), TIMEOUT_S))
             for i in range(20)]
    for i in reversed(range(20)):  # answered in the reverse order
        gates[i].set()
    assert await asyncio.gather(*asked) == [b"reply " + str(i).encode() for i in range(20)]
    assert client.dials == 1


async def test_a_dropped_request_is_unreachable_at_once(
    peer: Peer, client: StreamTransport
) -> None:
    async def drop(_sender: str, _payload: bytes) -> None:
        return None

    peer.handler = drop
    with pytest.raises(PeerUnreachable, match="dropped"):
        await client.request(peer.address, b"x", timeout_s=60.0)


async def test_a_handler_that_fails_drops_that_request_only(
    peer: Peer, client: StreamTransport
) -> None:
    async def fail(_sender: str, payload: bytes) -> bytes:
        if payload == b"bad":
            raise RuntimeError("boom")
        return b"ok"

    peer.handler = fail
    with pytest.raises(PeerUnreachable):
        await client.request(peer.address, b"bad", TIMEOUT_S)
    assert await client.request(peer.address, b"good", TIMEOUT_S) == b"ok"
    assert client.dials == 1


async def test_nobody_listening_is_unreachable(client: StreamTransport) -> None:
    closed = StreamTransport("127.0.0.1", MAX_BYTES)
    port = await closed.listen("127.0.0.1", 0)
    await closed.close()
    with pytest.raises(PeerUnreachable, match="cannot connect"):
        await client.request(f"127.0.0.1:{port}", b"x", TIMEOUT_S)


async def test_a_silent_peer_is_unreachable_after_the_timeout(
    peer: Peer, client: StreamTransport
) -> None:
    peer.hold()
    with pytest.raises(PeerUnreachable, match=r"no answer in 0\.2 s"):
        await client.request(peer.address, b"x", timeout_s=0.2)
    peer.handler = peer.echo  # the connection is still good
    assert await client.request(peer.address, b"y", TIMEOUT_S) == b"echo:y"


async def test_an_oversized_frame_closes_the_connection_and_is_counted(peer: Peer) -> None:
    big_client = StreamTransport("127.0.0.1", MAX_BYTES * 4)
    try:
        with pytest.raises(PeerUnreachable):
            await big_client.request(peer.address, b"x" * (MAX_BYTES + 1), TIMEOUT_S)
        assert peer.transport.dropped["oversized"] == 1
        assert peer.senders == []
        # The next request dials again and is served.
        assert await big_client.request(peer.address, b"small", TIMEOUT_S) == b"echo:small"
        assert big_client.dials == 2
    finally:
        await big_client.close()


async def test_garbage_on_the_port_closes_that_connection_only(
    peer: Peer, client: StreamTransport
) -> None:
    host, _, port = peer.address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"\x07" + b"\0" * 8)  # a frame of no known kind
    assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""  # closed on us
    writer.close()
    assert peer.transport.dropped["bad_frame"] == 1
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(_frame(REQUEST, 7, b"hand made"))
    header = await asyncio.wait_for(reader.readexactly(9), TIMEOUT_S)
    assert int.from_bytes(header[1:5], "big") == 7
    assert await reader.readexactly(int.from_bytes(header[5:9], "big")) == b"echo:hand made"
    writer.close()
    assert await client.request(peer.address, b"z", TIMEOUT_S) == b"echo:z"


async def test_a_peer_that_goes_away_fails_waiting_requests_at_once(
    peer: Peer, client: StreamTransport
) -> None:
    started, _ = peer.hold()
    asked = asyncio.create_task(client.request(peer.address, b"x", timeout_s=60.0))
    await asyncio.wait_for(started.wait(), TIMEOUT_S)
    await peer.transport.close()
    with pytest.raises(PeerUnreachable, match="connection"):
        await asyncio.wait_for(asked, TIMEOUT_S)


async def test_close_lets_requests_being_answered_finish_within_the_grace(
    peer: Peer, client: StreamTransport
) -> None:
    started, release = peer.hold()
    asked = asyncio.create_task(client.request(peer.address, b"x", TIMEOUT_S))
    await asyncio.wait_for(started.wait(), TIMEOUT_S)
    closing = asyncio.create_task(peer.transport.close(grace_s=TIMEOUT_S))
    done, _ = await asyncio.wait({closing}, timeout=0.2)
    assert not done, "close returned while a request was still being answered"
    release.set()
    assert await asyncio.wait_for(asked, TIMEOUT_S) == b"done x"
    await asyncio.wait_for(closing, TIMEOUT_S)
    with pytest.raises(PeerUnreachable):
        await client.request(peer.address, b"after", TIMEOUT_S)


@pytest.mark.parametrize(("seen", "host"), [
    ("10.0.0.7", "10.0.0.7"),
    ("::ffff:10.0.0.7", "10.0.0.7"),  # an IPv4 client of a dual-stack listener
    ("fd00::7", "fd00::7"),
    ("fe80::1%eth0", "fe80::1%eth0"),
])
def test_the_sender_is_the_host_peers_advertise(seen: str, host: str) -> None:
    assert _host(seen) == host
