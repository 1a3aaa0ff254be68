"""Who is in the cluster: SWIM-style failure detection with gossiped membership.

Each node, every ``probe_interval_s``, pings the next member of its own shuffled
round of members. No ack within ``probe_timeout_s``: it asks ``indirect_probes``
others to ping the target for it (``ping-req``) and waits ``indirect_timeout_s``. No
ack at all: the target becomes SUSPECT. Every node that holds a member as SUSPECT
runs its own ``suspicion_timeout_s`` timer and, unless the suspicion is refuted,
declares it DEAD when it expires. A live node that hears a suspicion (or death) of
itself refutes it by raising its incarnation and gossiping ALIVE; a node leaving
gracefully raises its incarnation and gossips LEFT before it stops.

Rules for an update ``(address, incarnation, state)`` (one function: ``_apply``):

- a higher incarnation wins; at equal incarnation the higher state wins, in the order
  ALIVE < SUSPECT < DEAD < LEFT, so SUSPECT overrides ALIVE, and DEAD is final for
  that incarnation (only the member itself, by raising it, comes back);
- news about oneself that is not older than one's own entry is refuted with
  ``incarnation + 1`` (unless leaving);
- in a full-state ``sync`` a DEAD entry is taken as SUSPECT (memberlist's
  ``mergeState``), so one node's stale verdict after a partition gives the accused a
  suspicion timeout to refute instead of killing it outright;
- in a ``sync``, a DEAD or LEFT entry for an address this node does not know at all
  is ignored, so a member forgotten here (below) is not brought back by a peer that
  has not forgotten it yet.

Forgetting: a DEAD or LEFT member is dropped from the table ``dead_member_gc_s``
after this node adopted that state, and the ``on_forget`` listeners are told. That
is safe: a node that comes back rejoins as ALIVE, which a node that knows nothing
of it accepts, and one that still holds it DEAD is refuted with a higher
incarnation. The cost: two sides of a partition longer than ``dead_member_gc_s``
forget each other, and only a new join (through the seeds) reunites them.

Dissemination: every message (requests and replies) piggybacks up to
``max_piggyback`` recent updates, each sent ``retransmit_mult * ceil(log10(n + 1))``
times; a gossip loop also pushes pending updates to ``gossip_fanout`` random members
every ``gossip_interval_s`` (and to a member just suspected, so it can refute at
once). Joining and anti-entropy are a push-pull of the full table (``sync``) with a
seed, with a random member every ``sync_interval_s``, and with a random DEAD member
every ``reconnect_interval_s``: that last one is what heals a partition, since dead
members are never probed.

Messages are compact JSON sealed by ``agent.cluster.auth.Signer``. A message that
fails authentication or decoding, or whose claimed sender is not the transport's
sender (a member claiming another's address), is dropped and counted in
``drop_counts()``; nothing a peer sends can raise out of the handler.

Not here yet: Lifeguard's confirmation-scaled suspicion,
size-capping a full-state sync (a table over ``max_message_bytes`` is refused by
the receiver).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

from agent.cluster.auth import BadMessage, Signer
from agent.cluster.periodic import every
from agent.cluster.transport import PeerUnreachable, Transport

log = logging.getLogger(__name__)

MAX_ADDRESS_CHARS = 256
MAX_INCARNATION = (1 << 63) - 1


class State(enum.IntEnum):
    """A member's state; the order is the precedence at equal incarnation."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Member:
    """One node as this node currently believes it to be.

    ``since`` is the local loop time when this node adopted the entry (not sent)."""

    address: str
    incarnation: int
    state: State
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)
    since: float = field(default=0.0, compare=False)


Listener = Callable[[Member, Member | None], None]
"""``listener(member, previous)``: called on every change of a member's entry."""

