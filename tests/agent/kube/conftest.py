"""Fixtures for the Kubernetes integration: the fake API server, and agents'
parts (registry, loader, vmodels over a fake runtime) with the real
``KubeService`` and the real ``kubernetes`` client pointed at it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from prometheus_client import CollectorRegistry

from agent.inventory import Inventory
from agent.kube.config import KubeSettings
from agent.kube.service import ClusterView, KubeService
from agent.loader import Loader
from agent.metrics import Metrics
from agent.models import ModelService
from agent.registry.store import ModelRegistry
from agent.router import Router
from agent.vmodels import VModels
from tests.agent.kube.apiserver import FakeApiServer
from tests.conftest import TIME_SCALE
from tests.fakes import FakeAdapter

EXAMPLES = Path(__file__).parent / "examples"


def example(name: str) -> list[dict[str, Any]]:
    """The resources of ``examples/<name>.yaml``."""
    return [d for d in yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text()) if d]


def model(name: str, namespace: str = "default", fmt: str = "simple-string",
          uri: str = "builtin://simple-string", **spec: Any) -> dict[str, Any]:
    """A meshlet ``Model`` object as a user writes it."""
    return {
        "apiVersion": "meshlet.io/v1alpha1", "kind": "Model",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"modelFormat": {"name": fmt}, "storage": {"uri": uri}, **spec},
    }


async def until(condition: Callable[[], object], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll ``condition`` on the loop until truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout_s * TIME_SCALE
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)  # poll


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


class KubeNode:
    """One agent's model parts over a fake runtime, and its Kubernetes integration."""

    def __init__(
        self, tmp: Path, server: FakeApiServer, name: str = "node-a",
        members: Callable[[], Iterable[str]] | None = None, **settings: Any,
    ) -> None:
        self.name = name
        self.adapter = FakeAdapter(size=100)
        self.registry = ModelRegistry.open(tmp / f"{name}.sqlite3")
        self.inventory = Inventory()
        self.loader = Loader(self.inventory, {"mlserver": self.adapter}, 1 << 30, 5.0,
                             Metrics(CollectorRegistry()), sizes=self.registry)
        self.models = ModelService(self.registry, self.inventory, self.loader,
                                   {"mlserver": self.adapter})
        self.vmodels = VModels(self.registry, self.models, retry_interval_s=0.05)
        self.router = Router(self.registry, self.inventory, self.models, self.vmodels)
        defaults: dict[str, Any] = {
            "mode": "on", "kubeconfig": server.write_kubeconfig(tmp / f"{name}.kubeconfig",
                                                                token=f"token-{name}"),
            "status_interval_s": 0.05, "watch_timeout_s": 30.0, "request_timeout_s": 10.0,
            "backoff_initial_s": 0.05, "backoff_max_s": 0.4, "settle_s": 0.0,
        }
        self.settings = KubeSettings(**{**defaults, **settings})
        view = ClusterView(self_id=name, location=lambda: name, members=members)
        self.kube = KubeService(self.settings, self.registry, self.models, self.vmodels,
                                self.inventory, view, failures=lambda: self.loader.failures)
        self.token = f"token-{name}"
        self._stopped = False

    async def start(self) -> KubeNode:
        await self.kube.start()
        return self

    async def stop(self) -> None:
        """Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        await self.kube.stop()
        await self.vmodels.stop()
        await self.models.stop()
        self.registry.close()

    async def synced(self, timeout_s: float = 20.0) -> None:
        assert self.kube.sync is not None
        await asyncio.wait_for(self.kube.sync.synced.wait(), timeout_s * TIME_SCALE)

    async def infer(self, name: str) -> bytes:
        """A request naming ``name`` (the fake runtime echoes the request back)."""
        return await self.router.infer(b"\x0a" + bytes([len(name)]) + name.encode())

    def target(self, vmodel_id: str) -> tuple[str, str] | None:
        vmodel = self.registry.get_vmodel(vmodel_id)
        return (vmodel.active, vmodel.target) if vmodel else None


@pytest_asyncio.fixture
async def make_node(tmp_path: Path, apiserver: FakeApiServer
                    ) -> AsyncIterator[Callable[..., KubeNode]]:
    """Build nodes (``await node.start()``); every one is stopped at teardown."""
    nodes: list[KubeNode] = []

    def make(name: str = "node-a", **kw: Any) -> KubeNode:
        node = KubeNode(tmp_path, apiserver, name, **kw)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.stop()


async def started(make_node: Callable[..., KubeNode], **kw: object) -> KubeNode:
    """A node built by the ``make_node`` fixture, started, with its first list done."""
    node = make_node(**kw)
    await node.start()
    await node.synced()
    return node
