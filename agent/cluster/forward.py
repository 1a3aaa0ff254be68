"""Inference requests forwarded between agents over the peer port.

A forwarded request is sealed by the cluster ``Signer`` (a peer that cannot
prove it holds the key cannot make this node run models)::

    header length (2 bytes, big endian) | header JSON | KServe v2 ModelInferRequest bytes

with the header ``{"m": model id, "h": hops, "l": load here, "f": sender}``.
A header with ``"o": "load"`` and no request asks the peer to load the model
in the background and answers at once (copies that follow load, drain
handoff); the caller learns of the copy from gossip.
The reply, sealed too, is ``status (1 byte) | body``: status 0 and the
runtime's ModelInferResponse bytes, or a ``Code`` and the error message. The
request bytes are never parsed here: the receiving node's router takes them
as a client's.

``hops`` counts how often the request was forwarded; one arriving with more
than ``max_hops`` is refused (ABORTED), so a routing loop between nodes whose
views disagree ends quickly. ``load here`` asks the receiver to load the model
rather than look for a copy elsewhere (the sender placed it there).

Errors at the sender: the peer could not be reached, or it went away before
answering, raise ``PeerUnreachable``; an error the peer answered raises
``RemoteError`` with the peer's code. ``retryable`` tells the router which of
them may go to another copy: unreachable peers and UNAVAILABLE answers (the
peer is draining, or its runtime died under the request). A KServe v2
inference has no effect that outlives its answer, so a request lost with the
node running it is sent again elsewhere.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from agent.cluster.auth import BadMessage, Signer
from agent.cluster.transport import PeerUnreachable, Transport
from agent.errors import Code, MeshletError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 4096

Serve = Callable[[bytes, str, int, bool], Awaitable[bytes]]
"""``serve(request, model_id, hops, load_here) -> response``: the local router."""

Load = Callable[[str], None]
"""``load(model_id)``: start loading a model here, in the background."""


class RemoteError(MeshletError):
    """An error a peer answered a forwarded request with; carries the peer's code."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


class TooManyHops(MeshletError):
    code = Code.ABORTED


class LoadRefused(MeshletError):
    code = Code.UNAVAILABLE


def retryable(err: Exception) -> bool:
    """Whether a failed forward may be sent to another copy."""
    return isinstance(err, PeerUnreachable) or (
        isinstance(err, RemoteError) and err.code == Code.UNAVAILABLE
    )


class Forwarder:
    def __init__(
        self, transport: Transport, signer: Signer, timeout_s: float, max_hops: int
    ) -> None:
        self.address = transport.address
        self._transport = transport
        self._signer = signer
        self._timeout_s = timeout_s
        self._max_hops = max_hops
        self._serve: Serve | None = None
        self._load: Load | None = None
        self.dropped: Counter[str] = Counter()

    def serve(self, handler: Serve | None, load: Load | None = None) -> None:
        """Answer forwarded requests with ``handler`` and load requests with
        ``load`` (``None``: refuse them all)."""
        self._serve = handler
        self._load = load
        self._transport.serve(self._handle if handler is not None else None)

    async def request_load(self, address: str, model_id: str) -> None:
        """Ask ``address`` to load ``model_id`` (it answers before the load ends)."""
        await self.forward(address, model_id, b"", 0, True, op="load")

    async def forward(
        self, address: str, model_id: str, request: bytes, hops: int, load_here: bool,
        op: str = "infer",
    ) -> bytes:
        fields: dict[str, Any] = {"m": model_id, "h": hops + 1, "l": load_here, "f": self.address}
        if op != "infer":
            fields["o"] = op
        header = json.dumps(fields, separators=(",", ":")).encode()
        payload = self._signer.seal(len(header).to_bytes(2, "big") + header + request)
        data = await self._transport.request(address, payload, self._timeout_s)
        try:
            reply = self._signer.open(data)
        except BadMessage as e:
            raise PeerUnreachable(f"peer {address}: unreadable reply ({e.reason})") from None
        if not reply:
            raise PeerUnreachable(f"peer {address}: empty reply")
        if reply[0] == Code.OK:
            return reply[1:]
        raise RemoteError(Code.from_number(reply[0]), reply[1:].decode(errors="replace"))

    async def _handle(self, sender: str, data: bytes) -> bytes | None:
        serve = self._serve
        if serve is None:
            return None
        try:
            model_id, hops, load_here, request, op = self._open(data)
        except BadMessage as e:
            self.dropped[e.reason] += 1
            log.debug("forward: dropped a request from %s: %s", sender, e.message)
            return None
        try:
            if hops > self._max_hops:
                raise TooManyHops(
                    f"model {model_id!r}: forwarded {hops} times, more than {self._max_hops}"
                )
            if op == "load":
                if self._load is None:
                    raise LoadRefused("this node takes no load requests")
                self._load(model_id)
                response = b""
            else:
                response = await serve(request, model_id, hops, load_here)
        except MeshletError as err:
            return self._signer.seal(bytes([err.code]) + err.message.encode())
        except Exception as err:
            log.exception("forwarded request for %s failed", model_id)
            return self._signer.seal(bytes([Code.INTERNAL]) + f"internal error: {err!r}".encode())
        return self._signer.seal(b"\0" + response)

    def _open(self, data: bytes) -> tuple[str, int, bool, bytes, str]:
        payload = self._signer.open(data)
        size = int.from_bytes(payload[:2], "big")
        if len(payload) < 2 + size or size > MAX_HEADER_BYTES:
            raise BadMessage("malformed", "truncated forward header")
        try:
            header: Any = json.loads(payload[2 : 2 + size])
        except ValueError:
            raise BadMessage("malformed", "forward header is not JSON") from None
        if not isinstance(header, dict):
            raise BadMessage("malformed", "forward header is not an object")
        model_id, hops, load_here = header.get("m"), header.get("h"), header.get("l")
        op = header.get("o", "infer")
        if not (isinstance(model_id, str) and model_id and type(hops) is int and hops >= 0
                and isinstance(load_here, bool) and op in ("infer", "load")):
            raise BadMessage("malformed", "bad forward header fields")
        return model_id, hops, load_here, payload[2 + size :], op
