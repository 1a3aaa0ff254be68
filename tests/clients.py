"""Real clients for tests: tritonclient for KServe v2, our stubs for ModelMesh."""

from __future__ import annotations

import json

import grpc
import numpy as np
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

from agent.proto import model_mesh_pb2 as mm
from agent.proto import model_mesh_pb2_grpc as mm_grpc

A = list(range(1, 17))
B = [1] * 16


def string_inputs(
    a: list[int] = A, b: list[int] = B, module: object = triton
) -> list[triton.InferInput]:
    inputs = []
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        data = np.array([str(v).encode() for v in values], dtype=np.object_)
        tensor = module.InferInput(name, [len(values)], "BYTES")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def check_sums(result: triton.InferResult, a: list[int] = A, b: list[int] = B) -> None:
    out0 = [int(x) for x in result.as_numpy("OUTPUT0")]
    out1 = [int(x) for x in result.as_numpy("OUTPUT1")]
    assert out0 == [x + y for x, y in zip(a, b, strict=True)]
    assert out1 == [x - y for x, y in zip(a, b, strict=True)]


def infer(client: triton.InferenceServerClient, model: str, **kw: object) -> triton.InferResult:
    return client.infer(model, string_inputs(), **kw)  # type: ignore[arg-type]


async def infer_aio(
    client: triton_aio.InferenceServerClient, model: str, **kw: object
) -> triton.InferResult:
    return await client.infer(model, string_inputs(module=triton_aio), **kw)  # type: ignore[arg-type]


class MeshClient:
    """ModelMesh API over our generated stubs."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = mm_grpc.ModelMeshStub(self.channel)

    def register(
        self,
        model_id: str,
        uri: str = "builtin://simple-string",
        model_type: str = "simple-string",
        load: bool = False,
        **extra: object,
    ) -> mm.ModelStatusInfo:
        info = mm.ModelInfo(type=model_type, path=uri, key=json.dumps(extra) if extra else "")
        return self.stub.registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=load, sync=load)
        )

    def status(self, model_id: str) -> int:
        return self.stub.getModelStatus(mm.GetStatusRequest(modelId=model_id)).status

    def close(self) -> None:
        self.channel.close()
