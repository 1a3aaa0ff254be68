"""The agent end of the unix-socket channel into one launcher's data plane.

This is the agent's hot path for every request served locally, so it is kept
lean: a few connections, requests spread round-robin and pipelined, one frame
written per request, answers matched by request id by the connection's
protocol callbacks, no per-request logging, and no ``drain`` unless the
socket's write buffer is over its high-water mark. Frame format: framing.py.
"""

from __future__ import annotations

import asyncio
from itertools import count
from typing import cast

from adapters.mlserver.framing import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    HEADER,
    KIND_INFER,
    KIND_PREPARE,
    MAX_REQUEST_ID,
    STATUS_OK,
    FrameDecoder,
    FrameError,
)
from agent.errors import Code, RequestTooLarge, RuntimeRequestFailed, RuntimeUnavailable


class _Connection(asyncio.Protocol):
    """One socket: writes request frames, resolves their futures as answers arrive."""

    def __init__(self, socket_path: str, max_payload_bytes: int) -> None:
        self._socket_path = socket_path
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(self._on_frame, max_payload_bytes)
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._transport: asyncio.Transport | None = None
        # Set while the write buffer is over its high-water mark; read on the hot path.
        self.write_paused: asyncio.Future[None] | None = None
        self._lost_reason = ""
        self.lost: asyncio.Future[None] = self._loop.create_future()

    @property
    def closed(self) -> bool:
        return self.lost.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, kind: int = KIND_INFER) -> asyncio.Future[bytes]:
        """Write one frame; the future resolves with the answer payload."""
        request_id = self._next_id = (self._next_id + 1) & MAX_REQUEST_ID
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[request_id] = future
        assert self._transport is not None
        self._transport.write(HEADER.pack(len(request), request_id, kind) + request)
        return future

    async def writable(self) -> None:
        """Wait while the socket's write buffer is over its high-water mark."""
        while self.write_paused is not None:
            await asyncio.shield(self.write_paused)

    def data_received(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
        except FrameError as err:
            self._lost_reason = f"runtime sent a malformed frame ({err})"
            assert self._transport is not None
            self._transport.abort()

    def _on_frame(self, request_id: int, status: int, payload: bytes) -> None:
        future = self._pending.pop(request_id, None)
        if future is None or future.done():  # its caller gave up (cancelled)
            return
        if status == STATUS_OK:
            future.set_result(payload)
        else:
            message = payload.decode("utf-8", "replace")
            future.set_exception(RuntimeRequestFailed(Code.from_number(status), message))

    def pause_writing(self) -> None:
        self.write_paused = self._loop.create_future()

    def resume_writing(self) -> None:
        paused, self.write_paused = self.write_paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._lost_reason or (str(exc) if exc else "connection closed")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    RuntimeUnavailable(f"runtime channel {self._socket_path} lost: {reason}")
                )
        self.resume_writing()
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class ChannelClient:
    """Pipelined, multiplexed requests to one launcher over a few unix sockets.

    ``connect`` opens every connection; a connection that is lost fails its
    pending requests with ``RuntimeUnavailable`` and is reopened on next use.
    Error answers raise ``RuntimeRequestFailed`` with the runtime's status.
    """

    def __init__(
        self,
        socket_path: str,
        connections: int = 4,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections}")
        self._socket_path = socket_path
        self._max_payload = max_payload_bytes
        self._connections: list[_Connection | None] = [None] * connections
        self._opening: list[asyncio.Task[_Connection] | None] = [None] * connections
        self._turns = count()
        self._closed = False

    @property
    def socket_path(self) -> str:
        return self._socket_path

    async def connect(self) -> None:
        """Open every connection; raises ``RuntimeUnavailable`` if one cannot be."""
        for slot in range(len(self._connections)):
            await self._reopen(slot)

    async def infer(self, request: bytes) -> bytes:
        """Send a serialized ``ModelInferRequest``; return the serialized response."""
        if len(request) > self._max_payload:
            raise RequestTooLarge(
                f"request of {len(request)} bytes is over the runtime channel's limit "
                f"of {self._max_payload} bytes"
            )
        connections = self._connections
        slot = next(self._turns) % len(connections)
        connection = connections[slot]
        if connection is None or connection.closed:
            connection = await self._reopen(slot)
        if connection.write_paused is not None:
            await connection.writable()
        return await connection.send(request)

    async def prepare(self, implementation: str) -> None:
        """Have the runtime import the module of ``implementation`` (a dotted
        class path); raises ``RuntimeRequestFailed`` if it cannot."""
        connection = self._connections[0]
        if connection is None or connection.closed:
            connection = await self._reopen(0)
        await connection.send(implementation.encode(), KIND_PREPARE)

    async def close(self) -> None:
        """Close every connection; pending requests fail with ``RuntimeUnavailable``."""
        self._closed = True
        # Not cancelled: a request waiting on a reconnect would then see a
        # CancelledError that is not its own (and a gRPC servicer that raises
        # one never answers its client). A connect attempt is quick, and one
        # that finds the client closed fails with RuntimeUnavailable.
        opening = [task for task in self._opening if task is not None]
        await asyncio.gather(*opening, return_exceptions=True)
        connections = [c for c in self._connections if c is not None]
        self._connections = [None] * len(self._connections)
        for connection in connections:
            connection.close()
        for connection in connections:
            await connection.lost

    async def _reopen(self, slot: int) -> _Connection:
        # Requests that find the same dead slot share one reconnect attempt.
        task = self._opening[slot]
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(slot))
            self._opening[slot] = task
            task.add_done_callback(lambda done: self._opened(slot, done))
        return await asyncio.shield(task)

    def _opened(self, slot: int, task: asyncio.Task[_Connection]) -> None:
        if self._opening[slot] is task:
            self._opening[slot] = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up

    async def _open(self, slot: int) -> _Connection:
        if self._closed:
            raise RuntimeUnavailable(f"runtime channel {self._socket_path} is closed")
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_unix_connection(
                lambda: _Connection(self._socket_path, self._max_payload), self._socket_path
            )
        except OSError as err:
            raise RuntimeUnavailable(
                f"cannot connect to runtime channel {self._socket_path}: {err}"
            ) from None
        if self._closed:
            connection.close()
            raise RuntimeUnavailable(f"runtime channel {self._socket_path} is closed")
        self._connections[slot] = connection
        return connection
