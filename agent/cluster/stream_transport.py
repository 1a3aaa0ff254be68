"""The peer port's transport: ``Transport`` as length-prefixed frames over TCP.

**Why not gRPC** (DESIGN.md says the peer port is gRPC): a grpc.aio unary
round trip costs ~0.85 ms on the 2-core development machine, against ~0.05 ms
for asyncio streams, and a forwarded inference must add under 1 ms in all.
The peer port carries only our own sealed messages between agents of one
version, so it needs none of gRPC's features; what users and tools talk to
stays gRPC (port 8033).

Every frame is ``kind (1 byte) | id (4 bytes) | length (4 bytes) | payload``,
big endian. ``kind`` is REQUEST, REPLY, or DROPPED (the handler returned
``None``: to the caller that is ``PeerUnreachable`` at once, as a lost
message would be after its timeout). ``id`` pairs a reply with its request:
one connection carries many requests at once, answered in any order, so a
slow forwarded inference does not hold up the pings behind it.

* **Client**: one connection per peer address, dialled on first use (within
  the request's timeout). Any fault on it (reset, EOF, a frame that breaks the
  rules) fails every request waiting on it with ``PeerUnreachable`` and drops
  the connection; the next request dials again.
* **Server**: each request runs in its own task; its reply is written when it
  is ready. A frame longer than ``max_message_bytes`` (``oversized``) or of an
  unknown kind (``bad_frame``) closes the connection and is counted in
  ``dropped``.
* **Sender**: the handler gets the connection's remote *host* (its source port
  is ephemeral), as membership expects.
* **TLS** (``agent.cluster.tls.PeerTls``): both sides present a certificate
  signed by the cluster CA; the client checks the server's against
  ``tls.server_name``, not the IP it dialled. A failed handshake is, to the
  sender, ``PeerUnreachable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections import Counter

from agent.cluster.tls import PeerTls
from agent.cluster.transport import Handler, PeerUnreachable

log = logging.getLogger(__name__)

REQUEST, REPLY, DROPPED = 0, 1, 2
HEADER_BYTES = 9
HANDSHAKE_TIMEOUT_S = 10.0


def _frame(kind: int, ident: int, payload: bytes) -> bytes:
    return bytes([kind]) + ident.to_bytes(4, "big") + len(payload).to_bytes(4, "big") + payload


def _host(host: str) -> str:
    """The sender's host as peers advertise it: an IPv4 client of a dual-stack
    listener shows as ``::ffff:10.0.0.7``; that is ``10.0.0.7``."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped) if mapped is not None else host


