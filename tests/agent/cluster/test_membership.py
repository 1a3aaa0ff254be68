"""Membership over the in-memory network in virtual time (no real waiting anywhere)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agent.cluster.auth import HEADER_BYTES, Signer
from agent.cluster.membership import Member, Membership, MembershipSettings, State
from agent.cluster.transport import InMemoryNetwork, PeerUnreachable, run_in_virtual_time

KEY = b"k" * 32
OTHER_KEY = b"z" * 32
DETECTION_TARGET_S = 3.0


def _addr(i: int) -> str:
    return f"10.0.0.{i}:8034"


class Cluster:
    """``n`` nodes on one ``InMemoryNetwork``, every random source seeded."""

    def __init__(
        self,
        n: int,
        seed: int,
        drop_rate: float = 0.0,
        settings: MembershipSettings | None = None,
        keys: Callable[[int], list[bytes]] = lambda i: [KEY],
    ) -> None:
        self.net = InMemoryNetwork(seed, drop_rate=drop_rate)
        self.rng = random.Random(seed)
        self.nodes = [
            Membership(
                self.net.endpoint(_addr(i)), Signer(keys(i)), settings,
                random.Random(seed * 1000 + i), meta={"node": str(i)},
            )
            for i in range(n)
        ]
        self.live = list(self.nodes)

    async def start(self) -> None:
        """Start every node and join each through one seed, a random earlier node,
        retrying a join that the network lost (as the agent will)."""
        for i, node in enumerate(self.nodes):
            node.start()
            if i:
                seed = _addr(self.rng.randrange(i))
                for _attempt in range(20):
                    if await node.join([seed]):
                        break
                else:
                    raise AssertionError(f"{node.address} could not join through {seed}")

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()

    def kill(self, node: Membership) -> None:
        """Crash ``node``: no leave, no more messages in or out."""
        self.net.kill(node.address)
        self.live.remove(node)

    def states(self, observer: Membership) -> dict[str, State]:
        return {m.address: m.state for m in observer.members()}

    def all_alive(self) -> bool:
        expected = {n.address: State.ALIVE for n in self.live}
        return all(self.states(n) == expected for n in self.live)


async def wait_for(condition: Callable[[], bool], deadline_s: float, step_s: float = 0.05) -> float:
    """Poll ``condition`` in virtual time; the virtual seconds it took, or fail at the deadline."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not condition():
        assert loop.time() - began < deadline_s, f"not true within {deadline_s}s (virtual)"
        await asyncio.sleep(step_s)
    return loop.time() - began


def simulate(coro: Coroutine[Any, Any, None]) -> None:
    run_in_virtual_time(coro)


@pytest.mark.parametrize("n", [5, 50])
def test_cluster_converges_to_all_alive_and_stays_so(n: int) -> None:
    async def main() -> None:
        cluster = Cluster(n, seed=n)
        changes: list[Member] = []
        await cluster.start()
        took = await wait_for(cluster.all_alive, deadline_s=10.0)
        for node in cluster.nodes:
            node.on_change(lambda member, _previous: changes.append(member))
        await asyncio.sleep(10.0)  # poll window, virtual time: ten quiet seconds, no change
        assert cluster.all_alive()
        assert changes == [], "no suspicion without faults"
        assert took < 5.0
        assert cluster.nodes[0].member(_addr(n - 1)) == Member(
            _addr(n - 1), 0, State.ALIVE, {"node": str(n - 1)}
        )
        await cluster.stop()

    simulate(main())


