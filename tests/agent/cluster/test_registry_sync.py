"""The registry replicated (``RegistrySync``): SQLite rows on one side, the replica on the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cluster.hlc import HybridClock, Timestamp
from agent.cluster.registry_sync import RegistrySync
from agent.cluster.replica import Entry, Replica, push_pull
from agent.registry.spec import ModelSpec
from agent.registry.store import ModelRegistry, VModel, model_value

T0 = 1_700_000_000_000
DAY_MS = 24 * 3600 * 1000


class Wall:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


class Node:
    """One node's registry (SQLite under ``tmp``), replica and sync; what it
    publishes and what it applies are recorded."""

    def __init__(self, tmp: Path, name: str, wall: Wall, ttl_s: float = 7 * 86400.0) -> None:
        self.tmp, self.name, self.wall, self.ttl_s = tmp, name, wall, ttl_s
        self.published: list[Entry] = []
        self.applied: list[tuple[str, ModelSpec | None, bool]] = []
        self.registry = ModelRegistry.open(tmp / f"{name}.db")
        self.sync = self._sync()
        self.started = self.sync.load()

    def _sync(self) -> RegistrySync:
        replica = Replica(HybridClock(self.name, self.wall), tombstone_ttl_s=self.ttl_s)
        sync = RegistrySync(self.registry, replica, self.apply_model)
        sync.publish = self.published.extend
        return sync

    async def apply_model(self, model_id: str, spec: ModelSpec | None, auto: bool) -> None:
        """What ``ModelService.apply_remote`` does with the registry."""
        self.applied.append((model_id, spec, auto))
        if spec is None:
            self.registry.delete(model_id, notify=False)
        else:
            self.registry.put(spec, auto, notify=False)

    def restart(self) -> None:
        self.registry.close()
        self.registry = ModelRegistry.open(self.tmp / f"{self.name}.db")
        self.published = []
        self.sync = self._sync()
        self.started = self.sync.load()

    def close(self) -> None:
        self.registry.close()


def spec(model_id: str, uri: str = "builtin://simple-string") -> ModelSpec:
    return ModelSpec(model_id, uri, "mlserver", "simple-string")


async def exchange(a: Node, b: Node) -> None:
    """One anti-entropy exchange, and what changed made real on each side."""
    before_a = {e.key: e for e in a.sync.replica.entries()}
    before_b = {e.key: e for e in b.sync.replica.entries()}
    push_pull(a.sync.replica, b.sync.replica)
    for node, before in ((a, before_a), (b, before_b)):
        changed = [e for e in node.sync.replica.entries() if before.get(e.key) is not e]
        await node.sync.apply(changed)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    wall = Wall()
    made: list[Node] = []

    def make(name: str, **kw: float) -> Node:
        node = Node(tmp_path, name, wall, **kw)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def test_a_local_write_is_stamped_stored_and_published(nodes: Callable[..., Node]) -> None:
    a = nodes("a")
    a.registry.put(spec("m1"))
    assert [e.key for e in a.published] == ["model/m1"]
    assert a.sync.replica.get("model/m1") == model_value(spec("m1"))
    assert [key for key, _, _ in a.registry.repl_rows()] == ["model/m1"]
    a.registry.delete("m1")
    assert a.published[-1].key == "model/m1" and a.published[-1].deleted
    assert a.sync.replica.get("model/m1") is None
    assert [value for _, _, value in a.registry.repl_rows()] == [None]  # the tombstone


def test_a_write_without_notify_is_not_published(nodes: Callable[..., Node]) -> None:
    a = nodes("a")
    a.registry.put(spec("m1"), notify=False)
    a.registry.put_vmodel(VModel("v", "m1", "m1"), notify=False)
    assert a.published == []


def test_a_peers_model_and_vmodel_are_made_real_without_an_echo(
    nodes: Callable[..., Node],
) -> None:
    a, b = nodes("a"), nodes("b")
    a.registry.put(spec("m1"), auto_delete=True)
    a.registry.put_vmodel(VModel("v", "m1", "m1", owner="team"))
    asyncio.run(exchange(a, b))
    assert b.applied == [("m1", spec("m1"), True)]
    assert b.registry.get("m1") == spec("m1")
    assert b.registry.get_vmodel("v") == VModel("v", "m1", "m1", owner="team")
    assert b.published == []  # applied with notify=False: nothing goes back out
    assert {k for k, _, _ in b.registry.repl_rows()} == {"model/m1", "vmodel/v"}


def test_a_peers_delete_removes_the_model_and_the_vmodel(nodes: Callable[..., Node]) -> None:
    a, b = nodes("a"), nodes("b")
    a.registry.put(spec("m1"))
    a.registry.put_vmodel(VModel("v", "m1", "m1"))
    asyncio.run(exchange(a, b))
    a.wall.ms += 1
    a.registry.delete_vmodel("v")
    a.registry.delete("m1")
    asyncio.run(exchange(a, b))
    assert b.applied[-1] == ("m1", None, False)
    assert b.registry.get("m1") is None
    assert b.registry.get_vmodel("v") is None


def test_a_malformed_entry_from_a_peer_is_ignored(
    nodes: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    b = nodes("b")
    bad = Entry("model/x", {"uri": "builtin://simple-string"}, Timestamp(T0, 0, "a"))
    good = Entry("model/y", model_value(spec("y")), Timestamp(T0, 1, "a"))
    changed = b.sync.replica.apply([bad, good])
    asyncio.run(b.sync.apply(changed))
    assert b.registry.get("x") is None
    assert b.registry.get("y") == spec("y")
    assert "malformed entry model/x" in caplog.text


def test_a_restart_keeps_the_stamps_and_writes_after_it_are_newer(
    nodes: Callable[..., Node],
) -> None:
    a = nodes("a")
    a.registry.put(spec("m1"))
    before = a.sync.replica.entry("model/m1")
    assert before is not None
    a.wall.ms -= 60_000  # the clock steps back a minute across the restart
    a.restart()
    assert a.started == []  # registry and replica agree: nothing to stamp
    assert a.sync.replica.entry("model/m1") == before
    a.registry.put(spec("m1", "builtin://other"))
    after = a.sync.replica.entry("model/m1")
    assert after is not None and after.stamp > before.stamp


def test_start_reconciles_rows_written_without_the_replica(nodes: Callable[..., Node]) -> None:
    """A crash between the SQLite write and the replica write, either way round:
    the registry rows are this node's truth."""
    a = nodes("a")
    a.registry.put(spec("kept"))
    a.registry.put(spec("gone"))
    a.registry.delete("gone", notify=False)  # the registry lost it, the replica did not
    a.registry.put(spec("new"), notify=False)  # the registry has it, the replica does not
    a.restart()
    assert sorted((e.key, e.deleted) for e in a.started) == [
        ("model/gone", True), ("model/new", False),
    ]
    assert dict(a.sync.replica.items()) == {
        "model/kept": model_value(spec("kept")), "model/new": model_value(spec("new")),
    }


