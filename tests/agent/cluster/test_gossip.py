"""Gossip of node states and the registry over the in-memory network, in virtual time.

Every node is built as ``agent.cluster.peer`` builds it: one transport, a ``Mux``,
``Membership`` on channel 0 and ``Gossip`` on channel 1 sharing one ``Signer``, a
``Replica`` stamped by its own ``HybridClock`` (whose physical clock is the virtual
loop clock, optionally skewed) and ``NodeStates``. Every random source is seeded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agent.cluster.auth import Signer
from agent.cluster.gossip import Gossip, GossipSettings
from agent.cluster.hlc import HybridClock
from agent.cluster.membership import Member, Membership, State
from agent.cluster.mux import GOSSIP, MEMBERSHIP, Mux
from agent.cluster.replica import Entry, Replica
from agent.cluster.states import NodeStates
from agent.cluster.transport import InMemoryNetwork, PeerUnreachable, run_in_virtual_time

KEY = b"k" * 32
OTHER_KEY = b"z" * 32
MAX_BYTES = 64 * 1024
EPOCH_MS = 1_700_000_000_000  # virtual time 0 on every physical clock
SKEW_MS = 5 * 60 * 1000


def _addr(i: int) -> str:
    return f"10.0.1.{i}:8034"


class Node:
    """One simulated node; ``registry`` is what its ``apply_registry`` made real."""

    def __init__(self, net: InMemoryNetwork, i: int, seed: int, skew_ms: int) -> None:
        self.address = _addr(i)
        self.skew_ms = skew_ms
        mux = Mux(net.endpoint(self.address))
        self.signer = Signer([KEY], max_bytes=MAX_BYTES)
        self.membership = Membership(
            mux.channel(MEMBERSHIP), self.signer, rng=random.Random(seed * 1000 + i),
        )
        self.clock = HybridClock(self.address, now_ms=self._physical_ms)
        self.replica = Replica(self.clock)
        self.states = NodeStates(self.address, generation=1)
        self.registry: dict[str, dict[str, Any]] = {}
        self.gossip = Gossip(
            mux.channel(GOSSIP), self.signer, self.membership, self.states, self.replica,
            self._apply, GossipSettings(), rng=random.Random(seed * 1000 + 500 + i),
        )

    def _physical_ms(self) -> int:
        return EPOCH_MS + int(asyncio.get_running_loop().time() * 1000) + self.skew_ms

    async def _apply(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.value is None:
                self.registry.pop(entry.key, None)
            else:
                self.registry[entry.key] = entry.value

    def put(self, key: str, value: dict[str, Any]) -> Entry:
        """A local registry write, as the agent's registry sync makes one."""
        entry = self.replica.put(key, value)
        self.registry[key] = dict(value)
        self.gossip.publish([entry])
        return entry

    def delete(self, key: str) -> Entry:
        entry = self.replica.delete(key)
        self.registry.pop(key, None)
        self.gossip.publish([entry])
        return entry


class Cluster:
    """``n`` nodes on one ``InMemoryNetwork``; ``skews`` maps a node index to its skew."""

    def __init__(
        self, n: int, seed: int, drop_rate: float = 0.0,
        delay_s: tuple[float, float] = (0.001, 0.005), skews: dict[int, int] | None = None,
    ) -> None:
        self.net = InMemoryNetwork(seed, drop_rate=drop_rate, delay_s=delay_s)
        self.rng = random.Random(seed)
        self.nodes = [Node(self.net, i, seed, (skews or {}).get(i, 0)) for i in range(n)]
        self.live = list(self.nodes)

    async def start(self) -> None:
        """Start every node and join it through a random earlier one (retrying losses)."""
        for i, node in enumerate(self.nodes):
            node.membership.start()
            node.gossip.start()
            if i:
                seed = _addr(self.rng.randrange(i))
                for _attempt in range(20):
                    if await node.membership.join([seed]):
                        break
                else:
                    raise AssertionError(f"{node.address} could not join through {seed}")
        await wait_for(self.all_alive, deadline_s=20.0)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.gossip.stop()
            await node.membership.stop()

    def kill(self, node: Node) -> None:
        self.net.kill(node.address)
        self.live.remove(node)

    def all_alive(self) -> bool:
        expected = {n.address: State.ALIVE for n in self.live}
        return all(
            {m.address: m.state for m in n.membership.members()} == expected for n in self.live
        )

    def replicas_agree(self, key: str, value: dict[str, Any] | None,
                       nodes: list[Node] | None = None) -> bool:
        return all(
            n.replica.get(key) == value and n.registry.get(key) == value
            for n in (self.live if nodes is None else nodes)
        )


