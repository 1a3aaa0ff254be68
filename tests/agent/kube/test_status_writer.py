"""The status writer: coalesced, written once per change, by exactly one
member, with backoff on 409, 429 (Retry-After) and 5xx."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable

import pytest

from agent.kube.ownership import Ownership
from agent.kube.status_writer import StatusWriter
from tests.agent.kube.apiserver import FakeApiServer, Fault
from tests.agent.kube.conftest import KubeNode, model, started, until

MANUAL = 3600.0  # a status interval the test never waits out: it calls flush() itself


def writer(node: KubeNode) -> StatusWriter:
    assert node.kube.writer is not None
    return node.kube.writer


async def rounds(*nodes: KubeNode, more: int = 3) -> None:
    """Wait until every node's status writer has done ``more`` rounds."""
    start = [writer(n).rounds for n in nodes]
    await until(lambda: all(writer(n).rounds >= s + more for n, s in zip(nodes, start,
                                                                         strict=True)),
                what=f"{more} status rounds")


def patches_of(server: FakeApiServer, name: str) -> list[float]:
    return [r.at for r in server.patches() if r.path.endswith(f"/{name}/status")]


async def test_many_changes_make_one_write_and_no_change_none(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    node = await started(make_node, status_interval_s=MANUAL)
    assert await writer(node).flush() == 1  # Pending
    model_id = (node.target("m") or ("", ""))[0]
    for _ in range(5):  # load, unload, load ...: each a change of state
        await node.infer("m")
        await node.models.unload(model_id)
    await node.infer("m")
    assert await writer(node).flush() == 1  # one write: Loaded
    assert apiserver.status("Model", "default", "m")["state"] == "Loaded"
    await until(lambda: int(node.kube.index.winners["m"].resource_version)
                == apiserver.resource_version, what="our write's own event")
    writer(node).mark("m")
    assert await writer(node).flush() == 0  # the same status is not written again
    assert len(patches_of(apiserver, "m")) == 2


async def test_writes_of_one_resource_are_an_interval_apart(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    interval = 0.3
    node = await started(make_node, status_interval_s=interval)
    model_id = (node.target("m") or ("", ""))[0]
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # a change every ~20 ms for 2 s (a workload, not a wait)
        await node.infer("m")
        await asyncio.sleep(0.01)  # pace the changes
        await node.models.unload(model_id)
        await asyncio.sleep(0.01)  # pace the changes
    times = patches_of(apiserver, "m")
    assert 2 <= len(times) <= 2.0 / interval + 2
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= interval * 0.9


async def test_a_stale_write_gets_409_and_is_retried_once_the_watch_catches_up(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    node = await started(make_node, status_interval_s=MANUAL, backoff_initial_s=0.05)
    assert await writer(node).flush() == 1
    claim = node.kube.index.winners["m"]
    (watcher,) = node.kube.watchers
    await until(lambda: watcher.resource_version == str(apiserver.resource_version),
                what="the watch has handled our write's own event")
    claim.resource_version = "1001"  # as if the watch lagged behind a change
    await node.infer("m")
    assert await writer(node).flush() == 0
    assert writer(node).conflicts == 1
    assert apiserver.status("Model", "default", "m")["state"] == "Pending"  # not written
    apiserver.update("Model", "default", "m", annotations={"touched": "yes"})
    await until(lambda: int(claim.resource_version) == apiserver.resource_version,
                what="the watch brings the new version")
    deadline = time.monotonic() + 10
    while await writer(node).flush() == 0:  # nothing until the conflict's backoff is over
        assert time.monotonic() < deadline, "never written"
        await asyncio.sleep(0.02)  # poll
    assert apiserver.status("Model", "default", "m")["state"] == "Loaded"
    assert writer(node).conflicts == 1


async def test_429_pauses_writes_for_its_retry_after(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.faults.append(Fault("PATCH", lambda r: True, 429, {"Retry-After": "1"}))
    apiserver.create(model("a"))
    await started(make_node, status_interval_s=0.05, backoff_initial_s=0.05)
    await until(lambda: apiserver.patches(), what="the refused write")
    apiserver.create(model("b"))  # another resource's write waits too
    await until(lambda: apiserver.status("Model", "default", "a")
                and apiserver.status("Model", "default", "b"), what="both written")
    refused, *after = apiserver.patches()
    assert min(r.at for r in after) - refused.at >= 1.0  # nothing tried during Retry-After


async def test_5xx_backs_off_and_writes_in_the_end(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    apiserver.faults.append(Fault("PATCH", lambda r: True, 500, times=3))
    await started(make_node, status_interval_s=0.05, backoff_initial_s=0.1, backoff_max_s=1.0)
    await until(lambda: apiserver.status("Model", "default", "m"), what="written")
    times = [r.at for r in apiserver.patches()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4
    assert gaps[1] >= gaps[0] * 1.5  # the waits grow


@pytest.mark.parametrize("count", [2, 3])
async def test_each_resource_is_written_by_exactly_one_member(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode], count: int
) -> None:
    names = [f"node-{i}" for i in range(count)]
    members = list(names)
    nodes = [make_node(name, members=lambda: members) for name in names]
    resources = [f"m{i}" for i in range(12)]
    for r in resources:
        apiserver.create(model(r))
    for node in nodes:
        await node.start()
    for node in nodes:
        await node.synced()
    owner = Ownership(names[0], lambda: members)
    owner.refresh()
    expected = {r: owner.owner_of(r)[0] for r in resources}
    assert len(set(expected.values())) == count  # every member owns some
    await until(lambda: all(apiserver.status("Model", "default", r) for r in resources),
                what="every status")
    await rounds(*nodes)  # more rounds: no one else writes them
    writers = Counter()
    for request in apiserver.patches():
        name = request.path.split("/")[-2]
        writers[(name, request.token)] += 1
        assert request.token == f"token-{expected[name]}", (name, request.token)
    assert {name for name, _ in writers} == set(resources)
    for node in nodes:  # only the owner registered it (the others learn it by gossip)
        mine = {r for r in resources if expected[r] == node.name}
        assert {r for r in resources if node.target(r)} == mine
    # a member dies: its resources go to the others, who take them up
    gone = names[-1]
    await nodes[-1].stop()
    members.remove(gone)
    moved = [r for r in resources if expected[r] == gone]
    owner.refresh()
    assert moved
    for r in moved:
        heir = next(n for n in nodes if n.name == owner.owner_of(r)[0])
        await until(lambda heir=heir, r=r: heir.target(r), what=f"{r} taken up")
        await heir.infer(r)
        await until(lambda r=r: apiserver.status("Model", "default", r).get("state")
                    == "Loaded", what=f"{r} Loaded")
        last = [p for p in apiserver.patches() if p.path.endswith(f"/{r}/status")][-1]
        assert last.token == f"token-{heir.name}"


async def test_a_starting_member_acts_only_once_it_sees_a_peer_or_settles(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    members = ["node-a"]  # the cluster is on, but no peer has answered yet
    node = await started(make_node, members=lambda: members, settle_s=600.0)
    await rounds(node)  # several rounds: it has written nothing
    assert node.target("m") is None and apiserver.patches() == []
    members.append("node-b")  # joined: names are shared out, and this node acts for its own
    owner = Ownership("node-a", lambda: members)
    owner.refresh()
    names = [f"n{i}" for i in range(8)]
    for name in names:
        apiserver.create(model(name))
    mine = [n for n in ["m", *names] if owner.owner_of(n)[0] == "node-a"]
    assert mine
    await until(lambda: all(node.target(n) for n in mine), what="its names registered")
    await until(lambda: all(apiserver.status("Model", "default", n) for n in mine),
                what="its statuses")
    assert all(node.target(n) is None for n in ["m", *names] if n not in mine)


@pytest.mark.parametrize(("count", "how"), [(10, "get"), (300, "list")])
async def test_names_gained_without_their_registry_entries_are_read_again(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode], count: int, how: str
) -> None:
    names = [f"m{i}" for i in range(count)]
    for name in names:
        apiserver.create(model(name))
    members = ["node-a"]  # no peer yet: nothing is done for any name
    node = await started(make_node, members=lambda: members, settle_s=600.0)
    assert node.registry.count() == 0
    members.append("node-b")  # a peer, which has registered nothing either (a fresh cluster)
    owner = Ownership("node-a", lambda: members)
    owner.refresh()
    mine = [n for n in names if owner.owner_of(n)[0] == "node-a"]
    await until(lambda: all(node.target(n) for n in mine), what="its names registered")
    gets = [r for r in apiserver.requests if r.method == "GET" and not r.watch
            and not r.query.get("limit")]
    lists = apiserver.lists("models")
    if how == "get":  # a few: read one by one
        assert (len(gets), len(lists)) == (len(mine), 1)
    else:  # many: one list again
        assert (len(gets), len(lists)) == (0, 2)
