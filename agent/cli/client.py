"""The gRPC side of the CLI: one channel to one meshlet, and its errors as one line.

``async with Client(address) as client:`` gives the two stubs on one channel;
an ``AioRpcError`` that escapes the block becomes a ``CliError`` such as
``NOT_FOUND: model 'x' is not registered`` or ``cannot reach meshlet at ...``.
"""

from __future__ import annotations

import argparse
import os
from types import TracebackType

import grpc

from agent.cli.errors import CliError
from agent.proto import grpc_service_pb2_grpc, meshlet_pb2_grpc, model_mesh_pb2_grpc

DEFAULT_ADDRESS = "localhost:8033"
ADDRESS_ENV = "MESHLET_ADDRESS"
CHANNEL_OPTIONS = [
    # A RepositoryIndex of a million models is tens of MiB; the server's own
    # request limit is the one that matters for sends.
    ("grpc.max_receive_message_length", 1 << 30),
    ("grpc.max_send_message_length", 1 << 30),
]


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    from_env = os.environ.get(ADDRESS_ENV)
    if from_env:
        source = f"{from_env}, from ${ADDRESS_ENV}"
    else:
        source = f"{DEFAULT_ADDRESS}; env ${ADDRESS_ENV}"
    parser.add_argument(
        "--address",
        default=from_env or DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help=f"the meshlet's gRPC address (default: {source})",
    )


class Client:
    """A channel to one meshlet with the ModelMesh and KServe v2 stubs on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.mmesh = model_mesh_pb2_grpc.ModelMeshStub(self.channel)
        self.inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.cache = meshlet_pb2_grpc.CacheStub(self.channel)
        self.node = meshlet_pb2_grpc.NodeStub(self.channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        error = self.error(exc) if isinstance(exc, grpc.aio.AioRpcError) else None
        await self.channel.close()
        if error is not None:
            raise error from None

    def unreachable(self, err: grpc.aio.AioRpcError) -> bool:
        """UNAVAILABLE because no connection was made, not because the server said so."""
        return err.code() == grpc.StatusCode.UNAVAILABLE and (
            self.channel.get_state() != grpc.ChannelConnectivity.READY
        )

    def describe(self, err: grpc.aio.AioRpcError) -> str:
        """One line: ``CODE: details``, or ``cannot reach meshlet at ADDRESS (why)``."""
        if self.unreachable(err):
            return f"cannot reach meshlet at {self.address} ({err.details()})"
        return describe_status(err.code(), err.details())

    def error(self, err: grpc.aio.AioRpcError) -> CliError:
        return CliError(self.describe(err))


def describe_status(code: grpc.StatusCode, details: str | None) -> str:
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details}" if details else name
