"""Resources in, vmodels and models out: serving, rolling updates, deletes,
invalid specs, name conflicts, idempotent handlers, and orphans."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.kube.sync import OWNER
from agent.registry.spec import ModelSpec
from agent.registry.store import VModel, Write
from tests.agent.kube.apiserver import FakeApiServer
from tests.agent.kube.conftest import KubeNode, model, started, until

SPEC = {"modelFormat": {"name": "simple-string"}, "storage": {"uri": "builtin://simple-string"}}


def state(server: FakeApiServer, name: str, namespace: str = "default") -> str:
    return str(server.status("Model", namespace, name).get("state", ""))


async def test_a_model_is_served_by_its_name(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("greeter"))
    node = await started(make_node)
    active, target = node.target("greeter") or ("", "")
    assert active == target and active.startswith("greeter__")
    assert node.registry.is_auto_delete(active)
    assert await node.infer("greeter") == b"\x0a" + bytes([len(active)]) + active.encode()
    await until(lambda: state(apiserver, "greeter") == "Loaded", what="Loaded")
    status = apiserver.status("Model", "default", "greeter")
    assert (status["copies"], status["observedGeneration"]) == (1, 1)


async def test_a_spec_change_is_a_rolling_update(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    node = await started(make_node)
    old, _ = node.target("m") or ("", "")
    await node.infer("m")  # the old model is loaded and serving
    node.adapter.gate = asyncio.Event()  # new loads wait until the test says
    apiserver.update("Model", "default", "m", spec={**SPEC, "sizeHint": "1Ki"})
    await until(lambda: (node.target("m") or ("", ""))[1] != old, what="a new target")
    new = (node.target("m") or ("", ""))[1]
    assert node.registry.get(new) is not None and node.registry.get(old) is not None
    await until(lambda: state(apiserver, "m") == "Loading", what="Loading")
    answers = [await node.infer("m") for _ in range(20)]  # all answered, by the old model
    assert all(a.endswith(old.encode()) for a in answers)
    node.adapter.gate.set()
    await until(lambda: node.target("m") == (new, new), what="the switch")
    assert node.registry.get(old) is None  # the old model went with the switch
    assert (await node.infer("m")).endswith(new.encode())
    await until(lambda: state(apiserver, "m") == "Loaded"
                and apiserver.status("Model", "default", "m")["observedGeneration"] == 2,
                what="Loaded at generation 2")


async def test_deleting_the_resource_removes_its_vmodel_and_model(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    node = await started(make_node)
    model_id = (node.target("m") or ("", ""))[0]
    await node.infer("m")
    apiserver.delete("Model", "default", "m")
    await until(lambda: node.target("m") is None, what="vmodel deleted")
    assert node.registry.get(model_id) is None
    assert model_id not in node.inventory


async def test_an_invalid_spec_gets_a_status_naming_the_field(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("bad", uri="ftp://host/model"))
    node = await started(make_node)
    await until(lambda: state(apiserver, "bad") == "InvalidSpec", what="InvalidSpec")
    status = apiserver.status("Model", "default", "bad")
    assert status["lastFailure"]["message"].startswith("spec.storage.uri: ")
    assert status["conditions"][0]["status"] == "False"
    assert node.target("bad") is None and node.registry.count() == 0


async def test_an_invalid_update_keeps_the_previous_spec_serving(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    node = await started(make_node)
    before = node.target("m")
    apiserver.update("Model", "default", "m", spec={**SPEC, "sizeHint": "plenty"})
    await until(lambda: state(apiserver, "m") == "InvalidSpec", what="InvalidSpec")
    status = apiserver.status("Model", "default", "m")
    assert "spec.sizeHint" in status["lastFailure"]["message"]
    assert status["conditions"][0]["status"] == "True"  # still served
    assert node.target("m") == before
    assert await node.infer("m")
    apiserver.update("Model", "default", "m", spec={**SPEC, "sizeHint": "2Ki"})  # fixed
    await until(lambda: state(apiserver, "m") in ("Pending", "Loaded")
                and node.target("m") != before, what="valid again")


async def test_events_may_come_twice(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("m"))
    node = await started(make_node)
    writes: list[Write] = []
    node.registry.on_write(writes.extend)
    sync = node.kube.sync
    assert sync is not None
    obj = apiserver.get("Model", "default", "m")
    assert obj is not None
    kind = node.kube.watchers[0].kind
    for _ in range(3):
        await sync.upsert(kind, obj)
    newer = apiserver.update("Model", "default", "m", annotations={"note": "metadata only"})
    await until(lambda: int(node.kube.index.winners["m"].resource_version)
                >= int(newer["metadata"]["resourceVersion"]), what="the new version")
    await sync.upsert(kind, newer)
    assert writes == []  # nothing to write: the same spec, whatever the version
    await sync.delete(kind, newer)
    await sync.delete(kind, newer)
    assert node.target("m") is None


async def test_the_older_resource_keeps_a_name_both_namespaces_use(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    older = model("shared", namespace="b", uri="builtin://simple-string")
    older["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    newer = model("shared", namespace="a", sizeHint=2048)
    newer["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    apiserver.create(newer)  # listed first (namespace a), but newer
    apiserver.create(older)
    node = await started(make_node)
    served = (node.target("shared") or ("", ""))[0]
    spec = node.registry.get(served)
    assert spec is not None and spec.size_hint == 0  # namespace b's
    await until(lambda: state(apiserver, "shared", "a") == "FailedToLoad", what="conflict")
    loser = apiserver.status("Model", "a", "shared")
    assert loser["lastFailure"]["reason"] == "NameConflict"
    assert "b/shared" in loser["lastFailure"]["message"]
    assert state(apiserver, "shared", "b") == "Pending"
    apiserver.delete("Model", "b", "shared")  # the holder goes: the other takes over
    await until(lambda: (s := node.registry.get((node.target("shared") or ("", ""))[0]))
                is not None and s.size_hint == 2048, what="namespace a's model")
    await until(lambda: state(apiserver, "shared", "a") == "Pending", what="a served")


async def test_vmodels_whose_resource_is_gone_are_collected_after_the_first_list(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    node = make_node()
    spec = ModelSpec("gone__1234567890", "builtin://simple-string", "mlserver", "simple-string")
    await node.models.register(spec, auto_delete=True)
    node.registry.put_vmodel(VModel("gone", spec.model_id, spec.model_id, OWNER))
    mine = ModelSpec("api-made", "builtin://simple-string", "mlserver", "simple-string")
    await node.models.register(mine)
    node.registry.put_vmodel(VModel("by-hand", "api-made", "api-made", "someone"))
    apiserver.create(model("kept"))
    await node.start()
    await node.synced()
    assert node.target("gone") is None and node.registry.get(spec.model_id) is None
    assert node.target("by-hand") == ("api-made", "api-made")
    assert node.target("kept") is not None
