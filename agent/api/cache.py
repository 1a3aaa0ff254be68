"""meshlet's own ``meshlet.v1.Cache`` service (see ``agent/proto/meshlet.proto``)."""

from __future__ import annotations

from typing import Any

from agent.api.status import Context, grpc_errors
from agent.models import ModelService
from agent.proto import meshlet_pb2 as pb
from agent.proto import meshlet_pb2_grpc as pb_grpc

SERVICE = "meshlet.v1.Cache"


class CacheService(pb_grpc.CacheServicer):
    def __init__(self, models: ModelService) -> None:
        self._models = models

    @grpc_errors
    async def Prefetch(self, request: pb.PrefetchRequest, context: Context) -> Any:
        info, cached = await self._models.prefetch(request.model_id)
        return pb.PrefetchResponse(
            digest=info.digest,
            size_bytes=info.size_bytes,
            compressed_bytes=info.compressed_bytes,
            already_cached=cached,
        )
