"""Builds one agent from its settings and runs it; the only place parts meet.

Start order: data-dir lock and a check that the listening ports are free
(``agent.datadir``: a second agent on the same dir or port exits at once,
touching nothing) -> registry -> runtimes -> node cache -> resource monitor (its first
sample sizes the default memory budget) -> loader/router/services -> gRPC and
HTTP listeners -> cluster (peer port, membership, joining the seeds) -> demo
registrations -> resumed vmodel transitions -> Kubernetes watchers (``agent.kube``,
when Kubernetes is on).
Stop order (each step bounded): not ready -> stop the watchers -> leave the cluster -> stop
accepting and drain in-flight requests (``shutdown_grace_s``) -> background
work -> runtimes (SIGTERM, grace, SIGKILL) -> resource monitor -> HTTP ->
registry -> node cache -> data-dir lock.
``stop`` is safe to call twice.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from adapters.base import RuntimeAdapter, adapter_class
from agent.api.cache import SERVICE as CACHE_SERVICE
from agent.api.cache import CacheService
from agent.api.inference import SERVICE as INFERENCE_SERVICE
from agent.api.inference import InferenceService
from agent.api.mmesh import ModelMeshService
from agent.api.node import SERVICE as NODE_SERVICE
from agent.api.node import NodeService
from agent.artifacts import ArtifactStore
from agent.cache.node import NodeCache
from agent.cluster.membership import State
from agent.cluster.peer import ClusterNode, LocalNode
from agent.cluster.routing import MODEL_KEY, NodeSummary
from agent.config import Settings
from agent.datadir import DataDirLock, StartupError, check_ports, port_in_use
from agent.demo import demo_specs
from agent.http import HttpServer
from agent.inventory import Inventory
from agent.kube.config import kube_enabled
from agent.loader import Loader
from agent.metrics import Metrics
from agent.models import ModelService
from agent.proto import POOL, meshlet_pb2_grpc, model_mesh_pb2_grpc
from agent.registry.store import ModelRegistry
from agent.resources.gpu import GpuInfo
from agent.resources.monitor import ResourceMonitor
from agent.router import Router
from agent.storage.config import StorageConfig
from agent.storage.http import HttpOptions
from agent.storage.pull import PullerSettings
from agent.storage.s3 import S3Options
from agent.vmodels import VModels

if TYPE_CHECKING:
    from agent.kube.service import KubeService

log = logging.getLogger(__name__)

MMESH_SERVICE = "mmesh.ModelMesh"
HEALTH_SERVICE = "grpc.health.v1.Health"


def meshlet_version() -> str:
    try:
        return version("meshlet")
    except PackageNotFoundError:
        return "0.0.0"


def _reflection_pool() -> DescriptorPool:
    """Our private pool (see agent.proto), plus the health and reflection files,
    so reflection can describe every service on the port."""
    for module in (health_pb2, reflection_pb2):
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return POOL


class Agent:
    """One node agent. ``await start()``, serve, ``await stop()``."""

    def __init__(self, settings: Settings, node_name: str | None = None) -> None:
        self.settings = settings
        self.node_name = node_name or socket.gethostname()
        self.metrics = Metrics(CollectorRegistry(auto_describe=True))
        self.registry: ModelRegistry | None = None
        self.adapters: dict[str, RuntimeAdapter] = {}
        self.inventory = Inventory()
        self._grpc: grpc.aio.Server | None = None
        self._health: HealthServicer | None = None
        self._http: HttpServer | None = None
        self._vmodels: VModels | None = None
        self._models: ModelService | None = None
        self.loader: Loader | None = None
        self.cache: NodeCache | None = None
        self.artifacts: ArtifactStore | None = None
        self.monitor: ResourceMonitor | None = None
        self.cluster: ClusterNode | None = None
        self.router: Router | None = None
        self.kube: KubeService | None = None
        self.peer_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        self._ready = False
        self._stopped = False
        self._lock = DataDirLock(settings.data_dir)

    def ready(self) -> bool:
        return self._ready and any(a.available for a in self.adapters.values())

    def runtime_states(self) -> dict[str, str]:
        """Runtime kind -> "" when it serves, else why it is unavailable."""
        return {
            kind: "" if a.available else (a.unavailable_reason or "not running")
            for kind, a in self.adapters.items()
        }

    @property
    def models(self) -> ModelService:
        assert self._models is not None, "agent not started"
        return self._models

    def release(self) -> None:
        """Give up what ``claim`` took (``stop`` does this too)."""
        self._lock.release()

    def claim(self) -> None:
        """Lock the data dir and check the listening ports are free; raises
        ``StartupError`` having changed nothing. Safe to call twice."""
        s = self.settings
        self._lock.acquire()
        check_ports([
            ("gRPC", s.grpc_host, s.grpc_port),
            ("metrics", s.metrics_host, s.metrics_port),
            *([("peer", s.peer_host, s.peer_port)] if s.resolved_cluster_keys() else []),
        ])

    async def start(self) -> None:
        s = self.settings
        self.claim()
        self.registry = ModelRegistry.open(s.registry_path)
        log.info("registry %s: %d models", s.registry_path, self.registry.count())

        for kind in s.runtimes:
            self.adapters[kind] = adapter_class(kind)(s.runtime_options(kind))
        results = await asyncio.gather(
            *(a.start() for a in self.adapters.values()), return_exceptions=True
        )
        for kind, result in zip(self.adapters, results, strict=True):
            if isinstance(result, BaseException):
                log.error("runtime %s did not start: %s", kind, result)

        self.artifacts = await asyncio.to_thread(self._open_artifacts)
        self.monitor = ResourceMonitor(
            self._runtime_pids, interval_s=s.resource_sample_interval_s,
            cgroup_dir=s.cgroup_dir, on_sample=self.metrics.observe_resources,
        )
        await self.monitor.start()
        monitor = self.monitor
        self.metrics.monitor_cpu.set_function(lambda: monitor.cpu_seconds)
        assert self.monitor.latest is not None
        budget = s.resolved_memory_budget(self.monitor.latest.memory_available_bytes)
        self.loader = Loader(
            self.inventory, self.adapters, budget, s.load_timeout_s, self.metrics, self.artifacts,
            sizes=self.registry, gpus=self._sample_gpus,
        )
        self._models = ModelService(
            self.registry, self.inventory, self.loader, self.adapters, self.artifacts
        )
        self._vmodels = VModels(self.registry, self._models, s.vmodel_retry_interval_s)
        router = Router(self.registry, self.inventory, self._models, self._vmodels)
        self.router = router
        self.metrics.bind(
            lambda: len(self.inventory),
            lambda: self.inventory.used_bytes,
            lambda: budget,
        )

        await self._start_grpc(router)
        if s.metrics_port >= 0:
            self._http = HttpServer(s.metrics_host, s.metrics_port, self.metrics.registry,
                                    self.ready, self.runtime_states)
            try:
                await self._http.start()
            except OSError as err:
                raise StartupError(
                    port_in_use("metrics", s.metrics_host, s.metrics_port, str(err))
                ) from None
            self.metrics_port = self._http.port

        await self._start_cluster()
        if s.demo_models:
            written = await self._models.register_many(
                demo_specs(s.demo_models, s.demo_runtime)
            )
            log.info("demo: %d simple-string models registered (%d new or changed)",
                     s.demo_models, written)
        self._vmodels.resume()
        await self._start_kube()
        self._ready = True
        log.info(
            "meshlet %s serving on gRPC port %d (metrics %s), budget %.1f MiB, runtimes: %s",
            meshlet_version(), self.grpc_port, self.metrics_port or "off", budget / 2**20,
            ", ".join(f"{k}={'up' if a.available else 'unavailable'}"
                      for k, a in self.adapters.items()),
        )

    async def _sample_gpus(self) -> Sequence[GpuInfo]:
        assert self.monitor is not None
        resources = await asyncio.to_thread(self.monitor.sample)
        return resources.gpus

    def _runtime_pids(self) -> list[int]:
        return [p.pid for a in self.adapters.values() for p in a.processes()]

    def _open_artifacts(self) -> ArtifactStore:
        s = self.settings
        # Pins are owned per data dir, so a restarted agent clears the pins its
        # previous run left (its runtimes died with it) and no one else's.
        owner = f"{socket.gethostname()}:{s.data_dir.resolve()}"
        cache = NodeCache(
            s.resolved_cache_dir, s.cache_quota_bytes or 1, level=s.cache_level, owner=owner
        )
        cache.quota_bytes = s.resolved_cache_quota(cache.stats().used_bytes)
        self.cache = cache
        log.info("node cache %s: quota %.1f MiB", cache.root, cache.quota_bytes / 2**20)
        store = ArtifactStore(
            cache, s.data_dir / "artifacts", self._puller_settings, self.metrics,
            s.storage_allowed_roots,
        )
        store.prepare()
        self.metrics.bind_cache(lambda: cache.stats().used_bytes, lambda: cache.quota_bytes)
        return store

    def _puller_settings(self) -> PullerSettings:
        s = self.settings
        config = (
            StorageConfig.from_dir(s.storage_config_dir) if s.storage_config_dir
            else StorageConfig()
        )
        return PullerSettings(
            allowed_roots=s.storage_allowed_roots,
            storage_config=config,
            http=HttpOptions(
                connect_timeout_s=s.storage_connect_timeout_s,
                read_timeout_s=s.storage_read_timeout_s,
                max_attempts=s.storage_attempts,
                backoff_initial_s=s.storage_backoff_s,
            ),
            s3=S3Options(
                connect_timeout_s=s.storage_connect_timeout_s,
                read_timeout_s=s.storage_read_timeout_s,
                max_retries=s.storage_attempts - 1,
                backoff_initial_s=s.storage_backoff_s,
            ),
        )

    async def _start_cluster(self) -> None:
        s = self.settings
        keys = s.resolved_cluster_keys()
        if not keys:
            log.info("cluster: off (no MESHLET_CLUSTER_KEYS / MESHLET_CLUSTER_KEY_FILE): "
                     "this node runs alone")
            return
        advertise = s.resolved_advertise_host()
        assert self.registry is not None and self.router is not None
        self.cluster = ClusterNode(
            s.cluster_config(advertise, f"{advertise}:{self.grpc_port}"),
            LocalNode(self.registry, self.models.apply_remote, self.inventory,
                      self._summary, self.router.serve_forwarded,
                      self.models.load_in_background, self.models.unload),
        )
        await self.cluster.start()
        self.metrics.bind_cluster(self.cluster.figures)
        self.router.peers = self.cluster.routing
        if self.cluster.copies is not None:
            self.router.on_served = self.cluster.copies.record
        self.peer_port = self.cluster.port

    async def _start_kube(self) -> None:
        kube = self.settings.kube_settings()
        if not kube_enabled(kube):
            log.info("kubernetes: off (setting kube=%s)", kube.mode)
            return
        # Imported here: the kubernetes client costs ~12 MiB, paid only when it is on.
        from agent.kube.service import ClusterView, KubeService

        assert self.registry is not None and self._vmodels is not None
        assert self.loader is not None
        cluster, loader = self.cluster, self.loader
        view = ClusterView(
            self_id=cluster.address if cluster is not None else self.node_name,
            location=self._location, peer_copies=self._peer_copies,
            members=self._live_members if cluster is not None else None,
        )
        self.kube = KubeService(kube, self.registry, self.models, self._vmodels, self.inventory,
                                view, failures=lambda: loader.failures)
        try:
            await self.kube.start()
        except Exception as err:  # the kubeconfig or service account cannot be read
            self.kube = None
            raise StartupError(f"kubernetes: cannot load the API client's config: {err}") from None
        if cluster is not None and cluster.states is not None:
            kube_service = self.kube
            cluster.states.on_change(
                lambda change: kube_service.model_changed(change.key[len(MODEL_KEY):])
                if change.key.startswith(MODEL_KEY) else None
            )

    def _live_members(self) -> list[str]:
        """Members that may act for resources: alive, or suspected but not yet dead."""
        return [m.address for m in (self.cluster.members() if self.cluster else [])
                if m.state in (State.ALIVE, State.SUSPECT)]

    def _location(self) -> str:
        """This node as copy lists name it: its peer address in a cluster."""
        return self.cluster.address if self.cluster is not None else self.node_name

    def _peer_copies(self, model_id: str) -> list[str]:
        routing = self.cluster.routing if self.cluster is not None else None
        return routing.copies(model_id) if routing is not None else []

    def _summary(self) -> NodeSummary:
        """What peers need to route and place here (gossiped)."""
        assert self.loader is not None and self.router is not None
        loader = self.loader
        latest = self.monitor.latest if self.monitor is not None else None
        gpus = latest.gpus if latest is not None else ()
        return NodeSummary(
            grpc=f"{self.settings.resolved_advertise_host()}:{self.grpc_port}",
            free_bytes=max(0, loader.budget_bytes - self.inventory.used_bytes),
            kinds=tuple(k for k, a in self.adapters.items() if a.available),
            gpu_free_bytes=max((g.free_bytes for g in gpus), default=0),
            in_flight=self.router.in_flight,
            draining=self.router.draining,
            models=len(self.inventory),
        )

    async def _start_grpc(self, router: Router) -> None:
        s = self.settings
        assert self.registry is not None and self._models is not None
        assert self._vmodels is not None
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_request_bytes),
                ("grpc.max_send_message_length", 1 << 30),  # RepositoryIndex of 1M models
                ("grpc.so_reuseport", 0),  # never share a port with another agent
            ]
        )
        inference = InferenceService(
            router, self._models, self.registry, self.metrics, self.ready, meshlet_version()
        )
        server.add_generic_rpc_handlers([inference.handler()])
        model_mesh_pb2_grpc.add_ModelMeshServicer_to_server(
            ModelMeshService(self._models, self._vmodels, self._location, self._peer_copies),
            server
        )
        meshlet_pb2_grpc.add_CacheServicer_to_server(CacheService(self._models), server)
        assert self.loader is not None and self.monitor is not None
        loader = self.loader
        meshlet_pb2_grpc.add_NodeServicer_to_server(
            NodeService(self.node_name, self.inventory, self.adapters,
                        lambda: loader.budget_bytes, self.monitor, self.runtime_states,
                        self.registry, lambda: self.cluster),
            server,
        )
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, MMESH_SERVICE, CACHE_SERVICE, NODE_SERVICE, HEALTH_SERVICE,
             reflection.SERVICE_NAME),
            server,
            pool=_reflection_pool(),
        )
        try:
            self.grpc_port = server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        except RuntimeError as err:  # grpc says only "Failed to bind to address ..."
            raise StartupError(port_in_use("gRPC", s.grpc_host, s.grpc_port, str(err))) from None
        await server.start()
        self._grpc = server
        for name in ("", INFERENCE_SERVICE, MMESH_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._ready = False
        grace = self.settings.shutdown_grace_s
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.kube is not None:
            log.info("stopping: Kubernetes watchers")
            await self.kube.stop()
        if self.cluster is not None:
            if self.router is not None:
                self.router.draining = True
            log.info("stopping: handing recently used models to peers (up to %.1f s)",
                     self.settings.drain_timeout_s)
            await self.cluster.drain()
            await self.cluster.leave()  # peers see LEFT at once
        log.info("stopping: draining in-flight requests (up to %.1f s)", grace)
        await asyncio.gather(
            *([self._grpc.stop(grace)] if self._grpc is not None else []),
            *([self.cluster.stop()] if self.cluster is not None else []),
        )
        if self._vmodels is not None:
            await self._vmodels.stop()
        if self._models is not None:
            await self._models.stop()
        await asyncio.gather(*(a.stop() for a in self.adapters.values()), return_exceptions=True)
        if self.monitor is not None:
            await self.monitor.stop()
        if self._http is not None:
            await self._http.stop()
        if self.loader is not None:
            self.loader.flush_sizes()
        if self.registry is not None:
            self.registry.close()
        if self.cache is not None:
            self.cache.close()
        self._lock.release()
        log.info("stopped")


async def serve(settings: Settings, on_ready: Callable[[Agent], None] | None = None) -> None:
    """Run an agent until SIGTERM or SIGINT, then stop it in order.

    ``on_ready(agent)`` is called once the agent serves (``meshlet serve
    --ready-file`` writes its ports there); if it raises, the agent stops.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(settings)
    try:
        agent.claim()
    except BaseException:
        agent.release()
        raise
    try:
        await agent.start()
        if on_ready is not None:
            on_ready(agent)
        await stop.wait()
    finally:
        await agent.stop()
