"""The simulated part of ``bench cluster``: the real protocol code, in virtual time.

For each cluster size N, N nodes are built as ``agent.cluster.peer`` builds them
(``Membership`` and ``Gossip`` on one ``Mux``, one ``Signer``, a ``Replica`` with its
own ``HybridClock``, ``NodeStates``), all with default settings, over an
``InMemoryNetwork`` with LAN delays (``DELAY_S`` one way, no loss), on a
``VirtualTimeLoop``: the figures are virtual seconds, what the protocol would take
on a network like that, not how fast this machine simulates it.

Phases, per size:

1. **Join.** Nodes start and join through a random earlier node; the run waits
   until every node holds every other ALIVE and every node's ``NodeStates`` holds
   every origin at its current version. For N > ``PREFILL_ABOVE`` both are filled
   directly instead, to what a finished join leaves (each membership table: every
   member ALIVE at incarnation 0; each ``NodeStates``: every origin's full state,
   applied as one delta), because simulating the join costs O(N^2) work per
   virtual second here (every state exchange carries an O(N) digest).
2. **Steady traffic** (``bytes_per_member_s``): bytes put on the wire by every node
   (membership and gossip, requests and replies, sealed payloads plus the mux tag)
   over ``steady_s`` virtual seconds with no news, per member per second.
3. **Propagation** (``p50_rounds`` .. ``p99_s``): ``writes`` registry writes on random
   nodes, each after the last reached everyone plus a gap; for every other member,
   the time until its replica held the write and its *round*: the writer is round
   0, a node that first got the entry from a node of round g is round g + 1
   (``Gossip.on_news`` names the sender). Percentiles are nearest-rank over all
   member arrivals of all writes.
4. **Failure detection** (``detect_s``): ``kills`` nodes are crashed one after the
   other (``InMemoryNetwork.kill``); for each, the time until every live member
   holds it DEAD. ``detect_s`` is the **maximum** over the kills (the worst member
   of the worst kill); ``detect_mean_s`` is the mean over kills of that per-kill
   maximum. For N > ``PREFILL_ABOVE`` gossip is stopped first: membership does not
   use it, and in virtual time its CPU cost moves no clock, so detection times are
   the same; it only saves wall time.

Wall time on 2 cores: about 0.5 s for N=10, 15 s for 100, and for 1,000 about 20 s
per virtual second, almost all of it node-state digests (``NodeStates.delta_for``
parses an O(N) digest per exchange); so for N > ``PREFILL_ABOVE`` the defaults
shrink the steady window to 2 s (four state rounds), the gap between writes to
0.1 s, and run 2 kills (about 3 minutes in all).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.cluster.auth import Signer
from agent.cluster.gossip import Gossip
from agent.cluster.hlc import HybridClock
from agent.cluster.membership import Member, Membership, State
from agent.cluster.mux import GOSSIP, MEMBERSHIP, Mux
from agent.cluster.replica import Entry, Replica
from agent.cluster.states import NodeStates
from agent.cluster.transport import (
    Handler,
    InMemoryNetwork,
    InMemoryTransport,
    run_in_virtual_time,
)

from .report import percentile

KEY = b"meshlet-bench-cluster-key-000000"
DELAY_S = (0.0005, 0.002)
"""One-way network delay, uniform: a LAN."""
EPOCH_MS = 1_700_000_000_000
MAX_MESSAGE_BYTES = 4 << 20
"""As ``PeerSettings.max_message_bytes``."""
PREFILL_ABOVE = 200
"""Above this many members, membership tables are filled directly instead of joined."""


class CountingTransport:
    """An ``InMemoryTransport`` that counts the bytes this node puts on the wire,
    by mux channel: its requests, and its replies to others' requests."""

    def __init__(self, inner: InMemoryTransport) -> None:
        self._inner = inner
        self.sent: Counter[int] = Counter()

    @property
    def address(self) -> str:
        return self._inner.address

    def serve(self, handler: Handler | None) -> None:
        if handler is None:
            self._inner.serve(None)
            return

        async def counted(sender: str, data: bytes) -> bytes | None:
            reply = await handler(sender, data)
            if reply is not None and data:
                self.sent[data[0]] += len(reply)
            return reply

        self._inner.serve(counted)

    async def request(self, address: str, payload: bytes, timeout_s: float) -> bytes:
        if payload:
            self.sent[payload[0]] += len(payload)
        return await self._inner.request(address, payload, timeout_s)


