"""This agent's place in the cluster: the peer port, membership, joining.

``ClusterNode`` runs the peer gRPC server (``peer_port``), membership over it
(``agent.cluster.membership``, messages sealed with the cluster keys) and keeps
trying the seeds until one answers (a node started before its seeds is not
left alone). On stop it leaves gracefully, so peers see LEFT, not DEAD.

Without cluster keys there is no peer port: a node with no shared secret
cannot prove who it is, so it runs alone (and says so in the log).
Not wired yet: gossip of the registry and inventory, and forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import grpc

from agent.cluster.auth import Signer
from agent.cluster.grpc_transport import GrpcTransport
from agent.cluster.membership import Member, Membership, MembershipSettings

log = logging.getLogger(__name__)

JOIN_RETRY_S = (0.2, 5.0)  # first and longest wait between rounds of join attempts


class ClusterNode:
    def __init__(
        self,
        host: str,
        port: int,
        advertise_host: str,
        keys: Sequence[bytes],
        seeds: Sequence[str],
        grpc_address: str,
        settings: MembershipSettings | None = None,
        max_message_bytes: int = 4 << 20,
    ) -> None:
        self._host = host
        self._port = port
        self._advertise_host = advertise_host
        self._keys = list(keys)
        self._seeds = list(seeds)
        self._grpc_address = grpc_address
        self._settings = settings or MembershipSettings()
        self._max = max_message_bytes
        self._server: grpc.aio.Server | None = None
        self._transport: GrpcTransport | None = None
        self.membership: Membership | None = None
        self._joiner: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self._advertise_host}:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self._max),
            ("grpc.so_reuseport", 0),
        ])
        self.port = server.add_insecure_port(f"{self._host}:{self._port}")
        transport = GrpcTransport(self.address, self._max)
        server.add_generic_rpc_handlers([transport.rpc_handler()])
        await server.start()
        self._server, self._transport = server, transport
        self.membership = Membership(
            transport, Signer(self._keys, max_bytes=self._max), self._settings,
            meta={"grpc": self._grpc_address},
        )
        self.membership.start()
        seeds = [s for s in self._seeds if s != self.address]
        if seeds:
            self._joiner = asyncio.create_task(self._join(seeds), name="cluster-join")
        log.info("cluster: peer port %s, seeds: %s", self.address, ", ".join(seeds) or "none")

    async def _join(self, seeds: list[str]) -> None:
        delay = JOIN_RETRY_S[0]
        while self.membership is not None:
            answered = await self.membership.join(seeds)
            if answered:
                log.info("cluster: joined through %d of %d seeds", answered, len(seeds))
                return
            log.info("cluster: no seed answered (%s); trying again in %.1f s",
                     ", ".join(seeds), delay)
            await asyncio.sleep(delay)  # retry backoff, not a wait for a condition
            delay = min(delay * 2, JOIN_RETRY_S[1])

    def members(self) -> list[Member]:
        return self.membership.members() if self.membership is not None else []

    async def stop(self) -> None:
        """Leave gracefully (peers see LEFT), then close the peer port."""
        if self._joiner is not None:
            self._joiner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._joiner
        if self.membership is not None:
            await self.membership.leave()
        if self._transport is not None:
            await self._transport.close()
        if self._server is not None:
            await self._server.stop(0)
