"""KServe v2 ``inference.GRPCInferenceService``: thin handlers over the router
and the model service.

``ModelInfer`` is registered with no (de)serializers: the handler gets the
request as bytes and returns the runtime's response bytes untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from agent.api.status import GRPC_STATUS, Context, grpc_errors
from agent.errors import MeshletError
from agent.metrics import Metrics
from agent.models import ModelService, ModelState
from agent.proto import grpc_service_pb2 as pb
from agent.registry.store import ModelRegistry
from agent.router import Router

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "meshlet"
EXTENSIONS = ["model_repository", "mmesh"]
# RepositoryIndex ``state`` as Triton-protocol clients (tritonclient) know it;
# meshlet's own state, ModelMesh's name for it, leads the entry's ``reason``.
_INDEX_STATE = {
    ModelState.LOADED: "READY",
    ModelState.LOADING: "LOADING",
    ModelState.LOADING_FAILED: "UNAVAILABLE",
    ModelState.NOT_LOADED: "UNAVAILABLE",
}


def index_reason(state: ModelState, why: str) -> str:
    """``NOT_LOADED``, ``LOADED``, ``LOADING_FAILED: <why>``: the reason of a
    RepositoryIndex entry (``agent.cli.render`` reads it back)."""
    return f"{state.name}: {why}" if why else state.name


class InferenceService:
    def __init__(
        self,
        router: Router,
        models: ModelService,
        registry: ModelRegistry,
        metrics: Metrics,
        ready: Callable[[], bool],
        version: str,
    ) -> None:
        self._router = router
        self._models = models
        self._registry = registry
        self._metrics = metrics
        self._ready = ready
        self._version = version

    async def ModelInfer(self, request: bytes, context: Context) -> bytes:
        model_id = vmodel_id = None
        for key, value in context.invocation_metadata() or ():
            if key == "mm-model-id":
                model_id = str(value)
            elif key == "mm-vmodel-id":
                vmodel_id = str(value)
        try:
            response = await self._router.infer(request, model_id, vmodel_id)
        except MeshletError as err:
            self._metrics.requests.labels(code=err.code.name).inc()
            await context.abort(GRPC_STATUS[err.code], err.message)
        self._metrics.ok.inc()
        return response

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._ready())

    @grpc_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        try:
            model_id = self._router.resolve(request.name)
        except MeshletError:
            return pb.ModelReadyResponse(ready=False)
        ready = self._models.status(model_id).state is ModelState.LOADED
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=EXTENSIONS
        )

    @grpc_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        model_id = self._router.resolve(request.name)
        model = await self._models.ensure_loaded(model_id)
        return pb.ModelMetadataResponse.FromString(await model.adapter.metadata(model_id))

    @grpc_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        response = pb.RepositoryIndexResponse()
        for model_id in self._registry.iter_ids():
            state, why = self._models.state_of(model_id)
            if request.ready and state is not ModelState.LOADED:
                continue
            response.models.add(
                name=model_id, state=_INDEX_STATE[state], reason=index_reason(state, why)
            )
        return response

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        await self._models.ensure_loaded(self._router.resolve(request.model_name))
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        await self._models.unload(self._router.resolve(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        methods = {
            # Raw bytes in, raw bytes out: no decode on the hot path.
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.ModelInfer),
            "ServerLive": unary(self.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(
                self.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelMetadata": unary(
                self.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "RepositoryIndex": unary(
                self.RepositoryIndex, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse
            ),
            "RepositoryModelLoad": unary(
                self.RepositoryModelLoad,
                pb.RepositoryModelLoadRequest,
                pb.RepositoryModelLoadResponse,
            ),
            "RepositoryModelUnload": unary(
                self.RepositoryModelUnload,
                pb.RepositoryModelUnloadRequest,
                pb.RepositoryModelUnloadResponse,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)
