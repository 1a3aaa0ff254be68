"""How peer messages travel: the ``Transport`` seam, and an in-memory network to test over.

Decisions:

- **Request/response, not datagrams.** SWIM is usually drawn over UDP, but the peer
  port is request/response (``agent.cluster.stream_transport``: framed TCP, one
  connection per peer carrying many requests at once). So a ping's ack is the reply
  to the ping, and a lost message in either direction looks the same to the sender:
  ``request`` raises ``PeerUnreachable`` once ``timeout_s`` passes.
- **Opaque bytes.** The transport neither signs nor parses; ``agent.cluster.auth``
  seals payloads and ``agent.cluster.membership`` encodes them. The TCP transport
  then carries ``bytes`` each way.
- **The handler sees who sent.** ``serve`` registers ``handler(sender, payload)``;
  ``sender`` is what the transport itself knows of the caller, so membership can drop
  a message whose claimed address is not its real one. The in-memory network passes
  the sender's full address; a transport that only knows the remote host (TCP: the
  source port is ephemeral) passes the bare host, and membership compares hosts.
- **A handler returning ``None`` drops the request**: the caller gets
  ``PeerUnreachable`` (TCP: a DROPPED frame), exactly as if the message were lost.
- **Time is the event loop's.** Membership uses ``loop.time()`` and ``asyncio.sleep``
  and nothing else, so production needs no clock object, and simulations run on
  ``VirtualTimeLoop``, whose clock jumps to the next timer whenever every task is
  waiting: a minute of cluster life simulates in well under a second, and with seeded
  random sources the schedule is the same on every run.

``InMemoryNetwork`` is the simulation: seeded random drops, delays, partitions and
killed nodes, in the spirit of memberlist's ``mock_transport.go``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import selectors
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from agent.errors import Code, MeshletError

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[bytes | None]]
"""``handler(sender, payload) -> reply``; ``None`` drops the request."""

T = TypeVar("T")


class PeerUnreachable(MeshletError):
    """A peer did not answer in time: down, partitioned away, or the message was lost."""

    code = Code.UNAVAILABLE


class Transport(Protocol):
    """One node's end of the peer network (in memory for tests, TCP in the agent)."""

    @property
    def address(self) -> str:
        """This node's own peer address, ``host:port``, as other nodes reach it."""
        ...

    def serve(self, handler: Handler | None) -> None:
        """Route incoming requests to ``handler`` (``None``: drop them all)."""
        ...

    async def request(self, address: str, payload: bytes, timeout_s: float) -> bytes:
        """Send ``payload`` to ``address`` and return its reply.

        Raises ``PeerUnreachable`` if no reply comes within ``timeout_s`` for any
        reason; never raises anything else for a network fault."""
        ...


class InMemoryNetwork:
    """A simulated network joining ``InMemoryTransport`` endpoints by address.

    Every fault comes from one ``random.Random(seed)``, so a run is reproducible:

    - ``drop_rate``: chance that a request, and separately its reply, is lost;
    - ``delay_s``: a one-way delay drawn uniformly from ``(low, high)``;
    - ``partition(a, b)``: no message crosses between the two groups until ``heal()``;
    - ``kill(address)``: the node neither receives nor sends, like a crashed host.

    Lost messages cost the sender its whole timeout, as on a real network.
    ``counts`` tallies ``delivered``, ``dropped``, ``partitioned`` and ``killed``.
    """

    def __init__(
        self,
        seed: int = 0,
        drop_rate: float = 0.0,
        delay_s: tuple[float, float] = (0.001, 0.005),
    ) -> None:
        self.rng = random.Random(seed)
        self.drop_rate = drop_rate
        self.delay_s = delay_s
        self.counts: Counter[str] = Counter()
        self._endpoints: dict[str, InMemoryTransport] = {}
        self._killed: set[str] = set()
        self._cuts: list[tuple[frozenset[str], frozenset[str]]] = []

    def endpoint(self, address: str) -> InMemoryTransport:
        """The transport for ``address`` (made on first use; a killed address revives)."""
        self._killed.discard(address)
        if address not in self._endpoints:
            self._endpoints[address] = InMemoryTransport(self, address)
        return self._endpoints[address]

    def kill(self, address: str) -> None:
        self._killed.add(address)

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        self._cuts.append((frozenset(side_a), frozenset(side_b)))

    def heal(self) -> None:
        self._cuts.clear()

    def _fault(self, source: str, target: str) -> str | None:
        """Why a message from ``source`` to ``target`` is lost now, or ``None``."""
        if source in self._killed or target in self._killed:
            return "killed"
        for side_a, side_b in self._cuts:
            if (source in side_a and target in side_b) or (source in side_b and target in side_a):
                return "partitioned"
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return "dropped"
        return None

    def _delay(self) -> float:
        return self.rng.uniform(*self.delay_s)

    async def _deliver(self, source: str, target: str, payload: bytes) -> bytes:
        """Carry one request and its reply; raise ``_Lost`` where either is lost."""
        await asyncio.sleep(self._delay())
        endpoint = self._endpoints.get(target)
        fault = self._fault(source, target) or (None if endpoint else "killed")
        if fault or endpoint is None or endpoint.handler is None:
            self.counts[fault or "refused"] += 1
            raise _Lost
        try:
            reply = await endpoint.handler(source, payload)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A handler must not raise; if one does, the caller sees a lost message.
            log.exception("in-memory handler at %s raised", target)
            reply = None
        if reply is None:
            self.counts["refused"] += 1
            raise _Lost
        await asyncio.sleep(self._delay())
        fault = self._fault(target, source)
        if fault:
            self.counts[fault] += 1
            raise _Lost
        self.counts["delivered"] += 1
        return reply


class _Lost(Exception):
    """Internal: a message was lost; the caller waits out its timeout."""


class InMemoryTransport:
    """One endpoint of an ``InMemoryNetwork`` (implements ``Transport``)."""

    def __init__(self, network: InMemoryNetwork, address: str) -> None:
        self._network = network
        self._address = address
        self.handler: Handler | None = None

    @property
    def address(self) -> str:
        return self._address

    def serve(self, handler: Handler | None) -> None:
        self.handler = handler

    async def request(self, address: str, payload: bytes, timeout_s: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                return await self._network._deliver(self._address, address, payload)
        except TimeoutError:
            raise PeerUnreachable(f"{address}: no reply within {timeout_s:.3f}s") from None
        except _Lost:
            # Wait out the timeout, as a sender of a lost message would.
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            raise PeerUnreachable(f"{address}: no reply within {timeout_s:.3f}s") from None


class _AdvancingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A selector that, instead of blocking for ``timeout``, moves virtual time on by it."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("virtual-time loop: every task waits and no timer is set")
        self._loop.advance(timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock starts at 0 and jumps to the next timer when idle.

    Only timers move time: when no callback is ready the loop advances its clock to
    the earliest scheduled one instead of sleeping. Real I/O still works but takes no
    virtual time, so simulations should use only ``InMemoryNetwork``."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_AdvancingSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


def run_in_virtual_time(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh ``VirtualTimeLoop`` and close it, first
    cancelling whatever tasks ``main`` left behind (as ``asyncio.run`` does)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.wait(leftover))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
