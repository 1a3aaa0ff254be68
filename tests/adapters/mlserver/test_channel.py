"""ChannelClient against a scripted unix-socket server speaking framing.py:
pipelining, answers out of order, error statuses, lost connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from adapters.mlserver.channel import ChannelClient
from adapters.mlserver.framing import (
    HEADER,
    KIND_INFER,
    STATUS_OK,
    FrameDecoder,
    FrameError,
    encode_frame,
)
from agent.errors import Code, RequestTooLarge, RuntimeRequestFailed, RuntimeUnavailable

# What the fake runtime does with a request payload: return (status, answer),
# or None to close the connection without answering.
Script = Callable[[bytes], Awaitable[tuple[int, bytes] | None]]


class FakeRuntime:
    """Answers every INFER frame with ``script``, each in its own task."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request_id: int, payload: bytes) -> None:
            result = await self.script(payload)
            if result is None:
                writer.close()
                return
            writer.write(encode_frame(request_id, *result))

        def on_frame(request_id: int, kind: int, payload: bytes) -> None:
            assert kind == KIND_INFER
            self.requests.append(payload)
            task = asyncio.get_running_loop().create_task(answer(request_id, payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        decoder = FrameDecoder(on_frame, 1024)
        try:
            while data := await reader.read(65536):
                decoder.feed(data)
        finally:
            for task in tasks:
                task.cancel()
            writer.close()


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    return str(tmp_path / "c.sock")


async def serve(runtime: FakeRuntime, socket_path: str) -> asyncio.Server:
    return await asyncio.start_unix_server(runtime.handle, socket_path)


@pytest.fixture
async def client(socket_path: str) -> AsyncIterator[ChannelClient]:
    client = ChannelClient(socket_path, connections=1, max_payload_bytes=1024)
    yield client
    await client.close()


async def echo(payload: bytes) -> tuple[int, bytes]:
    return STATUS_OK, payload[::-1]


async def test_pipelined_requests_get_their_own_answers_in_any_order(
    socket_path: str, client: ChannelClient
) -> None:
    first_arrived = asyncio.Event()
    release_first = asyncio.Event()

    async def script(payload: bytes) -> tuple[int, bytes]:
        if payload == b"first":
            first_arrived.set()
            await release_first.wait()  # answered after "second"
        return STATUS_OK, payload.upper()

    server = await serve(FakeRuntime(script), socket_path)
    try:
        await client.connect()
        first = asyncio.create_task(client.infer(b"first"))
        await first_arrived.wait()
        assert await client.infer(b"second") == b"SECOND"
        assert not first.done()
        release_first.set()
        assert await first == b"FIRST"
    finally:
        server.close()


async def test_requests_spread_over_connections(socket_path: str) -> None:
    runtime = FakeRuntime(echo)
    server = await serve(runtime, socket_path)
    client = ChannelClient(socket_path, connections=3, max_payload_bytes=1024)
    try:
        await client.connect()
        answers = await asyncio.gather(*(client.infer(b"ab%d" % i) for i in range(30)))
        assert answers == [(b"ab%d" % i)[::-1] for i in range(30)]
        assert runtime.connections == 3
    finally:
        await client.close()
        server.close()


async def test_error_status_raises_runtime_request_failed(
    socket_path: str, client: ChannelClient
) -> None:
    async def script(payload: bytes) -> tuple[int, bytes]:
        return Code.NOT_FOUND, b"Model nope not found"

    server = await serve(FakeRuntime(script), socket_path)
    try:
        with pytest.raises(RuntimeRequestFailed) as raised:
            await client.infer(b"x")
        assert raised.value.code == Code.NOT_FOUND
        assert raised.value.message == "Model nope not found"
    finally:
        server.close()


async def test_lost_connection_fails_pending_requests_then_reconnects(
    socket_path: str, client: ChannelClient
) -> None:
    async def script(payload: bytes) -> tuple[int, bytes] | None:
        return None if payload == b"die" else await echo(payload)

    runtime = FakeRuntime(script)
    server = await serve(runtime, socket_path)
    try:
        assert await client.infer(b"ok") == b"ko"
        with pytest.raises(RuntimeUnavailable, match="lost"):
            await client.infer(b"die")
        assert await client.infer(b"again") == b"niaga"
        assert runtime.connections == 2
    finally:
        server.close()


async def test_malformed_answer_drops_the_connection(
    socket_path: str, client: ChannelClient
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(HEADER.size)
        writer.write(HEADER.pack(1 << 30, 1, STATUS_OK))  # over the client's limit
        await reader.read()
        writer.close()

    server = await asyncio.start_unix_server(handle, socket_path)
    try:
        with pytest.raises(RuntimeUnavailable, match="malformed frame"):
            await client.infer(b"x")
    finally:
        server.close()


async def test_request_over_the_limit_is_refused_before_sending(client: ChannelClient) -> None:
    with pytest.raises(RequestTooLarge, match="2000 bytes"):
        await client.infer(b"x" * 2000)


async def test_no_runtime_listening_is_unavailable(client: ChannelClient) -> None:
    with pytest.raises(RuntimeUnavailable, match="cannot connect"):
        await client.connect()
    with pytest.raises(RuntimeUnavailable, match="cannot connect"):
        await client.infer(b"x")


async def test_closed_client_is_unavailable(socket_path: str, client: ChannelClient) -> None:
    server = await serve(FakeRuntime(echo), socket_path)
    try:
        await client.connect()
        await client.close()
        with pytest.raises(RuntimeUnavailable, match="closed"):
            await client.infer(b"x")
    finally:
        server.close()


def test_decoder_reassembles_frames_split_anywhere() -> None:
    frames = [(7, STATUS_OK, b"hello"), (8, 3, b""), (9, STATUS_OK, b"x" * 300)]
    stream = b"".join(encode_frame(*frame) for frame in frames)
    for step in (1, 2, 9, 10, 64, len(stream)):
        seen: list[tuple[int, int, bytes]] = []
        decoder = FrameDecoder(lambda *frame, seen=seen: seen.append(frame), 1024)
        for start in range(0, len(stream), step):
            decoder.feed(stream[start : start + step])
        assert seen == frames, step


def test_decoder_refuses_an_oversized_header() -> None:
    decoder = FrameDecoder(lambda *frame: None, 16)
    with pytest.raises(FrameError, match="over the limit"):
        decoder.feed(HEADER.pack(17, 1, KIND_INFER))


async def test_close_during_a_reconnect_fails_the_request_as_unavailable(
    socket_path: str, client: ChannelClient
) -> None:
    server = await serve(FakeRuntime(echo), socket_path)
    try:
        request = asyncio.create_task(client.infer(b"x"))
        await asyncio.sleep(0)  # poll once: the request is now waiting on its connect
        await client.close()
        with pytest.raises(RuntimeUnavailable, match="closed"):
            await request
    finally:
        server.close()