async def wait_for(condition: Callable[[], bool], deadline_s: float, step_s: float = 0.05) -> float:
    """Poll ``condition`` in virtual time; the virtual seconds it took, or fail at the deadline."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not condition():
        assert loop.time() - began < deadline_s, f"not true within {deadline_s}s (virtual)"
        await asyncio.sleep(step_s)
    return loop.time() - began


def holds_dead(nodes: list[Node], gone: list[Node]) -> bool:
    """Whether every node of ``nodes`` holds every node of ``gone`` DEAD."""
    return all(
        (m := n.membership.member(g.address)) is not None and m.state is State.DEAD
        for n in nodes for g in gone
    )


def _stamps(cluster: Cluster, key: str) -> set[Any]:
    """The distinct stamps of ``key`` across the cluster (``None`` where it is absent)."""
    return {e.stamp if (e := n.replica.entry(key)) else None for n in cluster.nodes}


def simulate(coro: Coroutine[Any, Any, None]) -> None:
    run_in_virtual_time(coro)


# -- the registry ------------------------------------------------------------------


@pytest.mark.parametrize(("n", "seed"), [(5, 1), (20, 2)])
def test_put_reaches_every_node_despite_drops_and_delays(n: int, seed: int) -> None:
    async def main() -> None:
        cluster = Cluster(n, seed, drop_rate=0.1, delay_s=(0.001, 0.02))
        await cluster.start()
        value = {"uri": "s3://models/a", "n": seed}
        cluster.nodes[n - 1].put("model/a", value)
        took = await wait_for(lambda: cluster.replicas_agree("model/a", value), deadline_s=30.0)
        print(f"n={n}, 10% loss: put everywhere in {took:.2f}s (virtual)")
        assert len(_stamps(cluster, "model/a")) == 1, "one stamp everywhere"
        await cluster.stop()

    simulate(main())


def test_delete_wins_and_a_partitioned_stale_node_does_not_resurrect() -> None:
    async def main() -> None:
        cluster = Cluster(8, seed=3)
        await cluster.start()
        loop = asyncio.get_running_loop()
        value = {"uri": "s3://models/b"}
        cluster.nodes[0].put("model/b", value)
        await wait_for(lambda: cluster.replicas_agree("model/b", value), deadline_s=10.0)

        away = cluster.nodes[7]
        rest = [n for n in cluster.nodes if n is not away]
        cluster.net.partition([away.address], [n.address for n in rest])
        await wait_for(lambda: holds_dead(rest, [away]) and holds_dead([away], rest),
                       deadline_s=10.0)
        cluster.nodes[1].delete("model/b")
        await wait_for(lambda: cluster.replicas_agree("model/b", None, rest), deadline_s=10.0)
        assert away.replica.get("model/b") == value, "the partitioned node still holds it"

        deleted_at = loop.time()
        upserts: list[tuple[str, float]] = []
        for node in rest:
            def record(_sender: str, changed: list[Entry], node: Node = node) -> None:
                upserts.extend((node.address, loop.time()) for e in changed
                               if e.key == "model/b" and e.value is not None)
            node.gossip.on_news = record
        cluster.net.heal()
        await wait_for(cluster.all_alive, deadline_s=30.0)
        took = await wait_for(lambda: cluster.replicas_agree("model/b", None), deadline_s=30.0)
        print(f"tombstone reached the healed node {took:.2f}s after the cluster was whole")
        await asyncio.sleep(10.0)  # poll window: nothing brings the value back
        assert cluster.replicas_agree("model/b", None)
        assert upserts == [], f"the old value came back after {deleted_at}: {upserts}"
        assert len(_stamps(cluster, "model/b")) == 1
        assert all(n.replica.entry("model/b").deleted  # type: ignore[union-attr]
                   for n in cluster.nodes)
        await cluster.stop()

    simulate(main())


def test_concurrent_writes_across_a_partition_converge_after_heal() -> None:
    async def main() -> None:
        cluster = Cluster(10, seed=4)
        await cluster.start()
        side_a, side_b = cluster.nodes[:5], cluster.nodes[5:]
        cluster.net.partition([n.address for n in side_a], [n.address for n in side_b])
        await wait_for(lambda: holds_dead(side_a, side_b) and holds_dead(side_b, side_a),
                       deadline_s=10.0)
        side_a[0].put("model/c", {"side": "a"})
        side_b[0].put("model/c", {"side": "b"})
        side_b[1].put("model/only-b", {"side": "b"})
        await wait_for(lambda: cluster.replicas_agree("model/c", {"side": "a"}, side_a)
                       and cluster.replicas_agree("model/c", {"side": "b"}, side_b),
                       deadline_s=10.0)
        cluster.net.heal()
        took = await wait_for(lambda: len(_stamps(cluster, "model/c")) == 1
                              and cluster.replicas_agree("model/only-b", {"side": "b"}),
                              deadline_s=60.0)
        winner = cluster.nodes[0].replica.entry("model/c")
        assert winner is not None and winner.value in ({"side": "a"}, {"side": "b"})
        assert cluster.replicas_agree("model/c", winner.value)
        assert winner.stamp == max(side_a[0].replica.entry("model/c").stamp,  # type: ignore[union-attr]
                                   side_b[0].replica.entry("model/c").stamp)  # type: ignore[union-attr]
        print(f"partition healed: one value of model/c everywhere in {took:.2f}s")
        await cluster.stop()

    simulate(main())


def test_a_node_minutes_ahead_still_converges_and_later_writes_win() -> None:
    async def main() -> None:
        cluster = Cluster(6, seed=5, skews={0: SKEW_MS})
        await cluster.start()
        fast, normal = cluster.nodes[0], cluster.nodes[3]
        first = fast.put("model/d", {"v": "from the fast node"})
        normal.put("model/e", {"v": "from a normal node"})
        await wait_for(lambda: cluster.replicas_agree("model/d", first.value)
                       and cluster.replicas_agree("model/e", {"v": "from a normal node"}),
                       deadline_s=10.0)
        # The normal node has seen the fast stamp, so its later write must beat it
        # though its physical clock is five minutes behind.
        later = normal.put("model/d", {"v": "later, from a normal node"})
        assert later.stamp > first.stamp
        assert later.stamp.wall_ms >= first.stamp.wall_ms
        await wait_for(lambda: cluster.replicas_agree("model/d", later.value), deadline_s=10.0)
        # And another node that heard only by gossip overrides in turn.
        third = cluster.nodes[5].put("model/d", {"v": "third"})
        assert third.stamp > later.stamp
        await wait_for(lambda: cluster.replicas_agree("model/d", third.value), deadline_s=10.0)
        await asyncio.sleep(6.0)  # poll window: an anti-entropy round, nothing flips back
        assert cluster.replicas_agree("model/d", third.value)
        assert normal.clock.ahead_observed > 0, "the skew was noticed"
        await cluster.stop()

    simulate(main())


# -- node states -------------------------------------------------------------------


def test_node_states_converge_and_a_dead_node_is_forgotten() -> None:
    async def main() -> None:
        n = 12
        cluster = Cluster(n, seed=6)
        for i, node in enumerate(cluster.nodes):
            node.states.set("node", {"free_mb": 1000 + i})
            node.states.set(f"m/x{i % 3}", {"state": "loaded"})
        await cluster.start()

        def converged() -> bool:
            origins = sorted(n.address for n in cluster.live)
            return all(
                node.states.origins() == origins and all(
                    node.states.get(o.address, "node") == o.states.get(o.address, "node")
                    and node.states.version(o.address) == o.states.version(o.address)
                    for o in cluster.live)
                for node in cluster.live
            )

        took = await wait_for(converged, deadline_s=20.0)
        print(f"n={n}: node states converged in {took:.2f}s")
        assert cluster.nodes[0].states.holders("m/x1") == sorted(
            _addr(i) for i in range(n) if i % 3 == 1)

        cluster.nodes[2].states.delete("m/x2")
        cluster.nodes[4].states.set("node", {"free_mb": 7})
        await wait_for(converged, deadline_s=10.0)
        assert _addr(2) not in cluster.nodes[9].states.holders("m/x2")

        victim = cluster.nodes[5]
        victim.states.set("node", {"free_mb": 0})  # news that may still be in flight
        cluster.kill(victim)
        await wait_for(lambda: all(
            n.membership.member(victim.address).state is State.DEAD  # type: ignore[union-attr]
            for n in cluster.live), deadline_s=10.0)
        assert all(victim.address not in n.states.origins() for n in cluster.live)
        await asyncio.sleep(10.0)  # poll window: no peer brings it back
        assert all(victim.address not in n.states.origins() for n in cluster.live)
        assert all(victim.address not in n.states.holders("m/x2") for n in cluster.live)
        assert converged()
        await cluster.stop()

    simulate(main())


def states_agree(cluster: Cluster) -> bool:
    return len({json.dumps(n.states.digest(), sort_keys=True) for n in cluster.live}) == 1


def test_a_peer_in_agreement_answers_a_pull_without_a_digest() -> None:
    """The push reply carries only where the peer's digest differs from the
    puller's, so an exchange between nodes that agree costs one digest."""

    async def main() -> None:
        cluster = Cluster(4, seed=8)
        for node in cluster.nodes:
            node.states.set("node", {"i": node.address})
        await cluster.start()
        await wait_for(lambda: states_agree(cluster), deadline_s=10.0)
        target, member = cluster.nodes[0], _addr(1)

        async def pull(digest: dict[str, Any]) -> dict[str, Any]:
            reply = await cluster.net.endpoint(member).request(
                target.address, bytes([GOSSIP]) + _sealed({"t": "pull", "f": member, "d": digest}),
                timeout_s=0.5)
            body: dict[str, Any] = json.loads(Signer([KEY]).open(reply))
            return body

        digest = target.states.digest()
        body = await pull(digest)
        assert body["t"] == "push" and body["dd"] == {} and "d" not in body
        behind = {**digest, _addr(2): [digest[_addr(2)][0], 0, 0]}
        del behind[_addr(3)]
        body = await pull({**behind, "10.0.1.77:8034": [1, 1, 0]})
        assert body["dd"] == {_addr(2): digest[_addr(2)], _addr(3): digest[_addr(3)],
                              "10.0.1.77:8034": None}
        assert sorted(body["s"]["o"]) == [_addr(2), _addr(3)]
        await cluster.stop()

    simulate(main())


