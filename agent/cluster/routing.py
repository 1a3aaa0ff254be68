"""Where a request for a model not loaded here goes: the cluster's view for the router.

What each node holds comes from gossip (``NodeStates``): key ``m/<model id>``
for each model loaded on a node, and key ``node`` for its summary
(``NodeSummary``: free bytes, runtime kinds up, free GPU bytes, requests in
flight, draining). Only members ``Membership`` holds ALIVE count: a SUSPECT
member may be dead, and routing around it for a second costs less than a
request that waits on it.

* **Copies**: the live holders other than this node, the one with the fewest
  requests in flight first. In flight = what this node has forwarded to it and
  not had answered, plus what it last gossiped (which lags by a round).
* **Placement** of a model loaded nowhere: the live, not-draining node with a
  runtime of the model's kind up and the most free room (for a GPU model: the
  most free GPU memory, and enough of it). Room promised to recent placements
  is subtracted until that node's next summary, so a burst of cold requests is
  spread instead of all landing on the node that looked emptiest. Ties go to
  this node (no hop). A model placed on a peer is placed there again for
  ``PLACEMENT_MEMORY_S`` (until gossip shows its copy), so the requests that
  follow the first one do not load it on every node.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agent.cluster.forward import Forwarder
from agent.cluster.membership import Membership, State
from agent.cluster.states import Change, NodeStates
from agent.registry.spec import ModelSpec

MODEL_KEY = "m/"
NODE_KEY = "node"
DEFAULT_PLACEMENT_BYTES = 1 << 20  # what a placement reserves for a model of unknown size
PLACEMENT_MEMORY_S = 10.0  # a model placed on a peer goes there again for this long
MAX_REMEMBERED_PLACEMENTS = 10_000


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """A node's gossiped summary (key ``node``)."""

    grpc: str = ""
    free_bytes: int = 0
    kinds: tuple[str, ...] = ()
    gpu_free_bytes: int = 0
    in_flight: int = 0
    draining: bool = False
    models: int = 0

    def to_value(self) -> dict[str, Any]:
        return {
            "grpc": self.grpc, "free": self.free_bytes, "kinds": list(self.kinds),
            "gpu": self.gpu_free_bytes, "inflight": self.in_flight,
            "draining": self.draining, "models": self.models,
        }

    @classmethod
    def from_value(cls, value: dict[str, Any] | None) -> NodeSummary | None:
        if value is None:
            return None
        try:
            return cls(
                str(value.get("grpc", "")), int(value.get("free", 0)),
                tuple(str(k) for k in value.get("kinds", ())), int(value.get("gpu", 0)),
                int(value.get("inflight", 0)), bool(value.get("draining", False)),
                int(value.get("models", 0)),
            )
        except (TypeError, ValueError):
            return None


class ClusterRouting:
    def __init__(
        self, states: NodeStates, membership: Membership, forwarder: Forwarder,
        max_hops: int,
    ) -> None:
        self.address = states.self_origin
        self._states = states
        self._membership = membership
        self._forwarder = forwarder
        self.max_hops = max_hops
        self.in_flight: Counter[str] = Counter()  # peer -> forwards awaiting an answer
        self._promised: Counter[str] = Counter()  # peer -> bytes placed since its summary
        self._placed: dict[str, tuple[str, float]] = {}  # model -> (peer, when)
        self.forwarded = 0
        self.retries = 0
        states.on_change(self._state_changed)

    def summary(self, address: str) -> NodeSummary | None:
        return NodeSummary.from_value(self._states.get(address, NODE_KEY))

    def copies(self, model_id: str, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Live peers holding ``model_id``, fewest requests in flight first."""
        peers = [
            p for p in self._states.holders(MODEL_KEY + model_id)
            if p != self.address and p not in exclude and self._alive(p)
        ]
        return sorted(peers, key=self._load)

    def holders(self, model_id: str) -> list[str]:
        """Every live node holding ``model_id``, this one included."""
        return [p for p in self._states.holders(MODEL_KEY + model_id) if self._alive(p)]

    def place(self, spec: ModelSpec, size: int,
              exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The peer to load ``spec`` on, or ``None`` for this node (or no better one)."""
        now = time.monotonic()
        earlier = self._placed.get(spec.model_id)
        if (earlier is not None and now - earlier[1] < PLACEMENT_MEMORY_S
                and earlier[0] not in exclude and self._alive(earlier[0])):
            return earlier[0]
        size = size or DEFAULT_PLACEMENT_BYTES
        best: tuple[int, int, str] | None = None
        for origin in self._states.origins():
            if origin in exclude or not (origin == self.address or self._alive(origin)):
                continue
            summary = self.summary(origin)
            if summary is None or summary.draining or spec.runtime not in summary.kinds:
                continue
            room = (summary.gpu_free_bytes if spec.gpu else summary.free_bytes)
            room -= self._promised[origin]
            if spec.gpu and room < size:
                continue
            score = (room, int(origin == self.address), origin)
            if best is None or score > best:
                best = score
        if best is None or best[2] == self.address:
            return None
        self._promised[best[2]] += size
        if len(self._placed) >= MAX_REMEMBERED_PLACEMENTS:
            self._placed = {m: p for m, p in self._placed.items()
                            if now - p[1] < PLACEMENT_MEMORY_S}
        self._placed[spec.model_id] = (best[2], now)
        return best[2]

    async def forward(
        self, address: str, model_id: str, request: bytes, hops: int, load_here: bool
    ) -> bytes:
        self.in_flight[address] += 1
        self.forwarded += 1
        try:
            return await self._forwarder.forward(address, model_id, request, hops, load_here)
        finally:
            self.in_flight[address] -= 1
            if not self.in_flight[address]:
                del self.in_flight[address]

    def _load(self, peer: str) -> int:
        summary = self.summary(peer)
        return self.in_flight[peer] + (summary.in_flight if summary else 0)

    def _alive(self, address: str) -> bool:
        member = self._membership.member(address)
        return member is not None and member.state is State.ALIVE

    def _state_changed(self, change: Change) -> None:
        if change.key == NODE_KEY:
            self._promised.pop(change.origin, None)