@pytest.mark.parametrize(("n", "seed"), [(50, 1), (100, 2)])
def test_killed_node_is_dead_everywhere_within_3s(n: int, seed: int) -> None:
    async def main() -> None:
        cluster = Cluster(n, seed=seed)
        loop = asyncio.get_running_loop()
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=15.0)
        victim = cluster.nodes[n // 2]
        dead_at: dict[str, float] = {}
        for node in cluster.nodes:
            def record(member: Member, _prev: Member | None, node: Membership = node) -> None:
                if member.address == victim.address and member.state is State.DEAD:
                    dead_at.setdefault(node.address, loop.time())
            node.on_change(record)
        cluster.kill(victim)
        killed_at = loop.time()
        await wait_for(lambda: len(dead_at) == n - 1, deadline_s=10.0)
        detection = [t - killed_at for t in dead_at.values()]
        print(f"n={n}: first DEAD {min(detection):.2f}s, all DEAD {max(detection):.2f}s")
        assert max(detection) <= DETECTION_TARGET_S
        assert all(
            cluster.states(node)[victim.address] is State.DEAD for node in cluster.live
        )
        others = {node.address for node in cluster.live}
        assert all(
            s is State.ALIVE for node in cluster.live
            for a, s in cluster.states(node).items() if a in others
        ), "no live node lost on the way"
        await cluster.stop()

    simulate(main())


def test_partition_then_heal() -> None:
    async def main() -> None:
        cluster = Cluster(6, seed=3)
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=10.0)
        side_a, side_b = cluster.nodes[:3], cluster.nodes[3:]
        cluster.net.partition([n.address for n in side_a], [n.address for n in side_b])

        def split() -> bool:
            return all(
                cluster.states(x)[y.address] is State.DEAD
                for mine, theirs in ((side_a, side_b), (side_b, side_a))
                for x in mine for y in theirs
            )

        await wait_for(split, deadline_s=5.0)
        assert all(cluster.states(x)[y.address] is State.ALIVE for x in side_a for y in side_a)
        cluster.net.heal()
        took = await wait_for(cluster.all_alive, deadline_s=10.0)
        assert took < 5.0
        await cluster.stop()

    simulate(main())


def test_false_suspicion_is_refuted_by_incarnation() -> None:
    async def main() -> None:
        cluster = Cluster(5, seed=4)
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=10.0)
        accused = cluster.nodes[2]
        verdicts: list[State] = []
        for node in cluster.nodes:
            node.on_change(
                lambda m, _p: verdicts.append(m.state) if m.address == accused.address else None
            )
        rest = [n.address for n in cluster.nodes if n is not accused]
        cluster.net.partition([accused.address], rest)
        await wait_for(lambda: State.SUSPECT in verdicts, deadline_s=5.0)
        cluster.net.heal()
        await wait_for(
            lambda: cluster.all_alive()
            and all(n.member(accused.address).incarnation >= 1 for n in cluster.nodes),  # type: ignore[union-attr]
            deadline_s=5.0,
        )
        assert accused.refutations >= 1
        assert State.DEAD not in verdicts
        await cluster.stop()

    simulate(main())


@pytest.mark.parametrize("seed", range(4))
def test_random_faults_then_quiet_converges(seed: int) -> None:
    """Property: after any seeded schedule of drops, delays and partitions, once the
    network is sound again every live node sees every other live node ALIVE."""

    async def main() -> None:
        cluster = Cluster(12, seed=seed, drop_rate=0.15)
        cluster.net.delay_s = (0.001, 0.04)
        rng = random.Random(seed)
        await cluster.start()
        for _ in range(4):
            addresses = [n.address for n in cluster.nodes]
            rng.shuffle(addresses)
            cut = rng.randrange(1, len(addresses))
            cluster.net.partition(addresses[:cut], addresses[cut:])
            await asyncio.sleep(rng.uniform(0.2, 3.0))
            cluster.net.heal()
            await asyncio.sleep(rng.uniform(0.2, 3.0))
        cluster.net.drop_rate = 0.0
        await wait_for(cluster.all_alive, deadline_s=15.0)
        await cluster.stop()

    simulate(main())


def test_graceful_leave_is_seen_as_left() -> None:
    async def main() -> None:
        cluster = Cluster(5, seed=5)
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=10.0)
        leaver = cluster.nodes[4]
        seen: list[State] = []
        for node in cluster.nodes[:4]:
            node.on_change(
                lambda m, _p: seen.append(m.state) if m.address == leaver.address else None
            )
        await leaver.leave()
        cluster.live.remove(leaver)
        took = await wait_for(
            lambda: all(cluster.states(n)[leaver.address] is State.LEFT for n in cluster.live),
            deadline_s=3.0,
        )
        assert took < 1.0
        assert seen and set(seen) == {State.LEFT}
        await leaver.stop()  # a second stop is harmless
        await cluster.stop()

    simulate(main())


