"""The runtime end of the unix-socket channel: frames in, MLServer's data plane.

The agent's hot path used to be a second gRPC hop (agent -> MLServer's gRPC
port). That hop cost as much CPU as MLServer's own serving, so throughput was
0.6x direct. Here a frame carries the serialized ``ModelInferRequest`` and is
handed straight to ``DataPlane.infer``, exactly as MLServer's gRPC servicer
does, minus HTTP/2. Runs inside the MLServer process only (see framing.py for
the format).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import grpc
from mlserver.errors import MLServerError
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.grpc.utils import STATUS_CODE_MAPPING
from mlserver.handlers import DataPlane

from adapters.mlserver.framing import (
    KIND_INFER,
    KIND_PREPARE,
    STATUS_OK,
    FrameDecoder,
    FrameError,
    encode_frame,
)

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[tuple[int, bytes]]]
"""Takes a request payload, returns ``(status, payload)`` for the answer frame."""

_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]

# Per connection: stop reading new requests past this many in flight, resume
# below half of it, so a client that floods cannot grow tasks without bound.
MAX_IN_FLIGHT = 1024


def _status_number(err: MLServerError) -> int:
    # MLServer's own table (mlserver/grpc/utils.py), so a client sees the same
    # status through the channel as through MLServer's gRPC port.
    code = STATUS_CODE_MAPPING.get(err.status_code)
    return code.value[0] if code is not None else _UNKNOWN


class DataPlaneHandler:
    """Answers one INFER payload the way MLServer's ``ModelInfer`` servicer does."""

    def __init__(self, data_plane: DataPlane) -> None:
        self._data_plane = data_plane

    async def __call__(self, payload: bytes) -> tuple[int, bytes]:
        request = pb.ModelInferRequest()
        try:
            request.ParseFromString(payload)
            inference_request = ModelInferRequestConverter.to_types(request)
        except Exception as err:  # a bad request must never reach the model
            return _INVALID_ARGUMENT, f"malformed ModelInferRequest: {err}".encode()
        try:
            result = await self._data_plane.infer(
                payload=inference_request, name=request.model_name, version=request.model_version
            )
            response = ModelInferResponseConverter.from_types(
                result, use_raw=bool(request.raw_input_contents)
            )
            return STATUS_OK, response.SerializeToString()
        except MLServerError as err:
            return _status_number(err), str(err).encode()
        except Exception as err:
            log.exception("infer on model %r failed", request.model_name)
            return _INTERNAL, str(err).encode()


async def prepare_implementation(payload: bytes) -> tuple[int, bytes]:
    """Import the module of a runtime class (``KIND_PREPARE``), so that the
    memory and time of a runtime's first import (scikit-learn: ~80 MiB) are
    spent before the first model of that type loads, and are measured as the
    process's, not as that model's. Imported on a thread: the event loop keeps
    answering requests and liveness pings meanwhile."""
    module = payload.decode("utf-8", "replace").rpartition(".")[0]
    try:
        await asyncio.to_thread(importlib.import_module, module)
    except Exception as err:  # ImportError, or the module's own failure
        return _FAILED_PRECONDITION, f"cannot import {module}: {err}".encode()
    return STATUS_OK, b""


def handlers(data_plane: DataPlane) -> dict[int, Handler]:
    """The handler of each frame kind the launcher serves."""
    return {KIND_INFER: DataPlaneHandler(data_plane), KIND_PREPARE: prepare_implementation}


class _ServerConnection(asyncio.Protocol):
    """One agent connection: each frame becomes a task for its kind's handler;
    answers go out as they finish, in any order, tagged with the request id."""

    def __init__(self, handlers: Mapping[int, Handler], max_payload_bytes: int) -> None:
        self._handlers = handlers
        self._max_payload = max_payload_bytes
        self._decoder = FrameDecoder(self._on_frame, max_payload_bytes)
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading_paused = False
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
        except FrameError as err:
            # The stream is out of step; nothing after this point can be trusted.
            log.warning("channel: %s; closing that connection", err)
            assert self._transport is not None
            self._transport.abort()

    def _on_frame(self, request_id: int, kind: int, payload: bytes) -> None:
        handler = self._handlers.get(kind)
        if handler is None:
            raise FrameError(f"unknown frame kind {kind}")
        task = asyncio.get_running_loop().create_task(self._answer(handler, request_id, payload))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self._pause_reading()

    async def _answer(self, handler: Handler, request_id: int, payload: bytes) -> None:
        status, body = await handler(payload)
        if len(body) > self._max_payload:
            status = _RESOURCE_EXHAUSTED
            body = (
                f"response of {len(body)} bytes is over the channel limit of "
                f"{self._max_payload} bytes"
            ).encode()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frame(request_id, status, body))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("channel: answering a request failed", exc_info=task.exception())
        if len(self._tasks) < MAX_IN_FLIGHT // 2:
            self._resume_reading()

    def pause_writing(self) -> None:
        # The agent is not reading its answers: stop taking new requests too.
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self._writing_paused
            and len(self._tasks) < MAX_IN_FLIGHT // 2
            and self._transport is not None
            and not self._transport.is_closing()
        ):
            self._reading_paused = False
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        # Nobody is left to read the answers.
        for task in self._tasks:
            task.cancel()


class ChannelServer:
    """Listens on a unix socket and serves each connection with ``handler``."""

    def __init__(self, server: asyncio.Server, socket_path: str) -> None:
        self._server = server
        self._socket_path = socket_path

    @classmethod
    async def start(
        cls, socket_path: str, handlers: Mapping[int, Handler], max_payload_bytes: int
    ) -> ChannelServer:
        # A socket file left by a killed predecessor would make bind fail.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(
            lambda: _ServerConnection(handlers, max_payload_bytes), socket_path
        )
        os.chmod(socket_path, 0o600)
        return cls(server, socket_path)

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket_path)
