"""ModelMesh's management API (``mmesh.ModelMesh``), wire-compatible, so
ModelMesh clients keep working.

A ``ModelInfo`` becomes a spec as follows: ``type`` is the model type,
``path`` the storage URI, and ``key`` (optional) a JSON object with meshlet's
extra fields: ``{"runtime": "mlserver", "size_hint": 123, "labels": {...},
"storage_key": "...", "gpu": true}``. ModelMesh's own key fields are understood too:
``storage_key`` picks the storage-config key, and ``bucket`` with a ``path``
that is not a URI makes ``s3://<bucket>/<path>``. A ``key`` that is not JSON
is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from agent.api.status import Context, grpc_errors
from agent.errors import InvalidSpec, MeshletError
from agent.models import ModelService, ModelState, ModelStatus
from agent.proto import model_mesh_pb2 as mm
from agent.proto import model_mesh_pb2_grpc as mm_grpc
from agent.registry.spec import ModelSpec
from agent.vmodels import VModels, VModelStatus


def spec_from_model_info(model_id: str, info: mm.ModelInfo) -> ModelSpec:
    extra: dict[str, Any] = {}
    if info.key:
        try:
            parsed = json.loads(info.key)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            extra = parsed
    uri = info.path
    bucket = extra.get("bucket")
    if bucket and "://" not in uri and not uri.startswith("/"):
        uri = f"s3://{bucket}/{uri.lstrip('/')}"
    try:
        return ModelSpec(
            model_id=model_id,
            uri=uri,
            runtime=str(extra.get("runtime", "mlserver")),
            model_type=info.type,
            size_hint=int(extra.get("size_hint", 0)),
            labels={str(k): str(v) for k, v in dict(extra.get("labels", {})).items()},
            storage_key=str(extra.get("storage_key") or ""),
            gpu=bool(extra.get("gpu", False)),
        )
    except (TypeError, ValueError) as err:
        raise InvalidSpec(f"modelInfo.key of {model_id!r}: {err}") from None


def model_status_info(
    status: ModelStatus, location: str, elsewhere: Sequence[str] = ()
) -> mm.ModelStatusInfo:
    """This node's status of a model plus the copies peers hold (``elsewhere``):
    LOADED when any copy is, one ``modelCopyInfos`` entry per copy."""
    info = mm.ModelStatusInfo(status=status.state.name, errors=status.errors)
    if status.state.value >= mm.ModelStatusInfo.LOADING:
        info.modelCopyInfos.add(
            location=location, copyStatus=status.state.name, time=int(status.since * 1000)
        )
    if elsewhere and status.state is not ModelState.NOT_FOUND:
        info.status = mm.ModelStatusInfo.LOADED
        for peer in elsewhere:
            info.modelCopyInfos.add(location=peer, copyStatus=mm.ModelStatusInfo.LOADED)
    return info


class ModelMeshService(mm_grpc.ModelMeshServicer):
    def __init__(
        self, models: ModelService, vmodels: VModels, location: Callable[[], str],
        copies: Callable[[str], Sequence[str]] = lambda model_id: (),
    ) -> None:
        """``location()``: this node's name in copy lists (its peer address in a
        cluster); ``copies(model_id)``: the peers holding a loaded copy."""
        self._models = models
        self._vmodels = vmodels
        self._location = location
        self._copies = copies

    def _status(self, model_id: str) -> mm.ModelStatusInfo:
        return model_status_info(
            self._models.status(model_id), self._location(), self._copies(model_id)
        )

    def _vstatus(self, status: VModelStatus) -> mm.VModelStatusInfo:
        info = mm.VModelStatusInfo(
            status=status.state.name,
            activeModelId=status.active,
            targetModelId=status.target,
            owner=status.owner,
        )
        here = self._location()
        if status.active_status is not None:
            info.activeModelStatus.CopyFrom(model_status_info(status.active_status, here))
        if status.target_status is not None:
            info.targetModelStatus.CopyFrom(model_status_info(status.target_status, here))
        return info

    async def _load(self, model_id: str, sync: bool) -> None:
        if not sync:
            self._models.load_in_background(model_id)
            return
        try:
            await self._models.ensure_loaded(model_id)
        except MeshletError:
            pass  # the returned status carries LOADING_FAILED and the reason

    @grpc_errors
    async def registerModel(self, request: mm.RegisterModelRequest, context: Context) -> Any:
        if not request.HasField("modelInfo"):
            raise InvalidSpec("modelInfo is required")
        await self._models.register(spec_from_model_info(request.modelId, request.modelInfo))
        if request.loadNow:
            await self._load(request.modelId, request.sync)
        return self._status(request.modelId)

    @grpc_errors
    async def unregisterModel(self, request: mm.UnregisterModelRequest, context: Context) -> Any:
        await self._models.unregister(request.modelId)
        return mm.UnregisterModelResponse()

    @grpc_errors
    async def getModelStatus(self, request: mm.GetStatusRequest, context: Context) -> Any:
        return self._status(request.modelId)

    @grpc_errors
    async def ensureLoaded(self, request: mm.EnsureLoadedRequest, context: Context) -> Any:
        status = self._models.status(request.modelId)
        if status.state.value != mm.ModelStatusInfo.NOT_FOUND:
            await self._load(request.modelId, request.sync)
        return self._status(request.modelId)

    @grpc_errors
    async def setVModel(self, request: mm.SetVModelRequest, context: Context) -> Any:
        spec = None
        if request.HasField("modelInfo"):
            spec = spec_from_model_info(request.targetModelId, request.modelInfo)
        status = await self._vmodels.set(
            request.vModelId,
            request.targetModelId,
            owner=request.owner,
            update_only=request.updateOnly,
            spec=spec,
            auto_delete=request.autoDeleteTargetModel and spec is not None,
            load_now=request.loadNow,
            force=request.force,
            sync=request.sync,
            expected_target=request.expectedTargetModelId,
        )
        return self._vstatus(status)

    @grpc_errors
    async def deleteVModel(self, request: mm.DeleteVModelRequest, context: Context) -> Any:
        await self._vmodels.delete(request.vModelId, request.owner)
        return mm.DeleteVModelResponse()

    @grpc_errors
    async def getVModelStatus(self, request: mm.GetVModelStatusRequest, context: Context) -> Any:
        return self._vstatus(self._vmodels.status(request.vModelId, request.owner))
