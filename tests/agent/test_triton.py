"""Real ``tritonserver`` (from the nvidia-pytriton wheel) behind real agents:
load on first request, eviction across runtimes under one budget, the same
answer from MLServer and Triton, a SIGKILL of Triton mid-traffic, a rejected
config, a type no backend serves, and a node where Triton is missing."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from agent.process import AgentProcess
from agent.proto import model_mesh_pb2 as mm
from tests.clients import MeshClient, check_sums, infer, infer_aio, until_recovered
from tests.conftest import FAST_ENV, descendant_pids, wait_for

StartAgent = Callable[..., AgentProcess]
MIXED = '["mlserver", "triton"]'
MiB = 2**20
BUDGET = 150 * MiB


def triton_pids(agent_pid: int) -> list[int]:
    """Pids of tritonserver processes under an agent (not their stubs)."""
    return descendant_pids(agent_pid, lambda cmd: cmd[:1] != [] and
                           cmd[0].endswith("/tritonserver"))


def ready_models(client: triton.InferenceServerClient) -> set[str]:
    return {m.name for m in client.get_model_repository_index().models if m.state == "READY"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent running MLServer and Triton under one budget that holds a few
    Python-backend Triton models (each is its own stub process)."""
    env = {**FAST_ENV, "MESHLET_RUNTIMES": MIXED,
           "MESHLET_MEMORY_BUDGET_BYTES": str(BUDGET)}
    agent = AgentProcess(tmp_path_factory.mktemp("mixed"), [], env)
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def mesh(mixed: AgentProcess) -> Iterator[MeshClient]:
    m = MeshClient(mixed.address)
    yield m
    m.close()


def test_same_request_same_answer_from_both_runtimes(mixed: AgentProcess, mesh: MeshClient
                                                     ) -> None:
    mesh.register("ss-mlserver", runtime="mlserver")
    mesh.register("ss-triton", runtime="triton")
    with triton.InferenceServerClient(mixed.address) as client:
        from_mlserver = infer(client, "ss-mlserver")
        from_triton = infer(client, "ss-triton")
        check_sums(from_triton)
        for name in ("OUTPUT0", "OUTPUT1"):
            assert from_triton.as_numpy(name).tolist() == from_mlserver.as_numpy(name).tolist()
        index = {m.name: m.state for m in client.get_model_repository_index().models}
        assert index["ss-mlserver"] == index["ss-triton"] == "READY"
    assert "[triton-0]" in mixed.log_tail(2000), "Triton's output reaches the agent log"


def memory_used(agent: AgentProcess) -> float:
    url = f"http://127.0.0.1:{agent.info['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("meshlet_memory_used_bytes "):
                return float(line.split()[1])
    raise AssertionError("meshlet_memory_used_bytes not exported")


def test_eviction_across_runtimes_under_one_budget(mixed: AgentProcess, mesh: MeshClient
                                                   ) -> None:
    names = [f"evict-t{i}" for i in range(8)]
    for name in names:
        mesh.register(name, runtime="triton")
    mesh.register("evict-m", runtime="mlserver")
    with triton.InferenceServerClient(mixed.address) as client:
        check_sums(infer(client, "evict-m"))
        for name in names:
            check_sums(infer(client, name))
            used = memory_used(mixed)
            assert 0 < used <= BUDGET, used
            if "evict-t0" not in ready_models(client):
                break
        else:
            raise AssertionError(f"8 Triton models never filled the budget ({used} bytes used)")
        assert names.index(name) >= 2, "a Python-backend model measured at >= 1/3 of the budget"
        loaded = ready_models(client)
        assert name in loaded and "evict-t0" not in loaded, "the least recently used went first"
        check_sums(infer(client, "evict-t0"))  # and comes back on its next request
    status = mesh.stub.getModelStatus(mm.GetStatusRequest(modelId="evict-t0"))
    assert status.status == mm.ModelStatusInfo.LOADED


def test_type_without_a_backend_is_refused_at_registration(mesh: MeshClient) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        mesh.register("onnx-model", uri="/models/m.onnx", model_type="onnx", runtime="triton")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "onnx" in (raised.value.details() or "")


