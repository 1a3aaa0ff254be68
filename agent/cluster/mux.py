"""Several protocols on one peer port: a one-byte channel tag in front of each payload.

Membership, state gossip and forwarded requests each get a ``Channel`` of one
``Transport`` (``Mux(transport).channel(n)``), which is itself a ``Transport``:
a channel's ``request`` prefixes its tag, and an incoming request is handed to
the handler of the channel its first byte names. A request for a channel with
no handler, or with no tag at all, is dropped (``None``), as a lost message is.
The tag rides outside the HMAC seal; each protocol seals its own payload, so a
message moved to another channel fails that protocol's decoding and is dropped.
"""

from __future__ import annotations

from agent.cluster.transport import Handler, Transport

MEMBERSHIP = 0
GOSSIP = 1
FORWARD = 2


class Channel:
    """One protocol's end of a ``Mux`` (implements ``Transport``)."""

    def __init__(self, mux: Mux, tag: int) -> None:
        self._mux = mux
        self._tag = bytes([tag])

    @property
    def address(self) -> str:
        return self._mux.transport.address

    def serve(self, handler: Handler | None) -> None:
        self._mux.handlers[self._tag[0]] = handler

    async def request(self, address: str, payload: bytes, timeout_s: float) -> bytes:
        return await self._mux.transport.request(address, self._tag + payload, timeout_s)


class Mux:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.handlers: dict[int, Handler | None] = {}
        transport.serve(self._handle)

    def channel(self, tag: int) -> Channel:
        if not 0 <= tag < 256:
            raise ValueError(f"channel tag {tag} is not a byte")
        return Channel(self, tag)

    async def _handle(self, sender: str, data: bytes) -> bytes | None:
        handler = self.handlers.get(data[0]) if data else None
        return await handler(sender, data[1:]) if handler is not None else None