def _body(sender: str, kind: str = "ping", **extra: Any) -> bytes:
    return json.dumps({"t": kind, "f": sender, **extra}).encode()


def test_bad_messages_are_dropped_counted_and_harmless() -> None:
    async def main() -> None:
        cluster = Cluster(3, seed=6)
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=10.0)
        target = cluster.nodes[0]
        attacker_address = _addr(1)  # a real member's endpoint sends the bad messages
        attacker = cluster.net.endpoint(attacker_address)
        signer = Signer([KEY])
        ping = {"to": target.address}
        good = signer.seal(_body(attacker_address, **ping))
        tampered = good[:-2] + b"X" + good[-1:]
        kill_member_2 = {"u": [[_addr(2), 99, int(State.DEAD), {}]]}
        bad = {
            "unknown_key": Signer([OTHER_KEY]).seal(_body(attacker_address, **ping)),
            "bad_mac": tampered,
            "truncated": good[: HEADER_BYTES - 3],
            "oversized": signer.seal(b" " * (2 << 20)),
            "malformed": signer.seal(b"{not json"),
            "nested": signer.seal(b"[" * 100_000),
            "types": signer.seal(_body(attacker_address, u=[[_addr(2), "1", 0, {}]], **ping)),
            "state": signer.seal(_body(attacker_address, u=[[_addr(2), 1, 9, {}]], **ping)),
            "spoofed_sender": signer.seal(_body(_addr(2), **kill_member_2, **ping)),
            "misdirected": signer.seal(_body(attacker_address, to=_addr(2))),
        }
        for name, data in bad.items():
            with pytest.raises(PeerUnreachable):
                await attacker.request(target.address, data, timeout_s=0.1)
            assert name  # each one above was refused
        counts = target.drop_counts()
        assert counts == {
            "unknown_key": 1, "bad_mac": 1, "truncated": 1, "oversized": 1,
            "malformed": 4, "spoofed_sender": 1, "misdirected": 1,
        }
        assert cluster.states(target)[_addr(2)] is State.ALIVE, "spoofed update not applied"
        reply = await attacker.request(target.address, good, timeout_s=0.1)
        assert json.loads(signer.open(reply))["t"] == "ack", "still serving"
        assert cluster.all_alive()
        await cluster.stop()

    simulate(main())


def test_rotated_node_accepts_messages_signed_with_the_old_key() -> None:
    async def main() -> None:
        # Mid-rotation: node 0 signs with the new key, the others accept both but
        # still sign with the old one. Everyone must keep seeing everyone.
        def keys(i: int) -> list[bytes]:
            return [OTHER_KEY, KEY] if i == 0 else [KEY, OTHER_KEY]

        cluster = Cluster(4, seed=7, keys=keys)
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=10.0)
        await asyncio.sleep(3.0)  # poll window, virtual time: three seconds of probing
        assert cluster.all_alive()
        assert all(not n.drop_counts() for n in cluster.nodes)

        # A node with [new, old] opens what an [old]-only node sends.
        old_only = cluster.net.endpoint(_addr(9))
        reply = await old_only.request(
            cluster.nodes[0].address,
            Signer([KEY]).seal(_body(_addr(9), to=cluster.nodes[0].address)),
            timeout_s=0.1,
        )
        assert json.loads(Signer([OTHER_KEY]).open(reply))["t"] == "ack"
        assert not cluster.nodes[0].drop_counts()
        await cluster.stop()

    simulate(main())


GC_SETTINGS = MembershipSettings(dead_member_gc_s=8.0, sync_interval_s=0.5)
"""Forgetting after 8 s; a sync every 0.5 s, so a node that still holds the member
(it heard of the death later) pushes it at nodes that have forgotten it."""


def _forgotten_everywhere(cluster: Cluster, address: str) -> bool:
    return all(node.member(address) is None for node in cluster.live)


