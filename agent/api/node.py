"""meshlet's own ``meshlet.v1.Node`` service: what this node holds and has
(``meshlet node`` prints it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from adapters.base import RuntimeAdapter
from agent.api.status import Context, grpc_errors
from agent.cluster.peer import ClusterNode
from agent.errors import ModelNotFound
from agent.inventory import Inventory
from agent.proto import meshlet_pb2 as pb
from agent.proto import meshlet_pb2_grpc as pb_grpc
from agent.registry.store import ModelRegistry
from agent.resources.monitor import ResourceMonitor

SERVICE = "meshlet.v1.Node"
DEFAULT_TOP_MODELS = 10


class NodeService(pb_grpc.NodeServicer):
    def __init__(
        self,
        node_name: str,
        inventory: Inventory,
        adapters: dict[str, RuntimeAdapter],
        budget: Callable[[], int],
        monitor: ResourceMonitor,
        runtime_states: Callable[[], dict[str, str]],
        registry: ModelRegistry,
        cluster: Callable[[], ClusterNode | None] = lambda: None,
    ) -> None:
        self._registry = registry
        self._cluster = cluster
        self._node = node_name
        self._inventory = inventory
        self._adapters = adapters
        self._budget = budget
        self._monitor = monitor
        self._runtime_states = runtime_states

    @grpc_errors
    async def Status(self, request: pb.NodeStatusRequest, context: Context) -> Any:
        resources = await asyncio.to_thread(self._monitor.sample)  # fresh: ~2 ms
        response = pb.NodeStatusResponse(
            node=self._node,
            budget_bytes=self._budget(),
            used_bytes=self._inventory.used_bytes,
            models_loaded=len(self._inventory),
            memory_limit_bytes=resources.memory_limit_bytes,
            memory_available_bytes=resources.memory_available_bytes,
            cpu_limit_cores=resources.cpu_limit_cores,
            runtimes=self._runtime_states(),
        )
        meshlet_gpu: dict[int, int] = {}
        for adapter in self._adapters.values():
            for info in adapter.processes():
                usage = resources.processes.get(info.pid)
                response.processes.add(
                    runtime=info.kind, pid=info.pid, models=info.models,
                    rss_bytes=usage.rss_bytes if usage else 0,
                    gpu_bytes=usage.gpu_total_bytes if usage else 0,
                )
                for index, used in (usage.gpu_bytes.items() if usage else ()):
                    meshlet_gpu[index] = meshlet_gpu.get(index, 0) + used
        for gpu in resources.gpus:
            response.gpus.add(
                index=gpu.index, name=gpu.name, total_bytes=gpu.total_bytes,
                used_bytes=gpu.used_bytes, free_bytes=gpu.free_bytes,
                meshlet_bytes=meshlet_gpu.get(gpu.index, 0),
            )
        for model in self._inventory.largest(request.top_models or DEFAULT_TOP_MODELS):
            response.top_models.add(
                model_id=model.spec.model_id, runtime=model.spec.runtime,
                size_bytes=model.size_bytes, in_flight=model.in_flight,
            )
        return response

    @grpc_errors
    async def Members(self, request: pb.MembersRequest, context: Context) -> Any:
        response = pb.MembersResponse()
        cluster = self._cluster()
        if cluster is None or cluster.membership is None:
            return response
        routing = cluster.routing
        for member in cluster.members():
            row = response.members.add(
                address=member.address, state=member.state.name,
                incarnation=member.incarnation, grpc_address=member.meta.get("grpc", ""),
                self=member.address == cluster.address,
            )
            summary = routing.summary(member.address) if routing is not None else None
            if summary is not None and member.state.name in ("ALIVE", "SUSPECT"):
                row.models = summary.models
                row.free_bytes = summary.free_bytes
                row.draining = summary.draining
                row.in_flight = summary.in_flight
        for reason, count in cluster.drop_counts().items():
            response.dropped[reason] = count
        return response

    @grpc_errors
    async def ModelSize(self, request: pb.ModelSizeRequest, context: Context) -> Any:
        spec = self._registry.get(request.model_id)
        if spec is None:
            raise ModelNotFound(request.model_id)
        response = pb.ModelSizeResponse(
            runtime=spec.runtime,
            measured_bytes=self._registry.measured_size(spec.model_id, spec.runtime) or 0,
        )
        loaded = self._inventory.get(spec.model_id)
        if loaded is not None:
            response.loaded = True
            response.size_bytes = loaded.size_bytes
            response.predicted_bytes = loaded.predicted_bytes
        return response
