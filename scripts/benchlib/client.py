"""Client calls the benchmarks make: load through ModelMesh's ``ensureLoaded``,
count resident models with ``RepositoryIndex``, and simple-string inference
with ``tritonclient.grpc.aio``.

Management calls use meshlet's own generated code (a private protobuf pool),
so they live beside tritonclient in one process.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput

from agent.demo import DEMO_PREFIX
from agent.proto import grpc_service_pb2 as kserve
from agent.proto import grpc_service_pb2_grpc as kserve_grpc
from agent.proto import model_mesh_pb2 as mm
from agent.proto import model_mesh_pb2_grpc as mm_grpc

from .report import percentile, progress

TENSOR_LEN = 16
_BIG = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]


def demo_ids(count: int) -> list[str]:
    return [f"{DEMO_PREFIX}{i}" for i in range(count)]


# --- loading -----------------------------------------------------------------


@dataclass
class LoadResult:
    requested: int
    loaded: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few, verbatim
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.loaded / self.seconds if self.seconds > 0 else 0.0


async def load_all(
    address: str,
    model_ids: Sequence[str],
    in_flight: int,
    rss: Callable[[], int] | None = None,
    every_s: float = 3.0,
    timeout_s: float = 300.0,
) -> LoadResult:
    """``ensureLoaded(sync=true)`` for every id, ``in_flight`` at a time.

    A load counts when the returned status is LOADED. Progress goes to stderr
    every ``every_s``: loaded, rate, and the agent's RSS when ``rss`` is given.
    """
    result = LoadResult(len(model_ids))
    queue = iter(model_ids)
    start = time.perf_counter()

    async def worker(stub: mm_grpc.ModelMeshStub) -> None:
        for model_id in queue:  # one shared iterator: each id taken once
            t0 = time.perf_counter()
            try:
                status = await stub.ensureLoaded(
                    mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=timeout_s
                )
            except grpc.aio.AioRpcError as err:
                _failed(result, f"{model_id}: {err.code().name}: {err.details()}")
                continue
            if status.status == mm.ModelStatusInfo.LOADED:
                result.loaded += 1
                result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            else:
                name = mm.ModelStatusInfo.ModelStatus.Name(status.status)
                _failed(result, f"{model_id}: {name}: {'; '.join(status.errors)}")

    async def report() -> None:
        last_n, last_t = 0, start
        while True:
            await asyncio.sleep(every_s)
            now = time.perf_counter()
            done = result.loaded + result.failed
            line = (
                f"  loaded {result.loaded:,}/{result.requested:,}"
                f" ({result.failed:,} failed), {(done - last_n) / (now - last_t):,.0f}/s now,"
                f" {result.loaded / (now - start):,.0f}/s overall"
            )
            if rss is not None:
                try:
                    line += f", agent RSS {rss() / 2**20:,.1f} MiB"
                except Exception:  # the agent may be gone; the loads will say why
                    pass
            progress(line)
            last_n, last_t = done, now

    async with grpc.aio.insecure_channel(address, options=_BIG) as channel:
        stub = mm_grpc.ModelMeshStub(channel)
        reporter = asyncio.create_task(report())
        try:
            await asyncio.gather(*(worker(stub) for _ in range(max(1, in_flight))))
        finally:
            reporter.cancel()
    result.seconds = time.perf_counter() - start
    result.latencies_ms.sort()
    return result


def _failed(result: LoadResult, message: str) -> None:
    result.failed += 1
    if len(result.errors) < 5:
        result.errors.append(message)
        progress(f"  load failed: {message}")


async def ready_models(address: str, timeout_s: float = 300.0) -> tuple[list[str], float]:
    """Names ``RepositoryIndex(ready=true)`` lists, and how long the call took (s)."""
    async with grpc.aio.insecure_channel(address, options=_BIG) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        t0 = time.perf_counter()
        response = await stub.RepositoryIndex(
            kserve.RepositoryIndexRequest(ready=True), timeout=timeout_s
        )
        took = time.perf_counter() - t0
    return [m.name for m in response.models], took


async def server_live(address: str, timeout_s: float = 2.0) -> bool:
    """Whether ``address`` answers KServe v2 ServerLive over gRPC."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await kserve_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                kserve.ServerLiveRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(response.live)


# --- simple-string inference -------------------------------------------------


def simple_string_inputs(rng: random.Random) -> tuple[list[InferInput], list[int], list[int]]:
    """INPUT0/INPUT1: BYTES [16] of decimal integers; returns the ints for checking."""
    a = [rng.randint(-1000, 1000) for _ in range(TENSOR_LEN)]
    b = [rng.randint(-1000, 1000) for _ in range(TENSOR_LEN)]
    inputs = []
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        tensor = InferInput(name, [TENSOR_LEN], "BYTES")
        tensor.set_data_from_numpy(np.array([str(v).encode() for v in values], dtype=np.object_))
        inputs.append(tensor)
    return inputs, a, b


def check_simple_string(result: triton_aio.InferResult, a: list[int], b: list[int]) -> str:
    """"" when OUTPUT0 = a + b and OUTPUT1 = a - b, else what is wrong."""
    out0, out1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    if out0 is None or out1 is None:
        return "OUTPUT0 or OUTPUT1 missing"
    got0 = [int(v) for v in out0.reshape(-1)]
    got1 = [int(v) for v in out1.reshape(-1)]
    want0 = [x + y for x, y in zip(a, b, strict=True)]
    want1 = [x - y for x, y in zip(a, b, strict=True)]
    if got0 != want0 or got1 != want1:
        return f"wrong outputs: {got0[:3]}.../{got1[:3]}... want {want0[:3]}.../{want1[:3]}..."
    return ""


@dataclass
class SampleResult:
    requested: int
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)
        return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}


async def infer_each(
    address: str, model_ids: Sequence[str], in_flight: int, seed: int = 1
) -> SampleResult:
    """One checked ModelInfer per id, ``in_flight`` at a time."""
    rng = random.Random(seed)
    result = SampleResult(len(model_ids))
    queue = iter(model_ids)

    async def worker(client: triton_aio.InferenceServerClient) -> None:
        for model_id in queue:
            inputs, a, b = simple_string_inputs(rng)
            t0 = time.perf_counter()
            try:
                response = await client.infer(model_id, inputs, client_timeout=120)
            except Exception as err:  # tritonclient wraps gRPC errors in its own type
                _sample_error(result, f"{model_id}: {err}")
                continue
            result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            wrong = check_simple_string(response, a, b)
            if wrong:
                _sample_error(result, f"{model_id}: {wrong}")
            else:
                result.ok += 1

    async with triton_aio.InferenceServerClient(address) as client:
        await asyncio.gather(*(worker(client) for _ in range(max(1, in_flight))))
    return result


def _sample_error(result: SampleResult, message: str) -> None:
    if len(result.errors) < 5:
        result.errors.append(message)
        progress(f"  infer failed: {message}")
