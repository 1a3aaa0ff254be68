"""Single-flight loads, LRU eviction, and the router, over a fake runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from agent.errors import (
    CapacityExhausted,
    InvalidSpec,
    LoadFailed,
    ModelNotFound,
    ModelTooLarge,
    VModelNotFound,
)
from agent.inventory import Inventory
from agent.loader import Loader
from agent.metrics import Metrics
from agent.models import ModelService, ModelState
from agent.registry.spec import ModelSpec
from agent.registry.store import ModelRegistry
from agent.resources.gpu import GpuInfo, ScriptedGpus
from agent.resources.placement import GpuShortfall
from agent.router import Router
from agent.vmodels import VModels, VModelState
from tests.fakes import FakeAdapter


class Node:
    def __init__(self, tmp: Path, budget: int) -> None:
        self.adapter = FakeAdapter(size=100)
        self.registry = ModelRegistry.open(tmp / "r.db")
        self.inventory = Inventory()
        self.loader = Loader(
            self.inventory, {"mlserver": self.adapter}, budget, 5.0,
            Metrics(CollectorRegistry()), sizes=self.registry, gpus=self.sample_gpus,
        )
        self.scripted = ScriptedGpus()
        self.models = ModelService(
            self.registry, self.inventory, self.loader, {"mlserver": self.adapter}
        )
        self.vmodels = VModels(self.registry, self.models, retry_interval_s=0.01)
        self.router = Router(self.registry, self.inventory, self.models, self.vmodels)

    async def sample_gpus(self) -> list[GpuInfo]:
        """NVML as scripted, with what our loaded GPU models use on top."""
        for gpu in range(len(self.scripted.gpus())):
            used = sum(m.size_bytes for _, m in self.inventory.on_gpus() if m.gpu == gpu)
            self.scripted.set_process_memory(gpu, 1, used)
        return self.scripted.gpus()

    async def add(self, *ids: str, size: int = 0) -> None:
        for model_id in ids:
            await self.models.register(
                ModelSpec(model_id, "builtin://simple-string", "mlserver", "simple-string", size)
            )

    async def infer(self, name: str, **kw: str) -> bytes:
        return await self.router.infer(b"\x0a" + bytes([len(name)]) + name.encode(), **kw)


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path, budget=300)
    yield n
    await n.vmodels.stop()
    n.registry.close()


async def test_first_request_loads(node: Node) -> None:
    await node.add("a")
    assert node.models.status("a").state is ModelState.NOT_LOADED
    assert await node.infer("a") == b"\x0a\x01a"
    assert node.models.status("a").state is ModelState.LOADED
    assert node.adapter.load_calls == ["a"]


async def test_concurrent_cold_requests_share_one_load(node: Node) -> None:
    await node.add("a")
    node.adapter.gate = asyncio.Event()
    calls = [asyncio.create_task(node.infer("a")) for _ in range(50)]
    await asyncio.sleep(0)  # poll: let every request reach the load
    assert node.models.status("a").state is ModelState.LOADING
    node.adapter.gate.set()
    assert len(await asyncio.gather(*calls)) == 50
    assert node.adapter.load_calls == ["a"]


async def test_lru_eviction_order(node: Node) -> None:
    await node.add("a", "b", "c", "d")
    for name in ("a", "b", "c"):
        await node.infer(name)
    await node.infer("a")  # a is now the most recent; b the least
    await node.infer("d")
    assert node.adapter.unload_calls == ["b"]
    assert sorted(node.inventory.ids()) == ["a", "c", "d"]
    assert node.inventory.used_bytes == 300


async def test_model_with_requests_in_flight_is_not_evicted(node: Node) -> None:
    await node.add("a", "b", "c", "d")
    for name in ("a", "b", "c"):
        await node.infer(name)
    held = node.inventory.get("a")
    assert held is not None
    held.in_flight = 1
    await node.infer("d")
    assert node.adapter.unload_calls == ["b"]  # a is older but busy
    for m in ("b", "c", "d"):
        if (lm := node.inventory.get(m)) is not None:
            lm.in_flight = 1
    await node.add("e")
    with pytest.raises(CapacityExhausted, match="in flight"):
        await node.infer("e")


async def test_measured_size_replaces_the_prediction(node: Node) -> None:
    await node.add("a", "b", "c")
    node.adapter.measured["a"] = 250  # predicted 100; the runtime measured more
    await node.infer("a")
    assert node.models.status("a").size_bytes == 250
    assert node.inventory.used_bytes == 250
    await node.infer("b")  # 250 + 100 > 300: "a" must go
    assert node.adapter.unload_calls == ["a"]
    await node.infer("c")
    assert node.inventory.used_bytes == 200


async def test_measured_size_is_remembered_for_the_next_load(node: Node) -> None:
    await node.add("a")
    node.adapter.measured["a"] = 40  # predicted 100
    await node.infer("a")
    node.loader.flush_sizes()
    assert node.registry.measured_size("a", "mlserver") == 40
    assert node.inventory.get("a").predicted_bytes == 100  # type: ignore[union-attr]
    await node.models.unload("a")
    del node.adapter.measured["a"]  # this time the runtime cannot tell
    await node.infer("a")
    assert node.models.status("a").size_bytes == 40
    await node.add("a", size=7)  # a new spec: the old measurement is void
    assert node.registry.measured_size("a", "mlserver") is None


async def add_gpu_models(node: Node, *ids: str, size: int) -> None:
    for model_id in ids:
        await node.models.register(ModelSpec(
            model_id, "builtin://simple-string", "mlserver", "simple-string", size, gpu=True
        ))


async def test_gpu_models_go_to_the_gpu_with_most_free_memory(node: Node) -> None:
    node.loader.budget_bytes = 10_000
    node.scripted.add_gpu(1000, "small")
    node.scripted.add_gpu(1000, "big")
    node.scripted.set_other_used(0, 600)  # someone else uses GPU 0
    await add_gpu_models(node, "g1", "g2", size=300)
    await node.infer("g1")
    assert node.adapter.gpus["g1"] == 1  # 1000 free beats 400
    await node.infer("g2")
    assert node.adapter.gpus["g2"] == 1  # 700 free still beats 400
    assert node.inventory.get("g2").gpu == 1  # type: ignore[union-attr]


async def test_full_gpu_evicts_its_least_recently_used_idle_model(node: Node) -> None:
    node.loader.budget_bytes = 10_000
    node.scripted.add_gpu(1000, "only")
    await add_gpu_models(node, "g1", "g2", "g3", "g4", size=400)
    await node.infer("g1")
    await node.infer("g2")
    await node.infer("g1")  # g2 is now the least recently used
    await node.infer("g3")  # 200 free: g2 must go
    assert node.adapter.unload_calls == ["g2"]
    assert {m for m, g in node.adapter.gpus.items() if g == 0} >= {"g1", "g3"}


async def test_no_gpu_that_can_fit_is_resource_exhausted(node: Node) -> None:
    node.loader.budget_bytes = 10_000
    await add_gpu_models(node, "g1", size=400)
    with pytest.raises(GpuShortfall, match="no GPU"):
        await node.infer("g1")
    node.scripted.add_gpu(300, "tiny")
    with pytest.raises(GpuShortfall, match="400") as raised:
        await node.infer("g1")
    assert raised.value.code.name == "RESOURCE_EXHAUSTED"
    assert node.models.status("g1").state is ModelState.LOADING_FAILED


async def test_gpu_model_on_a_runtime_without_gpus_is_refused(node: Node) -> None:
    node.adapter.gpu_capable = False
    with pytest.raises(InvalidSpec, match="does not place models on GPUs"):
        await add_gpu_models(node, "g1", size=1)


async def test_full_processes_evict_the_least_recently_used(node: Node) -> None:
    await node.add("a", "b", "c")
    node.adapter.max_loaded = 2  # the budget (300) has room; the processes do not
    await node.infer("a")
    await node.infer("b")
    await node.infer("a")  # b is now the least recently used
    await node.infer("c")
    assert node.adapter.unload_calls == ["b"]
    assert node.adapter.loaded == {"a", "c"}


async def test_model_bigger_than_budget(node: Node) -> None:
    await node.add("huge", size=301)
    with pytest.raises(ModelTooLarge, match="whole memory budget"):
        await node.infer("huge")


async def test_failed_load_is_reported_then_retried(node: Node) -> None:
    await node.add("flaky")
    node.adapter.fail["flaky"] = "artifact is corrupt"
    with pytest.raises(LoadFailed, match="corrupt"):
        await node.infer("flaky")
    status = node.models.status("flaky")
    assert status.state is ModelState.LOADING_FAILED and status.errors == ["artifact is corrupt"]
    del node.adapter.fail["flaky"]
    await node.infer("flaky")
    assert node.models.status("flaky").state is ModelState.LOADED


async def test_unknown_model(node: Node) -> None:
    with pytest.raises(ModelNotFound, match="'nope'"):
        await node.infer("nope")
    with pytest.raises(VModelNotFound):
        await node.infer("x", vmodel_id="nope")


async def test_reregister_replaces_and_unloads(node: Node) -> None:
    await node.add("a")
    await node.infer("a")
    await node.models.register(ModelSpec("a", "/elsewhere", "mlserver", "simple-string"))
    assert node.adapter.unload_calls == ["a"]
    assert node.models.status("a").state is ModelState.NOT_LOADED
    await node.infer("a")
    await node.models.register(ModelSpec("a", "/elsewhere", "mlserver", "simple-string"))
    assert node.adapter.unload_calls == ["a"]  # same spec: a no-op


async def test_runtime_crash_forgets_models_and_reloads(node: Node) -> None:
    await node.add("a")
    await node.infer("a")
    node.adapter.crash()
    assert "a" not in node.inventory
    await node.infer("a")
    assert node.adapter.load_calls == ["a", "a"]


async def test_runtime_lost_model_without_notice_is_reloaded(node: Node) -> None:
    await node.add("a")
    await node.infer("a")
    node.adapter.loaded.clear()  # it restarted; we have not heard yet
    assert await node.infer("a") == b"\x0a\x01a"


async def test_header_names_the_model(node: Node) -> None:
    await node.add("real")
    out = await node.infer("whatever", model_id="real")
    assert out == b"\x0a\x04real"  # the body was renamed for the runtime


async def test_vmodel_switches_only_when_target_is_loaded(node: Node) -> None:
    await node.add("v1", "v2")
    status = await node.vmodels.set("vm", "v1")
    assert status.state is VModelState.DEFINED and status.active == "v1"
    await node.infer("ignored", vmodel_id="vm")
    node.adapter.gate = asyncio.Event()
    status = await node.vmodels.set("vm", "v2")
    assert status.state is VModelState.TRANSITIONING
    assert node.vmodels.active_target("vm") == "v1"  # not yet: v2 is loading
    node.adapter.gate.set()
    await asyncio.wait_for(node.vmodels._transitions["vm"], 5)
    assert node.vmodels.active_target("vm") == "v2"
    assert await node.infer("vm") == b"\x0a\x02v2"  # the request's name may be the vmodel


async def test_vmodel_failed_target_retries(node: Node) -> None:
    await node.add("v1", "bad")
    await node.vmodels.set("vm", "v1")
    node.adapter.fail["bad"] = "no"
    await node.vmodels.set("vm", "bad")
    for _ in range(1000):
        if node.vmodels.status("vm").state is VModelState.TRANSITION_FAILED:
            break
        await asyncio.sleep(0.005)  # poll
    else:
        raise AssertionError("the vmodel never reported TRANSITION_FAILED")
    assert node.vmodels.active_target("vm") == "v1"
    del node.adapter.fail["bad"]
    await asyncio.wait_for(node.vmodels._transitions["vm"], 5)
    assert node.vmodels.status("vm").state is VModelState.DEFINED


async def test_vmodel_force_and_auto_delete(node: Node) -> None:
    await node.add("v1")
    await node.vmodels.set("vm", "v1")
    spec = ModelSpec("v2", "builtin://simple-string", "mlserver", "simple-string")
    await node.vmodels.set("vm", "v2", spec=spec, auto_delete=True, force=True)
    assert node.vmodels.active_target("vm") == "v2"
    spec3 = ModelSpec("v3", "builtin://simple-string", "mlserver", "simple-string")
    await node.vmodels.set("vm", "v3", spec=spec3, auto_delete=True, sync=True)
    assert node.vmodels.active_target("vm") == "v3"
    assert node.registry.get("v2") is None  # superseded auto-delete target is gone
    assert node.registry.get("v1") is not None  # registered by hand: kept
    await node.vmodels.delete("vm")
    assert node.registry.get("v3") is None
