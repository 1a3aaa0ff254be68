"""The peer port's transport: ``Transport`` over one raw-bytes gRPC method.

``/meshlet.v1.Peer/Exchange`` takes and returns opaque bytes (sealed by
``agent.cluster.auth``, encoded by ``agent.cluster.membership``). The server
side is a generic handler added to the agent's peer gRPC server; the client
side keeps one channel per peer address. Every RPC error or deadline becomes
``PeerUnreachable``; a request the handler drops (``None``) is answered with
UNAVAILABLE, so to the sender it looks like a lost message. The sender passed
to the handler is the remote *host* (``context.peer()``): its source port is
ephemeral, so membership compares hosts.

With ``tls`` (``agent.cluster.tls.PeerTls``) the client dials over mutual TLS and
checks the server's certificate against ``tls.server_name`` rather than the IP it
dialled, so every peer certificate must carry that name as a DNS SAN. The server
side is the peer server's: ``server.add_secure_port(addr, tls.server_credentials())``.
A handshake that fails (no TLS, wrong CA) is, to the sender, ``PeerUnreachable``.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from agent.cluster.tls import PeerTls
from agent.cluster.transport import Handler, PeerUnreachable

log = logging.getLogger(__name__)

SERVICE = "meshlet.v1.Peer"
METHOD = f"/{SERVICE}/Exchange"


def peer_host(peer: str) -> str:
    """``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``; ``ipv6:[::1]:5000`` -> ``::1``."""
    _, _, rest = peer.partition(":")
    host, _, _ = rest.rpartition(":")
    return host.strip("[]") or rest


class GrpcTransport:
    """``Transport`` over the peer gRPC port; one channel per peer address."""

    def __init__(
        self, address: str, max_message_bytes: int, tls: PeerTls | None = None
    ) -> None:
        """``address``: this node's advertised ``host:port``; ``tls``: dial peers over
        mutual TLS (the files are read here, once, so a request never touches disk)."""
        self._address = address
        self._max = max_message_bytes
        self._tls = tls
        self._credentials = tls.channel_credentials() if tls is not None else None
        self._handler: Handler | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def address(self) -> str:
        return self._address

    def serve(self, handler: Handler | None) -> None:
        self._handler = handler

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """Add this to the peer gRPC server (``server.add_generic_rpc_handlers``)."""
        method = grpc.unary_unary_rpc_method_handler(self._exchange)  # raw bytes each way
        return grpc.method_handlers_generic_handler(SERVICE, {"Exchange": method})

    async def _exchange(self, payload: bytes, context: Any) -> bytes:
        handler = self._handler
        reply = await handler(peer_host(context.peer()), payload) if handler else None
        if reply is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "dropped")
        assert reply is not None
        return reply

    async def request(self, address: str, payload: bytes, timeout_s: float) -> bytes:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channel(address)
            self._channels[address] = channel
        try:
            reply: bytes = await channel.unary_unary(METHOD)(payload, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise PeerUnreachable(f"peer {address}: {err.code().name}") from None
        return reply

    def _channel(self, address: str) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self._max),
            ("grpc.max_receive_message_length", self._max),
            ("grpc.enable_retries", 0),
        ]
        if self._tls is None or self._credentials is None:
            return grpc.aio.insecure_channel(address, options=options)
        options.append(("grpc.ssl_target_name_override", self._tls.server_name))
        return grpc.aio.secure_channel(address, self._credentials, options=options)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