class SimNode:
    def __init__(self, net: InMemoryNetwork, address: str, rng_seed: int) -> None:
        self.address = address
        self.transport = CountingTransport(net.endpoint(address))
        mux = Mux(self.transport)
        signer = Signer([KEY], max_bytes=MAX_MESSAGE_BYTES)
        self.membership = Membership(
            mux.channel(MEMBERSHIP), signer, rng=random.Random(rng_seed),
            meta={"grpc": address.replace(":8034", ":8033")},
        )
        self.replica = Replica(HybridClock(address, now_ms=_virtual_ms))
        self.states = NodeStates(address, generation=1)
        self.states.set("node", {"free_mb": 16384, "models": 0})
        self.gossip = Gossip(
            mux.channel(GOSSIP), signer, self.membership, self.states, self.replica,
            _ignore, rng=random.Random(rng_seed + 1),
        )

    def start(self) -> None:
        self.membership.start()
        self.gossip.start()

    async def stop(self) -> None:
        await self.gossip.stop()
        await self.membership.stop()


async def _ignore(_entries: list[Entry]) -> None:
    return None


def _virtual_ms() -> int:
    return EPOCH_MS + int(asyncio.get_running_loop().time() * 1000)


def _addr(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8034"


class _Sim:
    def __init__(self, n: int, seed: int, progress: Callable[[str], None]) -> None:
        self.n = n
        self.rng = random.Random(seed)
        self.net = InMemoryNetwork(seed, delay_s=DELAY_S)
        self.nodes = [SimNode(self.net, _addr(i), seed * 100_000 + 2 * i) for i in range(n)]
        self.live = list(self.nodes)
        self.say = progress
        self.t0 = time.perf_counter()

    def log(self, line: str) -> None:
        loop = asyncio.get_running_loop()
        self.say(f"  N={self.n}: {line} (virtual {loop.time():.1f} s, "
                 f"wall {time.perf_counter() - self.t0:.0f} s)")

    async def wait_for(self, condition: Callable[[], bool], deadline_s: float,
                       what: str, step_s: float = 0.01) -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not condition():
            if loop.time() - began > deadline_s:
                raise RuntimeError(f"N={self.n}: {what} not within {deadline_s} s (virtual)")
            await asyncio.sleep(step_s)
        return loop.time() - began

    # -- phases --------------------------------------------------------------------

    async def join(self) -> None:
        if self.n > PREFILL_ABOVE:
            self._prefill()
            for node in self.nodes:
                node.start()
        else:
            for i, node in enumerate(self.nodes):
                node.start()
                if i:
                    seed = self.nodes[self.rng.randrange(i)].address
                    for _attempt in range(20):
                        if await node.membership.join([seed]):
                            break
        await self.wait_for(self._all_alive, 60.0, "all ALIVE everywhere", 0.1)
        self.log("membership converged")
        await self.wait_for(self._states_converged, 120.0, "node states everywhere", 0.1)
        self.log("node states converged")

    def _prefill(self) -> None:
        """What a finished join leaves: every member ALIVE at incarnation 0 everywhere."""
        table = {
            node.address: Member(node.address, 0, State.ALIVE, node.membership.member(
                node.address).meta)  # type: ignore[union-attr]
            for node in self.nodes
        }
        states: dict[str, Any] = {}
        for node in self.nodes:
            node.membership._members = dict(table)  # a simulation shortcut, see above
            states.update(node.states.delta_for({}, 1000)["o"])
        for node in self.nodes:
            node.states.apply({"o": states})

    def _all_alive(self) -> bool:
        for node in self.live:
            members = node.membership.members()
            if len(members) != len(self.live) or any(m.state is not State.ALIVE for m in members):
                return False
        return True

    def _states_converged(self) -> bool:
        want = {n.address: n.states.version(n.address) for n in self.live}
        return all(
            {o: node.states.version(o) for o in node.states.origins()} == want
            for node in self.live
        )

    async def steady_bytes(self, window_s: float) -> float:
        before = sum(sum(n.transport.sent.values()) for n in self.nodes)
        await asyncio.sleep(window_s)
        after = sum(sum(n.transport.sent.values()) for n in self.nodes)
        self.log(f"steady window of {window_s:.0f} s done")
        return (after - before) / len(self.live) / window_s

    async def propagation(self, writes: int, gap_s: float) -> tuple[list[float], list[int]]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        rounds: list[int] = []
        for w in range(writes):
            key = f"model/bench-{w}"
            arrival: dict[str, tuple[float, int]] = {}

            def observer(node: SimNode, key: str = key,
                         arrival: dict[str, tuple[float, int]] = arrival) -> Any:
                def seen(sender: str, changed: list[Entry]) -> None:
                    if node.address in arrival or all(e.key != key for e in changed):
                        return
                    got = arrival.get(sender)
                    arrival[node.address] = (loop.time(), got[1] + 1 if got else -1)
                return seen

            for node in self.live:
                node.gossip.on_news = observer(node)
            writer = self.rng.choice(self.live)
            began = loop.time()
            arrival[writer.address] = (began, 0)
            writer.gossip.publish([writer.replica.put(key, {"uri": f"s3://m/{w}", "w": w})])
            await self.wait_for(self._every_live_in(arrival),
                                60.0, f"write {w} everywhere", 0.005)
            for address, (at, hops) in arrival.items():
                if address != writer.address:
                    times.append(at - began)
                    rounds.append(hops)
            self.log(f"write {w + 1}/{writes}: everywhere in "
                     f"{max(t for t, _ in arrival.values()) - began:.3f} s, "
                     f"{max(h for _, h in arrival.values())} rounds")
            await asyncio.sleep(gap_s)
        for node in self.live:
            node.gossip.on_news = None
        return times, rounds

    async def detection(self, kills: int, gap_s: float) -> list[float]:
        loop = asyncio.get_running_loop()
        worst: list[float] = []
        if self.n > PREFILL_ABOVE:
            for node in self.nodes:
                await node.gossip.stop()
        for k in range(kills):
            victim = self.rng.choice(self.live[1:])
            dead_at: dict[str, float] = {}

            def listener(node: SimNode, victim: SimNode = victim,
                         dead_at: dict[str, float] = dead_at) -> Any:
                def changed(member: Member, _previous: Member | None) -> None:
                    if member.address == victim.address and member.state >= State.DEAD:
                        dead_at.setdefault(node.address, loop.time())
                return changed

            self.live.remove(victim)
            for node in self.live:
                node.membership.on_change(listener(node))
            killed = loop.time()
            self.net.kill(victim.address)
            await self.wait_for(self._every_live_in(dead_at),
                                60.0, f"kill {k} DEAD everywhere", 0.01)
            worst.append(max(dead_at.values()) - killed)
            self.log(f"kill {k + 1}/{kills}: DEAD everywhere in {worst[-1]:.2f} s")
            await asyncio.sleep(gap_s)
        return worst

    def _every_live_in(self, seen: dict[str, Any]) -> Callable[[], bool]:
        return lambda: len(seen) == len(self.live)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


def run_one(n: int, seed: int = 1, progress: Callable[[str], None] = print,
            writes: int | None = None, kills: int | None = None,
            steady_s: float | None = None) -> dict[str, Any]:
    """Simulate one cluster of ``n`` members; the figures of ``run_sim`` for it."""
    big = n > PREFILL_ABOVE
    writes = writes if writes is not None else 10
    kills = kills if kills is not None else (2 if big else 3)
    steady_s = steady_s if steady_s is not None else (2.0 if big else 10.0)
    wall = time.perf_counter()

    async def main() -> dict[str, Any]:
        sim = _Sim(n, seed, progress)
        await sim.join()
        per_member_s = await sim.steady_bytes(steady_s)
        times, rounds = await sim.propagation(writes, gap_s=1.0 if n <= PREFILL_ABOVE else 0.1)
        detect = await sim.detection(kills, gap_s=2.0)
        await sim.stop()
        times.sort()
        rounds.sort()
        return {
            "members": n,
            "p50_rounds": percentile(rounds, 50),
            "p99_rounds": percentile(rounds, 99),
            "max_rounds": rounds[-1] if rounds else None,
            "p50_s": round(percentile(times, 50), 4),
            "p99_s": round(percentile(times, 99), 4),
            "detect_s": round(max(detect), 3),
            "detect_mean_s": round(sum(detect) / len(detect), 3),
            "bytes_per_member_s": round(per_member_s),
            "writes": writes,
            "kills": kills,
            "steady_s": steady_s,
            "prefilled": n > PREFILL_ABOVE,
        }

    result = run_in_virtual_time(main())
    result["wall_s"] = round(time.perf_counter() - wall, 1)
    return result


def run_sim(sizes: list[int], seed: int = 1,
            progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per size N: ``{"members", "p50_rounds", "p99_rounds", "p50_s", "p99_s",
    "detect_s", "bytes_per_member_s", ...}`` (see the module docstring), plus
    ``max_rounds``, ``detect_mean_s``, the run's parameters and ``wall_s``."""
    results = []
    for n in sizes:
        progress(f"cluster sim: {n} members")
        results.append(run_one(n, seed, progress))
    return results


if __name__ == "__main__":
    import sys

    for row in run_sim([int(a) for a in sys.argv[1:]] or [10, 100]):
        print(row)