ForgetListener = Callable[[str], None]
"""``listener(address)``: called when a DEAD or LEFT member is dropped from the table."""


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    """Every interval and timeout of the protocol (memberlist's ``DefaultLANConfig`` style).

    The defaults declare a killed node DEAD on every member within 3 s in a cluster of
    up to 100 on a LAN (round trips of a few milliseconds):

    - first probe: each node probes one member per ``probe_interval_s`` (0.2 s), so a
      given member goes unprobed for a whole interval with chance about 1/e; it is
      probed within 1.0 s except with chance e^-5 (0.7 %), within 1.4 s but for e^-7;
    - failed probe: ``probe_timeout_s`` + ``indirect_timeout_s`` = 0.3 s;
    - suspicion: ``suspicion_timeout_s`` = 1.0 s on each node from when it hears;
    - spread: the suspicion is pushed to ``gossip_fanout`` = 3 members every
      ``gossip_interval_s`` = 0.1 s and rides every probe, so it reaches 100 nodes in
      about log4(100) = 3.3 rounds, about 0.4 s;

    typically 0.3 + 0.3 + 1.0 + 0.4 = 2.0 s, and 1.4 + 0.3 + 1.0 + 0.4 = 3.1 s in the
    worst 0.1 %. The simulation in the tests measures it. A live node falsely suspected
    hears it directly at once and its refutation spreads in about 0.4 s, well inside
    the 1.0 s suspicion timeout. Cost at 100 nodes: 5 probes per node per second plus
    up to 30 gossip messages per second while there is news.
    """

    probe_interval_s: float = 0.2
    """How often a node probes one member."""
    probe_timeout_s: float = 0.1
    """How long a direct ping waits for its ack (also the wait of a ping on another's behalf)."""
    indirect_probes: int = 3
    """How many members are asked to ping a target that missed its direct ack."""
    indirect_timeout_s: float = 0.2
    """How long the prober waits for any indirect ack."""
    suspicion_timeout_s: float = 1.0
    """How long a member stays SUSPECT, on each node that holds it so, before DEAD."""
    gossip_interval_s: float = 0.1
    """How often pending updates are pushed to random members."""
    gossip_fanout: int = 3
    """How many random members each gossip round (and a leave) pushes to."""
    retransmit_mult: int = 4
    """Each update is sent ``retransmit_mult * ceil(log10(n + 1))`` times."""
    max_piggyback: int = 32
    """Most updates carried by one message."""
    request_timeout_s: float = 0.5
    """Timeout of gossip and sync requests."""
    sync_interval_s: float = 10.0
    """How often a full-table push-pull runs with one random live member."""
    reconnect_interval_s: float = 1.0
    """How often a full-table push-pull is tried with one random DEAD member."""
    leave_timeout_s: float = 1.0
    """How long ``leave`` waits for its announcement to be acknowledged."""
    dead_member_gc_s: float = 600.0
    """How long a DEAD or LEFT member stays in the table, unchanged, before this node
    forgets it (a timer per member, like suspicion's). Long enough that its death has
    reached everyone: else a node still holding it SUSPECT could spread it back.
    Also how long a partition may last and still heal by itself (see above).
    Forgetting is safe: a returning node rejoins with a higher incarnation anyway."""


@dataclass(frozen=True, slots=True)
class _Message:
    kind: str
    sender: str
    target: str | None
    updates: list[Member]


_KINDS = frozenset({"ping", "ping-req", "ack", "nack", "gossip", "sync"})