def test_a_node_back_with_a_deleted_model_loses_it_to_the_tombstone(
    nodes: Callable[..., Node],
) -> None:
    a, b = nodes("a"), nodes("b")
    a.registry.put(spec("m1"))
    asyncio.run(exchange(a, b))
    b.registry.close()  # b is away...
    a.wall.ms += 1_000
    a.registry.delete("m1")  # ...while the model is deleted
    b.restart()  # b comes back holding m1 with its old stamp
    assert b.registry.get("m1") == spec("m1")
    asyncio.run(exchange(a, b))
    assert b.registry.get("m1") is None
    assert a.registry.get("m1") is None  # and a does not get it back


def test_gc_drops_expired_tombstones_from_disk_too(nodes: Callable[..., Node]) -> None:
    a = nodes("a", ttl_s=60.0)
    a.registry.put(spec("m1"))
    a.registry.put(spec("m2"))
    a.registry.delete("m1")
    assert a.sync.gc() == 0  # not expired yet
    a.wall.ms += 61_000
    assert a.sync.gc() == 1
    assert [k for k, _, _ in a.registry.repl_rows()] == ["model/m2"]
    a.restart()
    assert a.sync.replica.entry("model/m1") is None
    assert a.sync.replica.get("model/m2") == model_value(spec("m2"))


def test_many_nodes_converge_on_the_same_registry(nodes: Callable[..., Node]) -> None:
    group = [nodes(f"n{i}") for i in range(4)]
    for i, node in enumerate(group):
        node.wall.ms += 1
        node.registry.put(spec("shared", f"builtin://from-{i}"))
        node.registry.put(spec(f"own-{i}"))
    # Not held on n3 yet: still a delete, later than the put on its way.
    group[3].registry.delete("own-0")
    group[0].wall.ms += DAY_MS // 1000
    group[0].registry.delete("own-1")

    async def rounds() -> None:
        for _ in range(2):
            for x in group:
                for y in group:
                    if x is not y:
                        await exchange(x, y)

    asyncio.run(rounds())
    ids = [sorted(n.registry.iter_ids()) for n in group]
    assert ids == [["own-2", "own-3", "shared"]] * 4
    shared = [n.registry.get("shared") for n in group]
    assert shared == [spec("shared", "builtin://from-3")] * 4  # the last writer wins