async def _push_stale_sync(cluster: Cluster, gone: Member) -> None:
    """Node 0 sends node 1 a full table that still holds ``gone`` (a peer that has
    not forgotten it yet); node 1 must not take it back."""
    sender, receiver = cluster.live[0], cluster.live[1]
    table = [[m.address, m.incarnation, int(m.state), dict(m.meta)] for m in sender.members()]
    table.append([gone.address, gone.incarnation, int(gone.state), {}])
    sync = Signer([KEY]).seal(_body(sender.address, kind="sync", u=table))
    await cluster.net.endpoint(sender.address).request(receiver.address, sync, timeout_s=0.1)
    assert receiver.member(gone.address) is None, f"{gone.state.name} member brought back"


def test_dead_member_is_forgotten_everywhere_and_stays_forgotten() -> None:
    async def main() -> None:
        cluster = Cluster(6, seed=8, settings=GC_SETTINGS)
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=10.0)
        victim = cluster.nodes[3]
        forgotten: dict[str, list[str]] = {n.address: [] for n in cluster.nodes}
        for node in cluster.nodes:
            node.on_forget(forgotten[node.address].append)
        cluster.kill(victim)
        await wait_for(
            lambda: all(cluster.states(n)[victim.address] is State.DEAD for n in cluster.live),
            deadline_s=5.0,
        )
        dead = cluster.live[0].member(victim.address)
        assert dead is not None
        took = await wait_for(lambda: _forgotten_everywhere(cluster, victim.address),
                              deadline_s=20.0)
        # Each node forgets it dead_member_gc_s after it adopted DEAD, which every
        # node had done when the wait began (up to a detection spread earlier).
        assert GC_SETTINGS.dead_member_gc_s - 3.0 <= took <= GC_SETTINGS.dead_member_gc_s + 0.1
        changes: list[Member] = []
        for node in cluster.live:
            node.on_change(lambda m, _p: changes.append(m))
        await _push_stale_sync(cluster, dead)
        await asyncio.sleep(10 * GC_SETTINGS.sync_interval_s)  # poll window, virtual time
        assert _forgotten_everywhere(cluster, victim.address), "a sync brought it back"
        assert changes == []
        assert all(forgotten[n.address] == [victim.address] for n in cluster.live)
        assert cluster.all_alive(), "the living are not forgotten"
        await cluster.stop()

    simulate(main())


def test_left_member_is_forgotten_everywhere_and_stays_forgotten() -> None:
    async def main() -> None:
        cluster = Cluster(6, seed=9, settings=GC_SETTINGS)
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=10.0)
        leaver = cluster.nodes[5]
        await leaver.leave()
        cluster.live.remove(leaver)
        await wait_for(
            lambda: all(cluster.states(n)[leaver.address] is State.LEFT for n in cluster.live),
            deadline_s=3.0,
        )
        left = cluster.live[0].member(leaver.address)
        assert left is not None
        await wait_for(lambda: _forgotten_everywhere(cluster, leaver.address), deadline_s=20.0)
        await _push_stale_sync(cluster, left)
        await asyncio.sleep(10 * GC_SETTINGS.sync_interval_s)  # poll window, virtual time
        assert _forgotten_everywhere(cluster, leaver.address), "a sync brought it back"
        assert cluster.all_alive()
        await cluster.stop()

    simulate(main())


def test_forgotten_node_that_returns_is_taken_back() -> None:
    async def main() -> None:
        cluster = Cluster(4, seed=10, settings=GC_SETTINGS)
        await cluster.start()
        await wait_for(cluster.all_alive, deadline_s=10.0)
        victim = cluster.nodes[2]
        cluster.kill(victim)
        await wait_for(lambda: _forgotten_everywhere(cluster, victim.address), deadline_s=30.0)
        # The same address comes back as a fresh process (incarnation 0) and joins.
        await victim.stop()
        reborn = Membership(cluster.net.endpoint(victim.address), Signer([KEY]), GC_SETTINGS,
                            random.Random(99), meta={"node": "2"})
        reborn.start()
        cluster.nodes[2] = reborn
        cluster.live.append(reborn)
        assert await reborn.join([cluster.nodes[0].address])
        await wait_for(cluster.all_alive, deadline_s=5.0)
        await cluster.stop()

    simulate(main())
