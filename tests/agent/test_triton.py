"""Real ``tritonserver`` (from the nvidia-pytriton wheel) behind real agents:
load on first request, eviction across runtimes under one budget, the same
answer from MLServer and Triton, a SIGKILL of Triton mid-traffic and of the
agent itself (neither leaves a Python-backend stub or a shared-memory region
behind), a rejected config, a type no backend serves, and a node where Triton
is missing."""

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
from tests.adapters.triton.processes import (
    family,
    regions,
    server_prefix,
    stub_regions,
    stubs,
)
from tests.clients import MeshClient, check_sums, infer, infer_aio, until_recovered
from tests.conftest import FAST_ENV, descendant_pids, pid_gone, wait_for

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


async def hammer(client: triton_aio.InferenceServerClient, model: str,
                 answered: asyncio.Event, stop: asyncio.Event) -> None:
    """Requests to ``model`` one after another until ``stop``, whatever they answer."""
    while not stop.is_set():
        try:
            check_sums(await infer_aio(client, model, client_timeout=30))
            answered.set()
        except InferenceServerException:
            await asyncio.sleep(0.01)  # poll: the server is away


async def kill_under_traffic(address: str, models: list[str], kill: Callable[[], None]) -> None:
    """Keep 4 requests per model in flight through the agent at ``address``,
    and ``kill`` once they are answered."""
    async with triton_aio.InferenceServerClient(address) as client:
        answered, stop = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(hammer(client, m, answered, stop))
                 for m in models for _ in range(4)]  # fmt: skip
        await asyncio.wait_for(answered.wait(), 60)
        kill()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


def test_triton_sigkill_mid_traffic_recovers(mixed: AgentProcess, mesh: MeshClient) -> None:
    mesh.register("crash-t", runtime="triton")
    with triton.InferenceServerClient(mixed.address) as client:
        check_sums(infer(client, "crash-t"))  # loaded: its stub is up
    [server] = wait_for(lambda: triton_pids(mixed.pid), what="tritonserver process")
    prefix = server_prefix(server)
    old_stubs = stubs(prefix)
    old_regions = stub_regions(old_stubs)
    assert old_stubs and all(path.exists() for path in old_regions.values())

    asyncio.run(kill_under_traffic(mixed.address, ["crash-t"],
                                   lambda: os.kill(server, signal.SIGKILL)))  # fmt: skip

    async def recovered() -> tuple[int, int]:
        async with triton_aio.InferenceServerClient(mixed.address) as c:
            return await until_recovered(c, ["crash-t"], 10, timeout_s=90)

    ok_after, _failed = asyncio.run(recovered())
    assert ok_after >= 10
    new = triton_pids(mixed.pid)
    assert new and server not in new
    assert mesh.status("crash-t") == mm.ModelStatusInfo.LOADED
    # Not eventually: the new server was started only once its predecessor's
    # guard had killed the stubs and removed their regions.
    assert not [pid for pid in old_stubs if not pid_gone(pid)], "stubs outlived their server"
    assert not [p for p in old_regions.values() if p.exists()], "regions outlived their server"
    assert {p.name for p in regions(prefix)} == {
        p.name for p in stub_regions(stubs(prefix)).values()
    }, "every region left belongs to a live stub of the new server"
    assert "[triton-0] exited unexpectedly (killed by SIGKILL)" in mixed.log_tail(2000)


def test_agent_sigkill_leaves_no_triton_process_or_region(start_agent: StartAgent) -> None:
    agent = start_agent(MESHLET_RUNTIMES='["triton"]')
    mesh = MeshClient(agent.address)
    try:
        for model in ("kill-a", "kill-b"):
            mesh.register(model, runtime="triton", load=True)
    finally:
        mesh.close()
    [server] = triton_pids(agent.pid)
    prefix = server_prefix(server)
    everyone = family(agent.pid, prefix)  # the guard, the server, two stubs
    assert server in everyone and len(stubs(prefix)) == 2 and len(regions(prefix)) == 2

    asyncio.run(kill_under_traffic(agent.address, ["kill-a", "kill-b"], agent.kill))

    wait_for(lambda: all(map(pid_gone, everyone)) and not stubs(prefix),
             timeout_s=60, what="the guard, tritonserver and its stubs gone")  # fmt: skip
    wait_for(lambda: not regions(prefix), timeout_s=60, what="the shared-memory regions gone")


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
