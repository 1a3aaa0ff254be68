"""Real clients for tests: tritonclient for KServe v2, our stubs for ModelMesh."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

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


async def until_recovered(
    client: triton_aio.InferenceServerClient, models: list[str], streak_needed: int,
    timeout_s: float,
) -> tuple[int, int]:
    """Send requests round the models until ``streak_needed`` succeed in a row
    (failures retried after a short poll); returns (successes, failures)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    ok = failed = streak = 0
    while streak < streak_needed:
        assert loop.time() < deadline, f"no recovery: {failed} failed"
        try:
            check_sums(await infer_aio(client, models[ok % len(models)], client_timeout=30))
            ok += 1
            streak += 1
        except InferenceServerException:
            failed += 1
            streak = 0
            await asyncio.sleep(0.05)  # poll
    return ok, failed


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
