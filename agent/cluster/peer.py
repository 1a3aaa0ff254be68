"""This agent's place in the cluster: the peer port and everything carried on it.

``ClusterNode`` opens the peer port (``peer_port``, framed TCP:
``agent.cluster.stream_transport``) and, multiplexed on
it (``agent.cluster.mux``): membership (``agent.cluster.membership``), gossip
of node states and the registry (``agent.cluster.gossip``) and forwarded
inference (``agent.cluster.forward``), every message sealed with the cluster
keys. It keeps trying the seeds (static ``--peers`` and the A records of
``--peers-dns``, resolved again on every round) until one answers, so a node
started before its seeds is not left alone.

What it publishes about this node: one ``m/<model id>`` key per loaded model
(from the inventory's changes, so a round costs O(changes)) and a ``node``
summary every ``gossip.interval_s``. What it gives the router: ``routing``.

Stop (``leave``): tell peers LEFT (they drop its copies from routing at
once), keep answering forwarded requests already under way for up to
``grace_s``, then close the peer port.

Without cluster keys there is no peer port: a node with no shared secret
cannot prove who it is, so it runs alone (and says so in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from agent.cluster.auth import Signer
from agent.cluster.copies import CopyKeeper, CopySettings
from agent.cluster.forward import Forwarder
from agent.cluster.gossip import Gossip, GossipSettings
from agent.cluster.hlc import HybridClock
from agent.cluster.membership import Member, Membership, MembershipSettings
from agent.cluster.mux import FORWARD, GOSSIP, MEMBERSHIP, Mux
from agent.cluster.registry_sync import ModelApplier, RegistrySync
from agent.cluster.replica import Replica
from agent.cluster.routing import MODEL_KEY, NODE_KEY, ClusterRouting, NodeSummary
from agent.cluster.seeds import resolve_seeds
from agent.cluster.states import NodeStates
from agent.cluster.stream_transport import StreamTransport
from agent.cluster.tls import PeerTls
from agent.inventory import Inventory, LoadedModel
from agent.metrics import ClusterFigures
from agent.registry.store import ModelRegistry

log = logging.getLogger(__name__)

JOIN_RETRY_S = (0.2, 5.0)  # first and longest wait between rounds of join attempts
FORWARD_HEADROOM = 64 << 10  # a forwarded request's seal and header, beyond the request


@dataclass(frozen=True)
class ClusterConfig:
    host: str
    port: int
    advertise_host: str
    keys: Sequence[bytes]
    grpc_address: str
    seeds: Sequence[str] = ()
    seeds_dns: str = ""
    seeds_dns_port: int = 8034
    tls: PeerTls | None = None
    membership: MembershipSettings = field(default_factory=MembershipSettings)
    gossip: GossipSettings = field(default_factory=GossipSettings)
    max_message_bytes: int = 4 << 20
    max_request_bytes: int = 64 << 20
    forward_timeout_s: float = 120.0
    max_hops: int = 2
    grace_s: float = 5.0
    copies: CopySettings = field(default_factory=CopySettings)
    drain_timeout_s: float = 20.0
    rejoin_interval_s: float = 30.0


@dataclass(frozen=True)
class LocalNode:
    """The parts of this agent the cluster reads and drives."""

    registry: ModelRegistry
    apply_model: ModelApplier
    inventory: Inventory
    summary: Callable[[], NodeSummary]
    serve_forwarded: Callable[[bytes, str, int, bool], Awaitable[bytes]]
    load_in_background: Callable[[str], None]
    unload: Callable[[str], Awaitable[object]]


class ClusterNode:
    def __init__(self, config: ClusterConfig, local: LocalNode) -> None:
        self.config = config
        self._local = local
        self._transport: StreamTransport | None = None
        self.membership: Membership | None = None
        self.gossip: Gossip | None = None
        self.states: NodeStates | None = None
        self.routing: ClusterRouting | None = None
        self.forwarder: Forwarder | None = None
        self.registry_sync: RegistrySync | None = None
        self.copies: CopyKeeper | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.config.advertise_host}:{self.port}"

    async def start(self) -> None:
        c = self.config
        largest = max(c.max_message_bytes, c.max_request_bytes + FORWARD_HEADROOM)
        transport = StreamTransport(c.advertise_host, largest, tls=c.tls)
        self.port = await transport.listen(c.host, c.port)
        self._transport = transport
        mux = Mux(transport)
        signer = Signer(c.keys, max_bytes=c.max_message_bytes)
        self.membership = Membership(
            mux.channel(MEMBERSHIP), signer, c.membership, meta={"grpc": c.grpc_address},
        )
        clock = HybridClock(self.address)
        self.registry_sync = RegistrySync(self._local.registry, Replica(clock),
                                          self._local.apply_model)
        stamped = await asyncio.to_thread(self.registry_sync.load)
        self.states = NodeStates(self.address, generation=time.time_ns() // 1_000_000)
        self.gossip = Gossip(
            mux.channel(GOSSIP), signer, self.membership, self.states,
            self.registry_sync.replica, self.registry_sync.apply, c.gossip,
        )
        self.registry_sync.publish = self.gossip.publish
        self.forwarder = Forwarder(
            mux.channel(FORWARD), Signer(c.keys, max_bytes=largest),
            c.forward_timeout_s, c.max_hops,
        )
        self.routing = ClusterRouting(self.states, self.membership, self.forwarder, c.max_hops)
        self.forwarder.serve(self._local.serve_forwarded, self._local.load_in_background)
        self.copies = CopyKeeper(
            self.routing, self._local.inventory, self._local.registry,
            self.forwarder.request_load, self._local.unload, c.copies,
        )
        inventory = self._local.inventory
        for model_id in inventory.ids():
            self._inventory_changed(model_id, inventory.get(model_id))
        inventory.on_change(self._inventory_changed)
        self._publish_summary()
        self.membership.start()
        self.gossip.start()
        self.gossip.publish(stamped)
        self.copies.start()
        self._tasks.append(asyncio.create_task(self._summaries(), name="cluster-summary"))
        self._tasks.append(asyncio.create_task(self._join(), name="cluster-join"))
        log.info("cluster: peer port %s%s, seeds: %s", self.address,
                 " (TLS)" if c.tls else "", ", ".join(c.seeds) or c.seeds_dns or "none")

    # -- this node's state ---------------------------------------------------------

    def _inventory_changed(self, model_id: str, model: LoadedModel | None) -> None:
        assert self.states is not None
        if model is None:
            self.states.delete(MODEL_KEY + model_id)
        else:
            value: dict[str, int] = {"s": model.size_bytes}
            if model.gpu is not None:
                value["g"] = model.gpu
            self.states.set(MODEL_KEY + model_id, value)

    def _publish_summary(self) -> None:
        assert self.states is not None
        self.states.set(NODE_KEY, self._local.summary().to_value())

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.config.gossip.interval_s)  # publish period
            try:
                self._publish_summary()
            except Exception:
                log.exception("cluster: could not publish this node's summary")

    # -- joining -------------------------------------------------------------------

    async def _join(self) -> None:
        """Join through the seeds, retrying with backoff until one answers; then,
        every ``rejoin_interval_s``, sync with any seed not a live member, so a
        partition outlasting ``dead_member_gc_s`` (both sides forgot the other)
        still heals."""
        c = self.config
        delay = JOIN_RETRY_S[0]
        joined = False
        while self.membership is not None:
            seeds = await resolve_seeds(c.seeds, c.seeds_dns, c.seeds_dns_port)
            seeds = [s for s in seeds if s != self.address]
            if joined:
                live = {m.address for m in self.members() if m.state.name == "ALIVE"}
                seeds = [s for s in seeds if s not in live]
            if not seeds and not joined:
                return
            answered = await self.membership.join(seeds) if seeds else 0
            if answered and not joined:
                joined = True
                log.info("cluster: joined through %d of %d seeds", answered, len(seeds))
                if self.gossip is not None:
                    for seed in seeds:
                        if await self.gossip.sync_with(seed):
                            break
            if joined:
                await asyncio.sleep(c.rejoin_interval_s)  # the rejoin period
                continue
            log.info("cluster: no seed answered (%s); trying again in %.1f s",
                     ", ".join(seeds), delay)
            await asyncio.sleep(delay)  # retry backoff, not a wait for a condition
            delay = min(delay * 2, JOIN_RETRY_S[1])

    # -- views ---------------------------------------------------------------------

    def members(self) -> list[Member]:
        return self.membership.members() if self.membership is not None else []

    def figures(self) -> ClusterFigures:
        """What the cluster counts, for /metrics."""
        states: dict[str, int] = {}
        for member in self.members():
            states[member.state.name] = states.get(member.state.name, 0) + 1
        routing, copies, gossip = self.routing, self.copies, self.gossip
        return ClusterFigures(
            members=states, dropped=self.drop_counts(),
            forwarded=routing.forwarded if routing else 0,
            forward_retries=routing.retries if routing else 0,
            copies_asked=copies.copies_asked if copies else 0,
            copies_dropped=copies.copies_dropped if copies else 0,
            gossip_bytes_sent=gossip.sent_bytes if gossip else 0,
        )

    def drop_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in (self.membership, self.gossip, self.forwarder, self._transport):
            if part is None:
                continue
            dropped = part.drop_counts() if isinstance(part, Membership) else part.dropped
            for reason, n in dropped.items():
                counts[reason] = counts.get(reason, 0) + n
        return counts

    # -- stopping ------------------------------------------------------------------

    async def drain(self) -> None:
        """Before leaving: say so (no new loads are placed here), and hand this
        node's recently used models to peers (``CopyKeeper.drain``)."""
        self._publish_summary()  # the summary says draining now
        if self.copies is not None:
            await self.copies.stop()
            if self.members() and self.config.drain_timeout_s:
                await self.copies.drain(self.config.drain_timeout_s)

    async def leave(self) -> None:
        """Announce LEFT; peers stop routing here. Forwarded requests still arrive
        until they hear it, and are answered."""
        if self.copies is not None:
            await self.copies.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.membership is not None:
            await self.membership.leave()

    async def stop(self) -> None:
        """Leave (if not yet), stop gossip, finish forwarded requests (``grace_s``),
        close the peer port."""
        await self.leave()
        if self.gossip is not None:
            await self.gossip.stop()
        if self._transport is not None:
            await self._transport.close(self.config.grace_s)
        if self.forwarder is not None:
            self.forwarder.serve(None)