def test_rejected_config_is_failed_precondition_with_tritons_reason(
    mixed: AgentProcess, mesh: MeshClient, tmp_path: Path
) -> None:
    artifact = tmp_path / "bad"
    (artifact / "1").mkdir(parents=True)
    (artifact / "1" / "model.py").write_text("raise SystemExit('never imported')\n")
    (artifact / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\nno_such_field: 3\n'
    )
    mesh.register("bad-config", uri=str(artifact), model_type="triton", runtime="triton")
    with triton.InferenceServerClient(mixed.address) as client:
        with pytest.raises(InferenceServerException) as raised:
            infer(client, "bad-config")
        assert str(raised.value.status()) == "StatusCode.FAILED_PRECONDITION"
        assert "bad-config" in raised.value.message()
        assert "triton could not load it" in raised.value.message()
        check_sums(infer(client, "ss-triton"))  # the server is fine


def test_triton_sigkill_mid_traffic_recovers(mixed: AgentProcess, mesh: MeshClient) -> None:
    mesh.register("crash-t", runtime="triton")
    [server] = wait_for(lambda: triton_pids(mixed.pid), what="tritonserver process")

    async def traffic() -> tuple[int, int]:
        async with triton_aio.InferenceServerClient(mixed.address) as c:
            check_sums(await infer_aio(c, "crash-t"))
            os.kill(server, signal.SIGKILL)
            return await until_recovered(c, ["crash-t"], 10, timeout_s=90)

    ok_after, _failed = asyncio.run(traffic())
    assert ok_after >= 10
    new = triton_pids(mixed.pid)
    assert new and server not in new
    assert mesh.status("crash-t") == mm.ModelStatusInfo.LOADED


def test_dead_python_stub_is_detected_and_the_model_reloaded(mixed: AgentProcess,
                                                             mesh: MeshClient) -> None:
    mesh.register("stub-t", runtime="triton")
    with triton.InferenceServerClient(mixed.address) as client:
        check_sums(infer(client, "stub-t"))
        [server] = triton_pids(mixed.pid)
        stubs = descendant_pids(server, lambda cmd: any("stub-t" in a for a in cmd))
        assert len(stubs) == 1, stubs
        os.kill(stubs[0], signal.SIGKILL)

        def answered() -> bool:
            try:
                check_sums(infer(client, "stub-t"))
                return True
            except InferenceServerException as err:
                assert str(err.status()) in ("StatusCode.UNAVAILABLE", "StatusCode.INTERNAL")
                return False

        wait_for(answered, timeout_s=60, what="the model answering again")
        new = descendant_pids(server, lambda cmd: any("stub-t" in a for a in cmd))
        assert new and stubs[0] not in new
    assert "stub process of 'stub-t' died" in mixed.log_tail(400)


def test_missing_tritonserver_leaves_mlserver_serving(start_agent: StartAgent,
                                                      tmp_path: Path) -> None:
    agent = start_agent("--demo", "2", MESHLET_RUNTIMES=MIXED,
                        MESHLET_TRITON_SERVER_PATH=str(tmp_path / "no-tritonserver"))
    with triton.InferenceServerClient(agent.address) as client:
        check_sums(infer(client, "simple-string-0"))
    mesh = MeshClient(agent.address)
    mesh.register("ss-triton", runtime="triton")
    status = mesh.stub.ensureLoaded(mm.EnsureLoadedRequest(modelId="ss-triton", sync=True))
    mesh.close()
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    assert "triton" in status.errors[0] and "unavailable" in status.errors[0]
    with triton.InferenceServerClient(agent.address) as client:
        with pytest.raises(InferenceServerException) as raised:
            infer(client, "ss-triton")
        assert str(raised.value.status()) == "StatusCode.UNAVAILABLE"
    url = f"http://127.0.0.1:{agent.info['metrics_port']}/readyz"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read().decode()
    assert body.startswith("ready\nmlserver: up\ntriton: unavailable: ")
    assert "no-tritonserver" in body
    assert "no-tritonserver" in agent.log_tail(200)