class BadFrame(Exception):
    """A frame that breaks the rules; the connection it came on is closed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # the key it is counted under in ``dropped``


async def _read_frame(reader: asyncio.StreamReader, max_bytes: int) -> tuple[int, int, bytes]:
    """``(kind, id, payload)``; IncompleteReadError at EOF, BadFrame if too long."""
    header = await reader.readexactly(HEADER_BYTES)
    kind, ident = header[0], int.from_bytes(header[1:5], "big")
    length = int.from_bytes(header[5:9], "big")
    if length > max_bytes:
        raise BadFrame("oversized", f"a frame of {length} bytes, more than {max_bytes}")
    return kind, ident, await reader.readexactly(length)


class _Connection:
    """The client side of one connection to a peer."""

    def __init__(
        self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        max_bytes: int,
    ) -> None:
        self.address = address
        self._writer = writer
        self._pending: dict[int, asyncio.Future[bytes | None]] = {}
        self._next_id = 0
        self.closed = False
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read(reader, max_bytes), name=f"peer-conn-{address}"
        )

    async def request(self, payload: bytes) -> bytes | None:
        """The reply, or ``None`` when the peer dropped the request."""
        if self.closed:
            raise PeerUnreachable(f"peer {self.address}: connection closed")
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        ident = self._next_id
        waiter: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._pending[ident] = waiter
        try:
            self._writer.write(_frame(REQUEST, ident, payload))
            await self._writer.drain()
            return await waiter
        except (ConnectionError, OSError) as e:
            self.close()
            raise PeerUnreachable(f"peer {self.address}: {e}") from None
        finally:
            self._pending.pop(ident, None)

    async def _read(self, reader: asyncio.StreamReader, max_bytes: int) -> None:
        why = "connection closed"
        try:
            while True:
                kind, ident, payload = await _read_frame(reader, max_bytes)
                waiter = self._pending.get(ident)
                if kind not in (REPLY, DROPPED):
                    raise BadFrame("bad_frame", f"a frame of kind {kind} from a server")
                if waiter is not None and not waiter.done():
                    waiter.set_result(payload if kind == REPLY else None)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError) as e:
            why = f"connection lost ({e.__class__.__name__})"
        except BadFrame as e:
            why = str(e)
        finally:
            self._fail(why)

    def _fail(self, why: str) -> None:
        self.closed = True
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(PeerUnreachable(f"peer {self.address}: {why}"))
        self._pending.clear()
        self._writer.close()

    def close(self) -> None:
        if not self.closed:
            self._reader_task.cancel()
            self._fail("connection closed")

    async def wait_closed(self) -> None:
        await asyncio.gather(self._reader_task, return_exceptions=True)
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self._writer.wait_closed()


class StreamTransport:
    """``Transport`` over the peer TCP port. ``listen`` opens it; ``close`` shuts it."""

    def __init__(
        self, advertise_host: str, max_message_bytes: int, tls: PeerTls | None = None
    ) -> None:
        """``advertise_host``: the host peers reach this node at; ``tls``: mutual TLS
        both ways (the files are read here, once)."""
        self._host = advertise_host
        self._max = max_message_bytes
        self._tls = tls
        self._server_ssl = tls.server_context() if tls is not None else None
        self._client_ssl = tls.client_context() if tls is not None else None
        self._handler: Handler | None = None
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: dict[str, _Connection] = {}
        self._dial_locks: dict[str, asyncio.Lock] = {}
        self._served: set[asyncio.StreamWriter] = set()
        self._answering: set[asyncio.Task[None]] = set()  # requests being answered here
        self._asking: set[asyncio.Future[None]] = set()  # requests of ours awaiting a reply
        self.dropped: Counter[str] = Counter()  # connections closed for a bad frame, by reason
        self.dials = 0  # connections opened to peers

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def serve(self, handler: Handler | None) -> None:
        self._handler = handler

    async def listen(self, host: str, port: int) -> int:
        """Open the peer port (``port`` 0: any free one); returns the port."""
        self._server = await asyncio.start_server(
            self._on_connection, host, port, ssl=self._server_ssl,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self._server_ssl else None,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self._port

    # -- client --------------------------------------------------------------------

    async def request(self, address: str, payload: bytes, timeout_s: float) -> bytes:
        asking: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asking.add(asking)
        try:
            async with asyncio.timeout(timeout_s):
                connection = await self._connection(address)
                reply = await connection.request(payload)
        except TimeoutError:
            raise PeerUnreachable(f"peer {address}: no answer in {timeout_s:g} s") from None
        finally:
            asking.set_result(None)
            self._asking.discard(asking)
        if reply is None:
            raise PeerUnreachable(f"peer {address}: dropped")
        return reply

    async def _connection(self, address: str) -> _Connection:
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        async with self._dial_locks.setdefault(address, asyncio.Lock()):  # one dial at a time
            connection = self._connections.get(address)
            if connection is None or connection.closed:
                connection = self._connections[address] = await self._dial(address)
        return connection

    async def _dial(self, address: str) -> _Connection:
        host, _, port = address.rpartition(":")
        try:
            reader, writer = await asyncio.open_connection(
                host.strip("[]"), int(port), ssl=self._client_ssl,
                server_hostname=self._tls.server_name if self._tls else None,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self._client_ssl else None,
            )
        except (OSError, ssl.SSLError, ValueError) as e:
            raise PeerUnreachable(f"peer {address}: cannot connect: {e}") from None
        self.dials += 1
        return _Connection(address, reader, writer, self._max)

    # -- server --------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        sender = _host(str(peer[0])) if peer else "?"
        self._served.add(writer)
        try:
            while True:
                kind, ident, payload = await _read_frame(reader, self._max)
                if kind != REQUEST:
                    raise BadFrame("bad_frame", f"a frame of kind {kind} from a client")
                task = asyncio.get_running_loop().create_task(
                    self._answer(sender, ident, payload, writer)
                )
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
        except BadFrame as e:
            self.dropped[e.reason] += 1
            log.debug("peer port: closed the connection from %s: %s", sender, e)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
            pass  # the peer went away
        finally:
            self._served.discard(writer)
            writer.close()

    async def _answer(
        self, sender: str, ident: int, payload: bytes, writer: asyncio.StreamWriter
    ) -> None:
        handler = self._handler
        try:
            reply = await handler(sender, payload) if handler is not None else None
        except Exception:
            log.exception("peer port: the handler failed on a request from %s", sender)
            reply = None
        if writer.is_closing():
            return
        frame = _frame(DROPPED, ident, b"") if reply is None else _frame(REPLY, ident, reply)
        writer.write(frame)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()

    # -- shutting down -------------------------------------------------------------

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop accepting connections; let requests being answered here, and this
        node's requests awaiting peers' replies, finish (up to ``grace_s``); then
        close every connection."""
        if self._server is not None:
            self._server.close()
        busy = self._answering | self._asking
        if busy and grace_s > 0:
            await asyncio.wait(busy, timeout=grace_s)
        for task in list(self._answering):
            task.cancel()
        for writer in list(self._served):
            writer.close()
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            connection.close()
        await asyncio.gather(*(c.wait_closed() for c in connections), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