# -- bad input ---------------------------------------------------------------------


def _sealed(body: dict[str, Any], key: bytes = KEY) -> bytes:
    return Signer([key]).seal(json.dumps(body).encode())


def test_bad_gossip_messages_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        cluster = Cluster(5, seed=7)
        for node in cluster.nodes:
            node.states.set("node", {"i": node.address})
        await cluster.start()
        cluster.nodes[1].put("model/f", {"v": 1})
        await wait_for(lambda: cluster.replicas_agree("model/f", {"v": 1}), deadline_s=10.0)
        await wait_for(lambda: states_agree(cluster), deadline_s=10.0)

        target = cluster.nodes[0]
        member, other = _addr(1), _addr(2)
        stranger = "10.0.9.9:8034"
        rumor = Entry("model/f", {"v": "evil"}, target.clock.now()).to_wire()
        cases: list[tuple[str, bytes, str, str]] = [  # (from, payload, counter, reason)
            (member, _sealed({"t": "rumor", "f": member, "r": [rumor]}, OTHER_KEY),
             "signer", "unknown_key"),
            (member, _sealed({"t": "rumor", "f": member, "r": [rumor]})[:20],
             "signer", "truncated"),
            (member, _sealed({"t": "rumor", "f": member, "r": [rumor] * 2000}),
             "signer", "oversized"),
            (member, Signer([KEY]).seal(b"{\"t\": \"rumor\", "), "gossip", "malformed"),
            (member, _sealed([1, 2, 3]), "gossip", "malformed"),  # type: ignore[arg-type]
            (member, _sealed({"t": "rumor", "f": member, "r": [{"k": 1}]}),
             "gossip", "malformed"),
            (member, _sealed({"t": "rumor", "f": member, "r": {"no": "list"}}),
             "gossip", "malformed"),
            (member, _sealed({"t": "delta", "f": member, "s": {"o": {member: "x"}}}),
             "gossip", "malformed"),
            (member, _sealed({"t": "pull", "f": member, "d": "not a digest"}),
             "gossip", "malformed"),
            (member, _sealed({"t": "ae", "f": member, "g": [1, 2]}), "gossip", "malformed"),
            (member, _sealed({"t": "rumor", "f": other, "r": [rumor]}),
             "gossip", "spoofed_sender"),
            (stranger, _sealed({"t": "rumor", "f": stranger, "r": [rumor]}),
             "gossip", "not_member"),
        ]
        assert len(cases[2][1]) > MAX_BYTES
        before = (target.replica.digest(), target.states.digest(), dict(target.registry),
                  target.membership.members())
        for sender, payload, counter, reason in cases:
            counts = target.signer.dropped if counter == "signer" else target.gossip.dropped
            was = counts[reason]
            with pytest.raises(PeerUnreachable):
                await cluster.net.endpoint(sender).request(
                    target.address, bytes([GOSSIP]) + payload, timeout_s=0.5)
            assert counts[reason] == was + 1, f"{reason} from {sender} not counted"
        after = (target.replica.digest(), target.states.digest(), dict(target.registry),
                 target.membership.members())
        assert after == before
        assert target.replica.get("model/f") == {"v": 1}
        assert sum(target.gossip.dropped.values()) == 9
        await cluster.stop()

    with caplog.at_level(logging.ERROR):
        simulate(main())
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_restarted_member_is_not_resurrected_through_forgotten_state() -> None:
    """A DEAD verdict makes every node forget the origin; a peer relaying the same
    generation later must not bring it back."""

    async def main() -> None:
        cluster = Cluster(5, seed=8)
        for node in cluster.nodes:
            node.states.set("node", {"i": node.address})
        await cluster.start()
        await wait_for(lambda: all(len(n.states.origins()) == 5 for n in cluster.nodes), 10.0)
        victim, holder = cluster.nodes[4], cluster.nodes[1]
        stale = victim.states.delta_for({}, 100)
        cluster.kill(victim)
        await wait_for(lambda: all(
            n.membership.member(victim.address).state is State.DEAD  # type: ignore[union-attr]
            for n in cluster.live), deadline_s=10.0)
        # A (buggy or slow) peer pushes the dead node's state directly as a delta.
        await cluster.net.endpoint(holder.address).request(
            cluster.nodes[0].address,
            bytes([GOSSIP]) + holder.signer.seal(json.dumps(
                {"t": "delta", "f": holder.address, "s": stale}).encode()),
            timeout_s=0.5)
        assert victim.address not in cluster.nodes[0].states.origins()
        assert isinstance(cluster.nodes[0].membership.member(victim.address), Member)
        await cluster.stop()

    simulate(main())


def test_node_states_come_back_after_a_partition_heals() -> None:
    """Each side forgets the other's node states when it holds it DEAD; once the
    partition heals and the members refute, the same generation must be taken again."""

    async def main() -> None:
        cluster = Cluster(6, seed=9)
        for node in cluster.nodes:
            node.states.set("node", {"i": node.address})
        await cluster.start()
        await wait_for(lambda: all(len(n.states.origins()) == 6 for n in cluster.nodes), 10.0)
        side_a, side_b = cluster.nodes[:3], cluster.nodes[3:]
        cluster.net.partition([n.address for n in side_a], [n.address for n in side_b])
        await wait_for(lambda: all(len(n.states.origins()) == 3 for n in cluster.nodes), 10.0)
        cluster.net.heal()
        await wait_for(cluster.all_alive, deadline_s=30.0)
        try:
            await wait_for(lambda: all(len(n.states.origins()) == 6 for n in cluster.nodes),
                           deadline_s=30.0)
        finally:
            await cluster.stop()

    simulate(main())
