"""``ModelService`` registration checks: what can be known at registration is
refused then, with the fix in the message; peers' writes are stored as given.

The runtimes are real adapters, never started: what they serve is known
without starting them."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from adapters.base import (
    RuntimeAdapter,
    RuntimeOptions,
    missing_package,
    runtimes_serving,
    served_types,
)
from adapters.mlserver import model_settings
from adapters.mlserver.adapter import MLServerAdapter
from adapters.triton.adapter import TritonAdapter
from agent.artifacts import ArtifactStore
from agent.cache.node import NodeCache
from agent.errors import Code, InvalidSpec, InvalidStorageUri, PackageMissing
from agent.inventory import Inventory
from agent.loader import Loader
from agent.metrics import Metrics
from agent.models import ModelService
from agent.registry.spec import ModelSpec
from agent.registry.store import ModelRegistry
from agent.storage.pull import PullerSettings


class Node:
    def __init__(self, tmp: Path, runtimes: tuple[str, ...] = ("mlserver",)) -> None:
        self.roots = tmp / "models"
        self.roots.mkdir(parents=True)
        options = RuntimeOptions(work_dir=tmp / "runtimes")
        kinds: dict[str, type[RuntimeAdapter]] = {
            "mlserver": MLServerAdapter, "triton": TritonAdapter,
        }
        self.adapters = {kind: kinds[kind](options) for kind in runtimes}
        adapters: dict[str, RuntimeAdapter] = dict(self.adapters)
        metrics = Metrics(CollectorRegistry())
        self.registry = ModelRegistry.open(tmp / "registry.db")
        self.cache = NodeCache(tmp / "cache", 10**9, owner="test")
        artifacts = ArtifactStore(self.cache, tmp / "work", PullerSettings, metrics,
                                  (self.roots,))
        inventory = Inventory()
        loader = Loader(inventory, adapters, 10**9, 5.0, metrics, artifacts)
        self.models = ModelService(self.registry, inventory, loader, adapters, artifacts)

    def close(self) -> None:
        self.registry.close()
        self.cache.close()


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path)
    yield n
    await n.models.stop()
    n.close()


def spec(uri: str = "builtin://simple-string", model_type: str = "simple-string",
         runtime: str = "mlserver", model_id: str = "m") -> ModelSpec:
    return ModelSpec(model_id, uri, runtime, model_type)


# --- local paths -----------------------------------------------------------------


async def test_a_missing_path_inside_the_roots_is_invalid_naming_it(node: Node) -> None:
    missing = node.roots / "nope" / "model.joblib"
    for uri in (str(missing), f"file://{missing}"):
        with pytest.raises(InvalidStorageUri) as raised:
            await node.models.register(spec(uri, "sklearn"))
        assert raised.value.code is Code.INVALID_ARGUMENT
        assert raised.value.message == f"storage uri {uri!r}: {missing} does not exist"
    assert node.registry.get("m") is None


async def test_an_existing_path_inside_the_roots_registers(node: Node) -> None:
    (node.roots / "model.joblib").write_bytes(b"x")
    await node.models.register(spec(str(node.roots / "model.joblib"), "sklearn"))
    assert node.registry.get("m") is not None


async def test_outside_the_roots_existence_is_not_told(node: Node, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("no")
    messages = []
    for name in ("secret", "no-such-file"):
        with pytest.raises(InvalidStorageUri) as raised:
            await node.models.register(spec(str(tmp_path / name), "sklearn"))
        assert "does not exist" not in raised.value.message
        messages.append(raised.value.message.replace(name, "NAME"))
    assert messages[0] == messages[1]
    assert "outside the permitted roots" in messages[0]


# --- model types and runtimes ----------------------------------------------------


def test_each_runtimes_types_are_known_without_starting_it() -> None:
    assert {"simple-string", "sklearn", "xgboost", "lightgbm", "mlflow",
            "mlserver"} == served_types("mlserver")
    assert {"pytorch", "onnx", "python", "triton"} <= served_types("triton")
    assert runtimes_serving("pytorch") == ["triton"]
    assert runtimes_serving("simple-string") == ["mlserver", "triton"]
    assert runtimes_serving("nope") == []


def test_missing_package_is_found_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(model_settings.IMPLEMENTATIONS, "fake", "meshlet_no_such_pkg.Model")
    assert missing_package("mlserver", "fake") == "meshlet-no-such-pkg"
    assert missing_package("mlserver", "simple-string") is None  # in meshlet itself
    assert missing_package("mlserver", "mlserver") is None  # the artifact names it
    assert missing_package("triton", "pytorch") is None  # backends: checked on start


async def test_a_type_whose_package_is_missing_is_failed_precondition(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(model_settings.IMPLEMENTATIONS, "fake", "meshlet_no_such_pkg.Model")
    with pytest.raises(PackageMissing) as raised:
        await node.models.register(spec(model_type="fake"))
    assert raised.value.code is Code.FAILED_PRECONDITION
    assert raised.value.package == "meshlet-no-such-pkg"
    assert raised.value.message == (
        "model type 'fake' needs the package 'meshlet-no-such-pkg', which is not installed "
        "for runtime 'mlserver' on this node: pip install meshlet-no-such-pkg"
    )
    assert node.registry.get("m") is None


@pytest.mark.skipif(importlib.util.find_spec("mlserver_xgboost") is not None,
                    reason="mlserver-xgboost is installed here")
async def test_xgboost_without_mlserver_xgboost(node: Node) -> None:
    with pytest.raises(PackageMissing, match=r"pip install mlserver-xgboost$"):
        await node.models.register(spec(model_type="xgboost"))


async def test_a_type_another_runtime_serves_names_the_fix(tmp_path: Path) -> None:
    for runtimes in (("mlserver",), ("mlserver", "triton"), ("triton",)):
        node = Node(tmp_path / "-".join(runtimes), runtimes)
        try:
            with pytest.raises(InvalidSpec) as raised:
                await node.models.register(spec(model_type="pytorch"))
            assert raised.value.message == (
                "model type 'pytorch' is served by runtime 'triton', not 'mlserver': register "
                'it with --runtime triton (ModelMesh API: modelInfo.key {"runtime": "triton"})'
            )
            with pytest.raises(InvalidSpec, match="--runtime mlserver "):
                await node.models.register(spec(model_type="sklearn", runtime="triton"))
        finally:
            await node.models.stop()
            node.close()


async def test_a_type_its_runtime_here_lacks_the_backend_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path, ("triton",))
    monkeypatch.setattr(node.adapters["triton"], "supports", lambda model_type: False)
    try:
        with pytest.raises(InvalidSpec) as raised:
            await node.models.register(spec(model_type="onnx", runtime="triton"))
        assert raised.value.message == (
            "model type 'onnx' cannot be served by runtime 'triton' on this node: the runtime "
            "lacks its backend"
        )
    finally:
        await node.models.stop()
        node.close()


async def test_a_type_no_runtime_serves_lists_the_runtimes_types(node: Node) -> None:
    with pytest.raises(InvalidSpec) as raised:
        await node.models.register(spec(model_type="sklaern"))
    assert raised.value.message == (
        "model type 'sklaern' cannot be served by runtime 'mlserver' (its types: lightgbm, "
        "mlflow, mlserver, simple-string, sklearn, xgboost)"
    )


async def test_bulk_registration_is_checked_too(node: Node) -> None:
    with pytest.raises(InvalidSpec, match="--runtime triton"):
        await node.models.register_many([spec(model_id="ok"),
                                         spec(model_type="pytorch", model_id="bad")])


async def test_peers_writes_are_not_refused_for_local_reasons(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path may exist on the writer's node only, the package be installed
    there, the runtime run there: a replicated registration is stored as is."""
    monkeypatch.setitem(model_settings.IMPLEMENTATIONS, "fake", "meshlet_no_such_pkg.Model")
    remote = [
        spec(str(node.roots / "only-on-the-writer"), "sklearn", model_id="path"),
        spec(model_type="fake", model_id="package"),
        spec(model_type="pytorch", model_id="runtime"),
    ]
    for s in remote:
        await node.models.apply_remote(s.model_id, s, auto_delete=False)
        assert node.registry.get(s.model_id) == s