class Membership:
    """One node's view of the cluster, kept current by the protocol above.

    Lifecycle: ``start()`` (serve and run the loops), ``await join(seeds)``, then
    ``await leave()`` (graceful) or ``await stop()`` (silent; safe twice). ``rng`` makes
    every random choice, so simulations are reproducible."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        settings: MembershipSettings | None = None,
        rng: random.Random | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        self.address = transport.address
        self.settings = settings or MembershipSettings()
        self._transport = transport
        self._signer = signer
        self._rng = rng or random.Random()
        self._members: dict[str, Member] = {
            self.address: Member(self.address, 0, State.ALIVE, dict(meta or {}))
        }
        self._pending: dict[str, int] = {}  # address -> transmissions left of its entry
        self._urgent: set[str] = set()  # members to push to next gossip round
        self._timers: dict[str, asyncio.TimerHandle] = {}  # suspicion or forget, by member
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[Listener] = []
        self._forget_listeners: list[ForgetListener] = []
        self._probe_round: list[str] = []
        self._running = False
        self.dropped: Counter[str] = Counter()
        self.refutations = 0

    # -- public view ---------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member known, this node included, sorted by address."""
        return [self._members[a] for a in sorted(self._members)]

    def member(self, address: str) -> Member | None:
        return self._members.get(address)

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_forget(self, listener: ForgetListener) -> None:
        """Call ``listener(address)`` when a DEAD or LEFT member is forgotten."""
        self._forget_listeners.append(listener)

    def drop_counts(self) -> Counter[str]:
        """Dropped incoming messages by reason (the signer's and this module's)."""
        return self._signer.dropped + self.dropped

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Serve peer requests and start probing, gossiping and syncing."""
        if self._running:
            return
        self._running = True
        self._transport.serve(self._handle)
        s = self.settings
        self._spawn(every(self._probe_once, s.probe_interval_s, self._rng, "membership"))
        self._spawn(every(self._gossip_once, s.gossip_interval_s, self._rng, "membership"))
        self._spawn(every(self._sync_once, s.sync_interval_s, self._rng, "membership"))
        self._spawn(every(self._reconnect_once, s.reconnect_interval_s, self._rng, "membership"))

    async def join(self, seeds: Iterable[str]) -> int:
        """Push-pull the full table with each seed; returns how many answered."""
        answered = 0
        for seed in seeds:
            if seed != self.address and await self._sync(seed):
                answered += 1
        return answered

    async def leave(self) -> None:
        """Announce LEFT to ``gossip_fanout`` members (bounded by ``leave_timeout_s``), stop."""
        if self._running:
            me = self._members[self.address]
            self._set(replace(me, incarnation=me.incarnation + 1, state=State.LEFT))
            left = self._members[self.address]
            peers = self._sample(self._live_others(), self.settings.gossip_fanout)
            timeout = self.settings.leave_timeout_s
            await asyncio.gather(
                *(self._request(p, "gossip", timeout, extra=[left]) for p in peers)
            )
        await self.stop()

    async def stop(self) -> None:
        """Stop serving and cancel every loop and timer; safe to call twice."""
        if not self._running:
            return
        self._running = False
        self._transport.serve(None)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the loops -----------------------------------------------------------------

    async def _probe_once(self) -> None:
        target = self._next_probe_target()
        if target is None:
            return
        s = self.settings
        if await self._ping(target, s.probe_timeout_s):
            return
        helpers = self._sample(
            [a for a in self._live_others() if a != target and
             self._members[a].state is State.ALIVE], s.indirect_probes)
        if helpers and await self._any_true(
            [self._ping_req(h, target, s.indirect_timeout_s) for h in helpers]
        ):
            return
        current = self._members.get(target)
        if current is not None and current.state is State.ALIVE:
            self._apply(replace(current, state=State.SUSPECT))
            self._urgent.add(target)  # tell it at once, so it can refute

    async def _gossip_once(self) -> None:
        if not self._pending:
            return
        targets = [a for a in self._urgent if self._is_live(a)]
        self._urgent.clear()
        others = [a for a in self._live_others() if a not in targets]
        targets += self._sample(others, self.settings.gossip_fanout)
        for target in targets:
            self._spawn(self._request(
                target, "gossip", self.settings.request_timeout_s,
                extra=[self._members[target]],
            ))

    async def _sync_once(self) -> None:
        peers = self._live_others()
        if peers:
            await self._sync(self._rng.choice(peers))

    async def _reconnect_once(self) -> None:
        dead = sorted(a for a, m in self._members.items() if m.state is State.DEAD)
        if dead:
            await self._sync(self._rng.choice(dead))

    # -- requests ------------------------------------------------------------------

    async def _ping(self, target: str, timeout_s: float) -> bool:
        reply = await self._request(target, "ping", timeout_s, target=target)
        return reply is not None and reply.kind == "ack"

    async def _ping_req(self, helper: str, target: str, timeout_s: float) -> bool:
        reply = await self._request(helper, "ping-req", timeout_s, target=target)
        return reply is not None and reply.kind == "ack"

    async def _sync(self, peer: str) -> bool:
        reply = await self._request(peer, "sync", self.settings.request_timeout_s)
        return reply is not None

    async def _request(
        self,
        address: str,
        kind: str,
        timeout_s: float,
        target: str | None = None,
        extra: list[Member] | None = None,
    ) -> _Message | None:
        """Send one message and merge the reply's updates; ``None`` if none came back."""
        payload = self._seal(kind, target, extra)
        try:
            data = await self._transport.request(address, payload, timeout_s)
        except PeerUnreachable:
            return None
        try:
            reply = self._open(data, address)
        except BadMessage as e:
            self._count_drop(e, address)
            return None
        self._merge(reply)
        return reply

    async def _handle(self, sender: str, data: bytes) -> bytes | None:
        """Serve one peer request; returns the sealed reply, or ``None`` to drop it."""
        if not self._running:
            return None
        try:
            message = self._open(data, sender)
            if message.kind in ("ping", "ping-req") and not message.target:
                raise BadMessage("malformed", f"{message.kind} without a target")
            if message.kind == "ping" and message.target != self.address:
                raise BadMessage("misdirected", f"ping for {message.target}")
        except BadMessage as e:
            self._count_drop(e, sender)
            return None
        self._merge(message)
        if message.kind == "ping-req" and message.target is not None:
            ok = await self._ping(message.target, self.settings.probe_timeout_s)
            return self._seal("ack" if ok else "nack")
        if message.kind == "sync":
            return self._seal("sync")
        return self._seal("ack")

    # -- encoding ------------------------------------------------------------------

    def _seal(self, kind: str, target: str | None = None,
              extra: list[Member] | None = None) -> bytes:
        if kind == "sync":
            updates = list(self._members.values())
        else:
            updates = list(extra or [])
            seen = {m.address for m in updates}
            updates += [m for m in self._piggyback() if m.address not in seen]
        body: dict[str, Any] = {
            "t": kind,
            "f": self.address,
            "u": [[m.address, m.incarnation, int(m.state), dict(m.meta)] for m in updates],
        }
        if target is not None:
            body["to"] = target
        return self._signer.seal(json.dumps(body, separators=(",", ":")).encode())

    def _open(self, data: bytes, sender: str) -> _Message:
        """Authenticate and decode; raises ``BadMessage`` for anything amiss."""
        message = _decode(self._signer.open(data))
        if not _same_peer(message.sender, sender):
            raise BadMessage("spoofed_sender", f"claims {message.sender}")
        return message

    def _count_drop(self, error: BadMessage, sender: str) -> None:
        # The signer counts its own reasons; count the rest here.
        if error.reason in ("malformed", "spoofed_sender", "misdirected"):
            self.dropped[error.reason] += 1
        log.debug("dropped a message from %s: %s (%s)", sender, error.reason, error.message)

    def _piggyback(self) -> list[Member]:
        """The freshest pending updates, each counted as sent once more."""
        chosen = sorted(self._pending.items(), key=lambda item: -item[1])
        chosen = chosen[: self.settings.max_piggyback]
        for address, left in chosen:
            if left <= 1:
                del self._pending[address]
            else:
                self._pending[address] = left - 1
        return [self._members[address] for address, _ in chosen]

    # -- state ---------------------------------------------------------------------

    def _merge(self, message: _Message) -> None:
        for update in message.updates:
            if message.kind == "sync" and update.state >= State.DEAD:
                if update.address not in self._members:
                    continue  # forgotten here (or never known): do not bring it back
                if update.state is State.DEAD:
                    update = replace(update, state=State.SUSPECT)
            self._apply(update)

    def _apply(self, update: Member) -> bool:
        """Adopt ``update`` if it supersedes what this node holds; True if it did."""
        if update.address == self.address:
            me = self._members[self.address]
            if me.state is State.LEFT or update.incarnation < me.incarnation:
                return False
            if update.state is State.ALIVE and update.incarnation == me.incarnation:
                return False
            self.refutations += 1
            self._set(replace(me, incarnation=update.incarnation + 1, state=State.ALIVE))
            return True
        current = self._members.get(update.address)
        if current is not None and (update.incarnation, update.state) <= (
            current.incarnation, current.state
        ):
            return False
        self._set(update)
        return True

    def _set(self, member: Member) -> None:
        loop = asyncio.get_running_loop()
        member = replace(member, since=loop.time())
        previous = self._members.get(member.address)
        self._members[member.address] = member
        timer = self._timers.pop(member.address, None)
        if timer is not None:
            timer.cancel()
        if member.state is State.SUSPECT and self._running:
            self._timers[member.address] = loop.call_later(
                self.settings.suspicion_timeout_s, self._suspicion_expired,
                member.address, member.incarnation,
            )
        elif member.state >= State.DEAD and self._running and member.address != self.address:
            # Any later change of the entry cancels this timer (above), so when it
            # fires the member has been DEAD or LEFT, unchanged, for the whole period.
            self._timers[member.address] = loop.call_later(
                self.settings.dead_member_gc_s, self._forget, member.address,
            )
        live = sum(1 for m in self._members.values() if m.state <= State.SUSPECT)
        self._pending[member.address] = self.settings.retransmit_mult * math.ceil(
            math.log10(live + 1)
        )
        for listener in self._listeners:
            try:
                listener(member, previous)
            except Exception:
                log.exception("membership listener failed")

    def _forget(self, address: str) -> None:
        """Drop a DEAD or LEFT member (its forget timer fired) and tell the listeners."""
        self._timers.pop(address, None)
        if self._members.pop(address, None) is None:
            return
        self._pending.pop(address, None)
        self._urgent.discard(address)
        log.debug("forgot %s", address)
        for listener in self._forget_listeners:
            try:
                listener(address)
            except Exception:
                log.exception("membership forget listener failed")

    def _suspicion_expired(self, address: str, incarnation: int) -> None:
        self._timers.pop(address, None)
        current = self._members.get(address)
        if (current is not None and current.state is State.SUSPECT
                and current.incarnation == incarnation):
            self._set(replace(current, state=State.DEAD))

    # -- helpers -------------------------------------------------------------------

    def _is_live(self, address: str) -> bool:
        member = self._members.get(address)
        return member is not None and member.state <= State.SUSPECT

    def _live_others(self) -> list[str]:
        """ALIVE and SUSPECT members but this node, sorted (for reproducible sampling)."""
        return sorted(a for a in self._members if a != self.address and self._is_live(a))

    def _sample(self, items: list[str], k: int) -> list[str]:
        return self._rng.sample(items, min(k, len(items)))

    def _next_probe_target(self) -> str | None:
        """The next member of this node's shuffled round (memberlist's probe order)."""
        while self._probe_round:
            address = self._probe_round.pop()
            if self._is_live(address):
                return address
        self._probe_round = self._live_others()
        self._rng.shuffle(self._probe_round)
        return self._probe_round.pop() if self._probe_round else None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _any_true(coros: list[Any]) -> bool:
        """Whether any of ``coros`` returns True; the rest are cancelled once one does."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            for next_done in asyncio.as_completed(tasks):
                if await next_done:
                    return True
            return False
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)


def _same_peer(claimed: str, observed: str) -> bool:
    """Whether a message claiming ``claimed`` may come from transport sender ``observed``.

    A transport that knows only the remote host passes the bare host (see transport)."""
    return observed == claimed or observed == claimed.rsplit(":", 1)[0]


def _decode(payload: bytes) -> _Message:
    """Parse and validate a message body strictly; raises ``BadMessage("malformed")``."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise BadMessage("malformed", f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadMessage("malformed", "not an object")
    kind, sender, target = body.get("t"), body.get("f"), body.get("to")
    raw_updates = body.get("u", [])
    if kind not in _KINDS or not _is_address(sender):
        raise BadMessage("malformed", "bad kind or sender")
    if target is not None and not _is_address(target):
        raise BadMessage("malformed", "bad target")
    if not isinstance(raw_updates, list):
        raise BadMessage("malformed", "updates are not a list")
    return _Message(kind, sender, target, [_decode_update(u) for u in raw_updates])


def _decode_update(raw: Any) -> Member:
    if not (isinstance(raw, list) and len(raw) == 4):
        raise BadMessage("malformed", "an update is not [address, incarnation, state, meta]")
    address, incarnation, state, meta = raw
    if not _is_address(address):
        raise BadMessage("malformed", "bad address in an update")
    if type(incarnation) is not int or not 0 <= incarnation <= MAX_INCARNATION:
        raise BadMessage("malformed", "bad incarnation")
    if type(state) is not int or state not in State._value2member_map_:
        raise BadMessage("malformed", "bad state")
    if not (isinstance(meta, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise BadMessage("malformed", "meta is not a map of strings")
    return Member(address, incarnation, State(state), meta)


def _is_address(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_ADDRESS_CHARS
