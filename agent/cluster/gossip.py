"""Gossip of state: every node's inventory and the replicated registry.

Two kinds of state travel on the gossip channel (``agent.cluster.mux.GOSSIP``):

* **Node states** (``agent.cluster.states.NodeStates``): what each node holds
  and how much room it has, owned by that node. Every ``interval_s`` a node runs
  a push-pull with ``fanout`` random live members: it sends its digest (one
  ``[generation, version, floor]`` per origin), the peer answers with what the
  sender lacks and where its own digest differs from the sender's (so nodes
  that agree exchange one O(N) digest per round, not two), and the sender
  sends back what the peer lacks. Only versions and deltas travel; at most
  ``max_entries`` entries per message, the rest follow on the next round.
* **Registry entries** (``agent.cluster.replica.Replica``): last-writer-wins by
  hybrid clock. News (a local write, or a remote entry that changed this
  replica) becomes a *rumor*, pushed at once to ``rumor_fanout`` random members
  and riding every state exchange, ``rumor_transmits * ceil(log10(n + 1))``
  times each; a node passes on only entries that changed it, so the epidemic
  dies out once everyone has them. Propagation is then bounded by round trips,
  not by a timer: O(log N) hops. Lost rumors are repaired by anti-entropy every
  ``registry_sync_interval_s``: bucket digests with one random member, then the
  entries of the buckets that differ, both ways.

Only members that ``Membership`` holds ALIVE or SUSPECT are gossiped with, and
state about any other origin is dropped on arrival (a dead node's inventory
must not come back from a peer that has not yet heard of its death).

Messages are JSON sealed by the cluster ``Signer``; anything that fails to
open or decode is dropped and counted in ``dropped``, and never raises out of
the handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.cluster.auth import BadMessage, Signer
from agent.cluster.membership import Membership, State
from agent.cluster.periodic import every
from agent.cluster.replica import Entry, Replica
from agent.cluster.states import NodeStates
from agent.cluster.transport import PeerUnreachable, Transport

log = logging.getLogger(__name__)

RegistryApplier = Callable[[list[Entry]], Awaitable[None]]
"""Called with the registry entries that changed this replica, to make them real."""

NewsObserver = Callable[[str, list[Entry]], None]
"""``observer(sender, changed)``: registry entries from peer ``sender`` changed this replica."""


@dataclass(frozen=True, slots=True)
class GossipSettings:
    interval_s: float = 0.5
    """How often node states are push-pulled with ``fanout`` random members."""
    fanout: int = 2
    """Members per state round."""
    max_entries: int = 2000
    """Most node-state entries in one message."""
    rumor_fanout: int = 3
    """Members each batch of registry news is pushed to."""
    rumor_transmits: int = 3
    """Each registry rumor is sent ``rumor_transmits * ceil(log10(n + 1))`` times."""
    max_rumors: int = 512
    """Most registry entries in one message."""
    registry_sync_interval_s: float = 5.0
    """How often registry anti-entropy (bucket digests) runs with one random member."""
    request_timeout_s: float = 2.0
    """Timeout of one gossip request."""


class Gossip:
    """One node's gossip. ``start()``, then ``publish`` local registry writes; ``stop()``."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        membership: Membership,
        states: NodeStates,
        replica: Replica,
        apply_registry: RegistryApplier,
        settings: GossipSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.address = transport.address
        self.settings = settings or GossipSettings()
        self.states = states
        self.replica = replica
        self._transport = transport
        self._signer = signer
        self._membership = membership
        self._apply_registry = apply_registry
        self._rng = rng or random.Random()
        self._rumors: dict[str, int] = {}  # replica key -> transmissions left
        self._news = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self.dropped: Counter[str] = Counter()
        self.sent_bytes = 0
        self.exchanges = 0
        # Optional hook for measurement: the cluster simulation counts infection hops.
        self.on_news: NewsObserver | None = None
        membership.on_change(self._member_changed)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._transport.serve(self._handle)
        s = self.settings
        self._spawn(every(self._state_round, s.interval_s, self._rng, "gossip"))
        self._spawn(every(self._anti_entropy, s.registry_sync_interval_s, self._rng, "gossip"))
        self._spawn(self._rumor_loop())

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._transport.serve(None)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def publish(self, entries: Iterable[Entry]) -> None:
        """Spread registry entries written here (already in the replica)."""
        self._add_rumors(e.key for e in entries)

    async def sync_with(self, peer: str) -> bool:
        """One full round with ``peer`` now: node states and registry anti-entropy."""
        return await self._exchange_states(peer) and await self._registry_sync(peer)

    # -- loops ---------------------------------------------------------------------

    async def _state_round(self) -> None:
        peers = self._sample(self._live_others(), self.settings.fanout)
        await asyncio.gather(*(self._exchange_states(p) for p in peers))

    async def _anti_entropy(self) -> None:
        peers = self._live_others()
        if peers:
            await self._registry_sync(self._rng.choice(peers))

    async def _rumor_loop(self) -> None:
        """Push registry news as soon as there is some, until every rumor is spent."""
        while True:
            await self._news.wait()
            self._news.clear()
            while self._rumors:
                peers = self._sample(self._live_others(), self.settings.rumor_fanout)
                if not peers:
                    break
                rumors = self._take_rumors()
                await asyncio.gather(*(
                    self._request(p, {"t": "rumor", "r": rumors}) for p in peers
                ))

    # -- exchanges -----------------------------------------------------------------

    async def _exchange_states(self, peer: str) -> bool:
        sent = self.states.digest()
        reply = await self._request(peer, {"t": "pull", "d": sent, "r": self._take_rumors()})
        if reply is None or reply.get("t") != "push":
            return False
        try:
            await self._apply_delta(reply.get("s"))
            theirs = NodeStates.patch_digest(sent, reply.get("dd"))
            back = self.states.delta_for(theirs, self.settings.max_entries)
        except ValueError as e:
            self._drop("malformed", peer, str(e))
            return False
        if _has_entries(back):
            await self._request(peer, {"t": "delta", "s": back})
        self.exchanges += 1
        return True

    async def _registry_sync(self, peer: str) -> bool:
        reply = await self._request(peer, {"t": "ae", "g": self.replica.digest()})
        if reply is None or reply.get("t") != "ae-r":
            return False
        buckets = reply.get("b")
        try:
            mine = self.replica.entries_in(buckets if isinstance(buckets, list) else [])
        except ValueError as e:
            self._drop("malformed", peer, str(e))
            return False
        if mine:
            await self._request(peer, {"t": "entries", "r": [e.to_wire() for e in mine]})
        return True

    # -- serving -------------------------------------------------------------------

    async def _handle(self, sender: str, data: bytes) -> bytes | None:
        if not self._running:
            return None
        try:
            body = self._open(data, sender)
            if body["t"] in ("pull", "rumor", "entries"):
                await self._apply_rumors(body.get("r"), body["f"])
            return await self._answer(body)
        except BadMessage as e:
            self._drop(e.reason, sender, e.message)
        except ValueError as e:
            self._drop("malformed", sender, str(e))
        return None

    async def _answer(self, body: dict[str, Any]) -> bytes:
        kind = body["t"]
        if kind == "pull":
            theirs = body.get("d")
            delta = self.states.delta_for(theirs, self.settings.max_entries)
            return self._seal({
                "t": "push", "dd": self.states.digest_diff(theirs), "s": delta,
                "r": self._take_rumors(),
            })
        if kind == "delta":
            await self._apply_delta(body.get("s"))
        elif kind == "ae":
            buckets = self.replica.diff(body.get("g"))
            entries = self.replica.entries_in(buckets)
            return self._seal({
                "t": "ae-r", "b": buckets, "r": [e.to_wire() for e in entries],
            })
        return self._seal({"t": "ok"})

    # -- state ---------------------------------------------------------------------

    async def _apply_delta(self, delta: Any) -> None:
        """Apply a node-state delta, keeping only origins that are live members."""
        if not isinstance(delta, dict) or not isinstance(delta.get("o", {}), dict):
            raise ValueError("a state delta must be an object with an object 'o'")
        origins = delta.get("o", {})
        kept = {o: v for o, v in origins.items() if self._is_live(o)}
        if kept:
            self.states.apply({**delta, "o": kept})

    async def _apply_rumors(self, raw: Any, sender: str) -> None:
        if raw is None:
            return
        if not isinstance(raw, list):
            raise ValueError("registry entries must be a list")
        entries = [Entry.from_wire(e) for e in raw]
        changed = self.replica.apply(entries)
        if changed:
            self._add_rumors(e.key for e in changed)
            if self.on_news is not None:
                self.on_news(sender, changed)
            await self._apply_registry(changed)

    def _add_rumors(self, keys: Iterable[str]) -> None:
        live = sum(1 for m in self._membership.members() if m.state <= State.SUSPECT)
        transmits = self.settings.rumor_transmits * max(1, math.ceil(math.log10(live + 1)))
        for key in keys:
            self._rumors[key] = transmits
        if self._rumors:
            self._news.set()

    def _take_rumors(self) -> list[dict[str, Any]]:
        """Up to ``max_rumors`` pending entries (freshest first), each counted as sent."""
        if not self._rumors:
            return []
        chosen = sorted(self._rumors.items(), key=lambda kv: -kv[1])[: self.settings.max_rumors]
        out = []
        for key, left in chosen:
            if left <= 1:
                del self._rumors[key]
            else:
                self._rumors[key] = left - 1
            entry = self.replica.entry(key)
            if entry is not None:
                out.append(entry.to_wire())
        return out

    def _member_changed(self, member: Any, previous: Any) -> None:
        if member.address == self.address:
            return
        if member.state >= State.DEAD:
            self.states.forget(member.address)
        elif previous is not None and previous.state >= State.DEAD:
            self.states.remember(member.address)  # back from a false death

    # -- wire ----------------------------------------------------------------------

    async def _request(self, peer: str, body: dict[str, Any]) -> dict[str, Any] | None:
        payload = self._seal(body)
        try:
            data = await self._transport.request(peer, payload, self.settings.request_timeout_s)
        except PeerUnreachable:
            return None
        try:
            reply = self._open(data, peer)
            if reply["t"] in ("push", "ae-r"):
                await self._apply_rumors(reply.get("r"), peer)
        except BadMessage as e:
            self._drop(e.reason, peer, e.message)
            return None
        except ValueError as e:
            self._drop("malformed", peer, str(e))
            return None
        return reply

    def _seal(self, body: dict[str, Any]) -> bytes:
        body["f"] = self.address
        data = self._signer.seal(json.dumps(body, separators=(",", ":")).encode())
        self.sent_bytes += len(data)
        return data

    def _open(self, data: bytes, sender: str) -> dict[str, Any]:
        try:
            body = json.loads(self._signer.open(data))
        except (ValueError, RecursionError) as e:
            raise BadMessage("malformed", f"not JSON: {e}") from None
        if not isinstance(body, dict) or not isinstance(body.get("t"), str):
            raise BadMessage("malformed", "not a gossip message")
        claimed = body.get("f")
        if not isinstance(claimed, str) or not _same_peer(claimed, sender):
            raise BadMessage("spoofed_sender", f"claims {claimed!r}")
        if not self._is_live(claimed):
            raise BadMessage("not_member", f"{claimed} is not a live member")
        return body

    def _drop(self, reason: str, sender: str, message: str) -> None:
        if reason in ("malformed", "spoofed_sender", "not_member"):
            self.dropped[reason] += 1
        log.debug("gossip: dropped a message from %s: %s (%s)", sender, reason, message)

    # -- helpers -------------------------------------------------------------------

    def _is_live(self, address: str) -> bool:
        member = self._membership.member(address)
        return member is not None and member.state <= State.SUSPECT

    def _live_others(self) -> list[str]:
        return sorted(
            m.address for m in self._membership.members()
            if m.address != self.address and m.state <= State.SUSPECT
        )

    def _sample(self, items: list[str], k: int) -> list[str]:
        return self._rng.sample(items, min(k, len(items)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _same_peer(claimed: str, observed: str) -> bool:
    return observed == claimed or observed == claimed.rsplit(":", 1)[0]


def _has_entries(delta: dict[str, Any]) -> bool:
    return any(v.get("e") or v.get("r") for v in delta.get("o", {}).values())
