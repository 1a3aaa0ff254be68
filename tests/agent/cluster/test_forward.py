"""Forwarded requests between two agents over the in-memory network, in virtual time."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agent.cluster.auth import Signer
from agent.cluster.forward import Forwarder, RemoteError, retryable
from agent.cluster.mux import FORWARD, Mux
from agent.cluster.transport import InMemoryNetwork, PeerUnreachable, run_in_virtual_time
from agent.errors import Code, InvalidRequest, ModelNotFound

KEY = b"k" * 32
OTHER_KEY = b"z" * 32
A = "10.0.0.1:8034"
B = "10.0.0.2:8034"
TIMEOUT_S = 1.0
MAX_HOPS = 2


class Far:
    """The receiving agent's router, as the forwarder sees it."""

    def __init__(self) -> None:
        self.served: list[tuple[bytes, str, int, bool]] = []
        self.loads: list[str] = []
        self.fail: Exception | None = None

    async def serve(self, request: bytes, model_id: str, hops: int, load_here: bool) -> bytes:
        self.served.append((request, model_id, hops, load_here))
        if self.fail is not None:
            raise self.fail
        return b"answer to " + request

    def load(self, model_id: str) -> None:
        self.loads.append(model_id)


class Pair:
    """Node A forwards to node B, each on the FORWARD channel of its peer port."""

    def __init__(
        self, a_keys: list[bytes] | None = None, b_keys: list[bytes] | None = None,
        load: bool = True,
    ) -> None:
        self.net = InMemoryNetwork(seed=1)
        self.a_mux = Mux(self.net.endpoint(A))
        self.b_mux = Mux(self.net.endpoint(B))
        self.a = Forwarder(
            self.a_mux.channel(FORWARD), Signer(a_keys or [KEY]), TIMEOUT_S, MAX_HOPS
        )
        self.b_signer = Signer(b_keys or [KEY])
        self.b = Forwarder(self.b_mux.channel(FORWARD), self.b_signer, TIMEOUT_S, MAX_HOPS)
        self.far = Far()
        self.b.serve(self.far.serve, self.far.load if load else None)

    async def raw(self, payload: bytes) -> bytes:
        """Send bytes on A's forward channel as they are (no header built)."""
        return await self.a_mux.channel(FORWARD).request(B, payload, TIMEOUT_S)


def simulate(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_in_virtual_time(main())


def _sealed(header: bytes, request: bytes = b"req", key: bytes = KEY) -> bytes:
    return Signer([key]).seal(len(header).to_bytes(2, "big") + header + request)


def test_a_forwarded_request_reaches_the_router_and_returns_its_answer() -> None:
    async def main() -> None:
        pair = Pair()
        response = await pair.a.forward(B, "m1", b"infer-bytes", 0, False)
        assert response == b"answer to infer-bytes"
        assert pair.far.served == [(b"infer-bytes", "m1", 1, False)]
        response = await pair.a.forward(B, "m2", b"again", 1, True)
        assert response == b"answer to again"
        assert pair.far.served[-1] == (b"again", "m2", 2, True)
        assert pair.far.loads == []

    simulate(main)


def test_an_empty_answer_is_an_answer() -> None:
    async def main() -> None:
        pair = Pair()

        async def empty(request: bytes, model_id: str, hops: int, load_here: bool) -> bytes:
            return b""

        pair.b.serve(empty)
        assert await pair.a.forward(B, "m", b"x", 0, False) == b""

    simulate(main)


def test_a_meshlet_error_on_the_far_side_comes_back_with_its_code() -> None:
    async def main() -> None:
        pair = Pair()
        pair.far.fail = ModelNotFound("m1")
        with pytest.raises(RemoteError) as caught:
            await pair.a.forward(B, "m1", b"x", 0, False)
        assert caught.value.code is Code.NOT_FOUND
        assert caught.value.message == ModelNotFound("m1").message
        assert not retryable(caught.value)

    simulate(main)


def test_an_unexpected_error_on_the_far_side_is_internal() -> None:
    async def main() -> None:
        pair = Pair()
        pair.far.fail = RuntimeError("boom")
        with pytest.raises(RemoteError) as caught:
            await pair.a.forward(B, "m1", b"x", 0, False)
        assert caught.value.code is Code.INTERNAL
        assert "boom" in caught.value.message

    simulate(main)


def test_hops_up_to_the_limit_are_served_and_beyond_it_aborted() -> None:
    async def main() -> None:
        pair = Pair()
        # forward() counts its own hop: hops=MAX_HOPS-1 arrives as MAX_HOPS.
        await pair.a.forward(B, "m", b"x", MAX_HOPS - 1, False)
        assert pair.far.served[-1][2] == MAX_HOPS
        with pytest.raises(RemoteError) as caught:
            await pair.a.forward(B, "m", b"x", MAX_HOPS, False)
        assert caught.value.code is Code.ABORTED
        assert f"forwarded {MAX_HOPS + 1} times" in caught.value.message
        assert len(pair.far.served) == 1  # the router never saw the looping one
        assert not retryable(caught.value)

    simulate(main)


def test_a_request_sealed_with_another_key_is_dropped_and_counted() -> None:
    async def main() -> None:
        pair = Pair(a_keys=[OTHER_KEY])
        with pytest.raises(PeerUnreachable):
            await pair.a.forward(B, "m", b"x", 0, False)
        assert pair.far.served == []
        assert pair.b.dropped == {"unknown_key": 1}
        assert pair.b_signer.dropped["unknown_key"] == 1

    simulate(main)


def test_a_reply_the_sender_cannot_open_is_an_unreachable_peer() -> None:
    async def main() -> None:
        # B accepts A's key but signs with one A does not hold (a half-done rotation).
        pair = Pair(b_keys=[OTHER_KEY, KEY])
        with pytest.raises(PeerUnreachable, match="unreadable reply"):
            await pair.a.forward(B, "m", b"x", 0, False)
        assert len(pair.far.served) == 1

    simulate(main)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (Signer([KEY]).seal(b"\x00"), "header length cut short"),
        (Signer([KEY]).seal(b"\x00\x40{}"), "header shorter than its length"),
        (Signer([KEY]).seal(b"\xff\xff" + b"{" * 70_000), "header over the limit"),
        (_sealed(b"not json"), "not JSON"),
        (_sealed(b"[1, 2]"), "not an object"),
        (_sealed(b'{"m": "", "h": 1, "l": false}'), "empty model id"),
        (_sealed(b'{"m": "m", "h": -1, "l": false}'), "negative hops"),
        (_sealed(b'{"m": "m", "h": true, "l": false}'), "hops a bool"),
        (_sealed(b'{"m": "m", "h": 1, "l": 0}'), "load here not a bool"),
        (_sealed(b'{"m": "m", "h": 1, "l": false, "o": "delete"}'), "unknown op"),
        (_sealed(b'{"h": 1, "l": false}'), "no model id"),
    ],
)
def test_garbage_headers_are_dropped_and_counted(payload: bytes, why: str) -> None:
    async def main() -> None:
        pair = Pair()
        with pytest.raises(PeerUnreachable):
            await pair.raw(payload)
        assert pair.far.served == [], why
        assert pair.far.loads == [], why
        assert pair.b.dropped == {"malformed": 1}, why

    simulate(main)


