"""Agents of their own: eviction under a tiny budget, a vmodel rollout under
load, a runtime SIGKILLed mid-traffic, the agent SIGKILLed and restarted, and
an orderly SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

import grpc
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from agent.process import AgentProcess
from agent.proto import model_mesh_pb2 as mm
from tests.clients import MeshClient, check_sums, infer, infer_aio, until_recovered
from tests.conftest import pid_gone, runtime_pids, wait_for

StartAgent = Callable[..., AgentProcess]
SIMPLE_STRING_BYTES = 16 * 1024  # the predicted size of one simple-string model


def ready_models(client: triton.InferenceServerClient) -> set[str]:
    return {m.name for m in client.get_model_repository_index().models if m.state == "READY"}


def test_lru_eviction_order_under_tiny_budget(start_agent: StartAgent) -> None:
    agent = start_agent("--demo", "5", MESHLET_MEMORY_BUDGET_BYTES=str(3 * SIMPLE_STRING_BYTES))
    with triton.InferenceServerClient(agent.address) as client:
        for i in (0, 1, 2):
            check_sums(infer(client, f"simple-string-{i}"))
        check_sums(infer(client, "simple-string-0"))  # 0 is recent again; 1 is the oldest
        check_sums(infer(client, "simple-string-3"))
        assert ready_models(client) == {"simple-string-0", "simple-string-2", "simple-string-3"}
        check_sums(infer(client, "simple-string-4"))
        assert ready_models(client) == {"simple-string-0", "simple-string-3", "simple-string-4"}


def test_vmodel_rollout_under_concurrent_traffic(start_agent: StartAgent) -> None:
    agent = start_agent("--demo", "3")
    mesh = MeshClient(agent.address)
    mesh.stub.setVModel(mm.SetVModelRequest(
        vModelId="prod", targetModelId="simple-string-1", loadNow=True, sync=True
    ))

    async def traffic() -> tuple[list[str], mm.VModelStatusInfo]:
        async with triton_aio.InferenceServerClient(agent.address) as c:
            async def one() -> str:
                result = await infer_aio(c, "prod", headers={"mm-vmodel-id": "prod"})
                check_sums(result)
                return str(result.get_response().model_name)

            calls = [asyncio.create_task(one()) for _ in range(100)]
            await asyncio.sleep(0)  # poll: the first requests are on the wire
            status = await asyncio.to_thread(
                mesh.stub.setVModel,
                mm.SetVModelRequest(vModelId="prod", targetModelId="simple-string-2"),
            )
            calls += [asyncio.create_task(one()) for _ in range(100)]
            return await asyncio.gather(*calls), status

    served, status = asyncio.run(traffic())
    assert len(served) == 200  # every request succeeded (gather raises otherwise)
    assert set(served) <= {"simple-string-1", "simple-string-2"}
    assert status.activeModelId == "simple-string-1" or status.status == mm.VModelStatusInfo.DEFINED

    def switched() -> bool:
        s = mesh.stub.getVModelStatus(mm.GetVModelStatusRequest(vModelId="prod"))
        return s.status == mm.VModelStatusInfo.DEFINED and s.activeModelId == "simple-string-2"

    wait_for(switched, what="vmodel to switch")
    with triton.InferenceServerClient(agent.address) as client:
        result = infer(client, "x", headers={"mm-vmodel-id": "prod"})
        assert result.get_response().model_name == "simple-string-2"
    mesh.close()


def test_runtime_sigkill_mid_traffic_recovers(start_agent: StartAgent) -> None:
    agent = start_agent("--demo", "10")
    [runtime] = wait_for(lambda: runtime_pids(agent.pid), what="runtime process")

    async def traffic() -> tuple[int, int, int]:
        ok_before = 0
        async with triton_aio.InferenceServerClient(agent.address) as c:
            for i in range(10):
                check_sums(await infer_aio(c, f"simple-string-{i}"))
                ok_before += 1
            os.kill(runtime, signal.SIGKILL)
            models = [f"simple-string-{i}" for i in range(10)]
            ok_after, failed = await until_recovered(c, models, 20, timeout_s=60)
        return ok_before, ok_after, failed

    ok_before, ok_after, _failed = asyncio.run(traffic())
    assert ok_before == 10 and ok_after >= 20
    new = runtime_pids(agent.pid)
    assert new and runtime not in new  # a new runtime process, not the killed one
    mesh = MeshClient(agent.address)
    assert all(mesh.status(f"simple-string-{i}") != mm.ModelStatusInfo.NOT_FOUND
               for i in range(10))
    mesh.close()


def test_hung_runtime_is_killed_and_replaced(start_agent: StartAgent) -> None:
    agent = start_agent("--demo", "2")
    [runtime] = wait_for(lambda: runtime_pids(agent.pid), what="runtime process")
    with triton.InferenceServerClient(agent.address) as client:
        check_sums(infer(client, "simple-string-0"))
        os.kill(runtime, signal.SIGSTOP)  # alive but answering nothing
        try:
            wait_for(lambda: pid_gone(runtime), what="the hung runtime to be killed")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(runtime, signal.SIGCONT)
        new = wait_for(lambda: runtime_pids(agent.pid), what="a new runtime")
        assert runtime not in new
        check_sums(wait_for(lambda: _try_infer(client, "simple-string-0"), what="recovery"))


def _try_infer(client: triton.InferenceServerClient, model: str) -> triton.InferResult | None:
    try:
        return infer(client, model, client_timeout=5)
    except InferenceServerException:
        return None


def test_agent_sigkill_then_restart_keeps_registrations(start_agent: StartAgent) -> None:
    agent = start_agent("--demo", "20")
    mesh = MeshClient(agent.address)
    for i in range(5):
        mesh.register(f"custom-{i}", size_hint=1000 + i)
    mesh.stub.setVModel(mm.SetVModelRequest(vModelId="alias", targetModelId="custom-1"))
    with triton.InferenceServerClient(agent.address) as client:
        check_sums(infer(client, "custom-3"))
    mesh.close()
    runtimes = runtime_pids(agent.pid)
    assert runtimes
    agent.kill()
    for pid in runtimes:  # no orphan: the kernel kills the runtime with its parent
        wait_for(lambda pid=pid: pid_gone(pid), what=f"runtime {pid} to exit")

    again = start_agent(data_dir=agent.data_dir)  # no --demo: all from the registry
    mesh = MeshClient(again.address)
    for i in range(5):
        assert mesh.status(f"custom-{i}") == mm.ModelStatusInfo.NOT_LOADED
    for i in range(20):
        assert mesh.status(f"simple-string-{i}") == mm.ModelStatusInfo.NOT_LOADED
    vstatus = mesh.stub.getVModelStatus(mm.GetVModelStatusRequest(vModelId="alias"))
    assert vstatus.activeModelId == "custom-1"
    with triton.InferenceServerClient(again.address) as client:
        check_sums(infer(client, "custom-3"))
        check_sums(infer(client, "x", headers={"mm-vmodel-id": "alias"}))
    mesh.close()


def test_sigterm_stops_in_order_and_leaves_no_runtime(start_agent: StartAgent) -> None:
    agent = start_agent("--demo", "2")
    with triton.InferenceServerClient(agent.address) as client:
        check_sums(infer(client, "simple-string-0"))
    runtimes = runtime_pids(agent.pid)
    assert agent.stop() == 0
    assert all(pid_gone(pid) for pid in runtimes)
    with grpc.insecure_channel(agent.address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
            reachable = True
        except grpc.FutureTimeoutError:
            reachable = False
    assert not reachable


def test_models_pack_into_a_pool_of_runtime_processes(start_agent: StartAgent) -> None:
    agent = start_agent(
        "--demo", "8",
        MESHLET_RUNTIME_PROCESSES_MIN="1", MESHLET_RUNTIME_PROCESSES_MAX="3",
        MESHLET_RUNTIME_PROCESS_MAX_MODELS="2", MESHLET_RUNTIME_PROCESS_MAX_BYTES=str(2**20),
    )  # fmt: skip
    assert len(runtime_pids(agent.pid)) == 1
    with triton.InferenceServerClient(agent.address) as client:
        for i in range(6):
            check_sums(infer(client, f"simple-string-{i}"))
        pids = wait_for(lambda: (p := runtime_pids(agent.pid)) and len(p) == 3 and p,
                        what="three runtime processes")
        check_sums(infer(client, "simple-string-6"))  # all full: the LRU goes
        assert "simple-string-0" not in ready_models(client)
        assert len(ready_models(client)) == 6

        os.kill(pids[-1], signal.SIGKILL)  # its two models reload on their next request
        wait_for(lambda: len(ready_models(client)) == 4, what="the lost models forgotten")
        for i in range(1, 7):
            check_sums(infer(client, f"simple-string-{i}"))
        assert len(ready_models(client)) == 6

        for i in range(1, 7):
            client.unload_model(f"simple-string-{i}")
        wait_for(lambda: len(runtime_pids(agent.pid)) == 1,
                 what="empty processes above the minimum stopped")
        check_sums(infer(client, "simple-string-7"))

        mesh = MeshClient(agent.address)
        mesh.register("huge", size_hint=2 * 2**20)  # more than one process may hold
        mesh.close()
        with pytest.raises(InferenceServerException) as raised:
            infer(client, "huge")
        assert str(raised.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
        assert "'huge' needs 2097152 bytes, more than one runtime process" in (
            raised.value.message())
        check_sums(infer(client, "simple-string-7"))  # and the node serves on
