"""The frame format of the unix-socket channel between the agent and a launcher.

Both ends import this module, so it imports neither MLServer nor any
protobuf module: the agent's process must never load MLServer (its
``inference.*`` descriptors clash with tritonclient's in protobuf's default
pool, and it is a heavy import the agent has no use for).

Every frame is a fixed header followed by ``payload_length`` bytes::

    <I payload_length> <I request_id> <B kind_or_status> <payload>

Agent -> runtime: ``kind`` is ``KIND_INFER`` and the payload a serialized
``inference.ModelInferRequest``, or ``KIND_PREPARE`` and the payload a runtime
class's dotted path (``mlserver_sklearn.SKLearnModel``), whose module the
runtime imports (answer: an empty payload). Runtime -> agent: the byte is a gRPC status
number; ``STATUS_OK`` carries a serialized ``ModelInferResponse``, any other
status a UTF-8 error message. Requests on one connection are pipelined and
answered in any order; the request id pairs an answer with its request.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

HEADER = struct.Struct("<IIB")
HEADER_SIZE = HEADER.size

KIND_INFER = 1
KIND_PREPARE = 2
STATUS_OK = 0

MAX_REQUEST_ID = 0xFFFFFFFF
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

FrameHandler = Callable[[int, int, bytes], None]
"""Called as ``handler(request_id, kind_or_status, payload)`` once per frame."""


class FrameError(Exception):
    """The byte stream is not a valid sequence of frames; drop the connection."""


class FrameDecoder:
    """Splits a byte stream into frames and hands each to ``on_frame``.

    Fed from ``Protocol.data_received``; keeps a partial frame between calls.
    A header announcing more than ``max_payload_bytes`` raises ``FrameError``
    before any of that payload is buffered.
    """

    __slots__ = ("_buffer", "_max_payload", "_on_frame")

    def __init__(self, on_frame: FrameHandler, max_payload_bytes: int) -> None:
        self._on_frame = on_frame
        self._max_payload = max_payload_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer:
            # Common case: the previous read ended on a frame boundary, so
            # parse straight from ``data`` without copying it into the buffer.
            offset = self._parse(data)
            if offset < len(data):
                buffer += memoryview(data)[offset:]
            return
        buffer += data
        with memoryview(buffer) as view:
            offset = self._parse(view)
        del buffer[:offset]

    def _parse(self, view: bytes | memoryview) -> int:
        """Hand out every whole frame in ``view``; return where the rest starts."""
        end = len(view)
        offset = 0
        unpack_from = HEADER.unpack_from
        on_frame = self._on_frame
        while end - offset >= HEADER_SIZE:
            length, request_id, kind = unpack_from(view, offset)
            if length > self._max_payload:
                raise FrameError(
                    f"frame of {length} bytes is over the limit of {self._max_payload} bytes"
                )
            start = offset + HEADER_SIZE
            stop = start + length
            if stop > end:
                break
            on_frame(request_id, kind, bytes(view[start:stop]))
            offset = stop
        return offset


def encode_frame(request_id: int, kind_or_status: int, payload: bytes) -> bytes:
    """One frame as a single bytes object, so it goes out in one write."""
    return HEADER.pack(len(payload), request_id, kind_or_status) + payload