def test_garbage_that_fails_the_seal_is_dropped() -> None:
    async def main() -> None:
        pair = Pair()
        with pytest.raises(PeerUnreachable):
            await pair.raw(b"\x01garbage")
        assert pair.b.dropped == {"truncated": 1}
        assert pair.far.served == []

    simulate(main)


def test_a_well_formed_hand_made_request_is_served() -> None:
    async def main() -> None:
        pair = Pair()
        header = json.dumps({"m": "m", "h": 1, "l": True, "f": A}).encode()
        reply = Signer([KEY]).open(await pair.raw(_sealed(header, b"body")))
        assert reply == b"\x00answer to body"
        assert pair.far.served == [(b"body", "m", 1, True)]

    simulate(main)


def test_request_load_calls_the_load_callback_only() -> None:
    async def main() -> None:
        pair = Pair()
        await pair.a.request_load(B, "m7")
        assert pair.far.loads == ["m7"]
        assert pair.far.served == []

    simulate(main)


def test_a_node_that_takes_no_loads_refuses_them_as_unavailable() -> None:
    async def main() -> None:
        pair = Pair(load=False)
        with pytest.raises(RemoteError) as caught:
            await pair.a.request_load(B, "m7")
        assert caught.value.code is Code.UNAVAILABLE
        assert pair.far.served == []

    simulate(main)


def test_a_node_that_serves_nothing_drops_forwards() -> None:
    async def main() -> None:
        pair = Pair()
        pair.b.serve(None)
        with pytest.raises(PeerUnreachable):
            await pair.a.forward(B, "m", b"x", 0, False)
        assert pair.far.served == []

    simulate(main)


def test_a_killed_peer_is_unreachable_and_the_forward_retryable() -> None:
    async def main() -> None:
        pair = Pair()
        await pair.a.forward(B, "m", b"x", 0, False)
        pair.net.kill(B)
        with pytest.raises(PeerUnreachable) as caught:
            await pair.a.forward(B, "m", b"x", 0, False)
        assert retryable(caught.value)
        assert len(pair.far.served) == 1
        assert pair.net.counts["killed"] == 1

    simulate(main)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (PeerUnreachable("gone"), True),
        (RemoteError(Code.UNAVAILABLE, "draining"), True),
        (RemoteError(Code.NOT_FOUND, "no such model"), False),
        (RemoteError(Code.ABORTED, "loop"), False),
        (RemoteError(Code.INVALID_ARGUMENT, "bad tensor"), False),
        (InvalidRequest("bad tensor"), False),
        (RuntimeError("local bug"), False),
    ],
)
def test_retryable(err: Exception, expected: bool) -> None:
    assert retryable(err) is expected
