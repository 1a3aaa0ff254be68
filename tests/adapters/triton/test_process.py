"""A real ``tritonserver`` under the Triton adapter: its Python-backend stubs
and their shared-memory regions go with it when the liveness watchdog's kill
takes it under traffic, when it is stopped, and when an earlier life left
regions behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from tritonclient.utils import deserialize_bytes_tensor

from adapters.base import RuntimeOptions
from adapters.triton import shm
from adapters.triton.adapter import TritonAdapter
from agent.errors import MeshletError
from agent.proto import grpc_service_pb2 as pb
from agent.registry.spec import ModelSpec
from tests.adapters.helpers import pid_exists, wait_until
from tests.adapters.triton.processes import (
    family,
    is_server,
    regions,
    server_prefix,
    stub_regions,
    stubs,
)

A = list(range(1, 17))
B = [1] * 16
DEADLINE_S = 60.0


def options(work_dir: Path) -> RuntimeOptions:
    return RuntimeOptions(work_dir=work_dir, stop_grace_s=5, restart_backoff_s=0.05,
                          health_interval_s=0.2)  # fmt: skip


def simple(model_id: str) -> ModelSpec:
    return ModelSpec(model_id, "builtin://simple-string", runtime="triton",
                     model_type="simple-string")  # fmt: skip


def infer_request(model: str) -> bytes:
    message = pb.ModelInferRequest(model_name=model)
    for name, values in (("INPUT0", A), ("INPUT1", B)):
        message.inputs.add(name=name, datatype="BYTES", shape=[16])
        message.inputs[-1].contents.bytes_contents.extend(str(v).encode() for v in values)
    return message.SerializeToString()


def sums(response: bytes) -> list[int]:
    """OUTPUT0 of a simple-string answer (Triton sends raw output contents)."""
    message = pb.ModelInferResponse.FromString(response)
    index = [o.name for o in message.outputs].index("OUTPUT0")
    return [int(x) for x in deserialize_bytes_tensor(message.raw_output_contents[index])]


def server_of(adapter: TritonAdapter) -> tuple[int, int, str]:
    """(guard pid, tritonserver pid, shared-memory prefix) of the running server."""
    [info] = adapter.processes()
    [server] = family(info.pid, match=is_server)
    return info.pid, server, server_prefix(server)


@pytest_asyncio.fixture
async def adapter(tmp_path: Path) -> AsyncIterator[TritonAdapter]:
    adapter = TritonAdapter(options(tmp_path / "triton"))
    try:
        yield adapter
    finally:
        await adapter.stop()


async def test_the_watchdogs_kill_under_traffic_leaves_no_stub_and_no_region(
    adapter: TritonAdapter,
) -> None:
    await adapter.start()
    for model in ("m0", "m1"):
        await adapter.load(simple(model), None)
    _, _, prefix = server_of(adapter)
    assert prefix.startswith(shm.region_prefix(adapter.options.work_dir))
    old_stubs = stubs(prefix)
    old_regions = stub_regions(old_stubs)
    assert len(old_stubs) == 2 and all(path.exists() for path in old_regions.values())

    answered = asyncio.Event()

    async def hammer(model: str) -> None:
        with contextlib.suppress(MeshletError):  # until the server goes away
            while True:
                await adapter.infer(model, infer_request(model))
                answered.set()

    traffic = [asyncio.create_task(hammer(m)) for m in ("m0", "m1") for _ in range(4)]
    await asyncio.wait_for(answered.wait(), DEADLINE_S)
    adapter.kill()  # what the liveness watchdog does to a hung server
    await asyncio.wait_for(asyncio.gather(*traffic), DEADLINE_S)

    await wait_until(lambda: not any(map(pid_exists, old_stubs)), DEADLINE_S)
    await wait_until(lambda: not any(p.exists() for p in old_regions.values()), DEADLINE_S)
    await wait_until(lambda: adapter.available, DEADLINE_S)
    await adapter.load(simple("m0"), None)  # its models were lost with it
    assert sums(await adapter.infer("m0", infer_request("m0"))) == [
        a + b for a, b in zip(A, B, strict=True)
    ]
    assert {p.name for p in regions(prefix)} == {
        path.name for path in stub_regions(stubs(prefix)).values()
    }, "only the new stub's region is left"


async def test_stop_leaves_nothing_and_start_removes_what_an_earlier_life_left(
    adapter: TritonAdapter,
) -> None:
    work_dir = adapter.options.work_dir
    stale = shm.SHM_DIR / f"{shm.region_prefix(work_dir)}left-by-a-killed-agent"
    stale.write_bytes(b"")
    try:
        await adapter.start()
        assert not stale.exists()
    finally:
        stale.unlink(missing_ok=True)
    await adapter.load(simple("m0"), None)
    guard, server, prefix = server_of(adapter)
    everyone = [guard, *family(guard, prefix)]
    assert server in everyone and len(stubs(prefix)) == 1 and regions(prefix)
    await adapter.stop()
    # Not eventually: stop returns once the guard exited, and it exits last.
    assert not [pid for pid in everyone if pid_exists(pid)]
    assert not regions(prefix)
