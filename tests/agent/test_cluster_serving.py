"""Real agents on loopback serving as one: register on one node and infer on
any other, lose the node holding a model under traffic (SIGKILL) or drain it
(SIGTERM) with no failed request, and a frozen node that comes back.

Each agent runs its own MLServer; the clients are ``tritonclient`` and our
ModelMesh stubs, with no retries of their own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from agent.process import AgentProcess
from agent.proto import meshlet_pb2 as pb
from agent.proto import meshlet_pb2_grpc as pb_grpc
from agent.proto import model_mesh_pb2 as mm
from tests.certs import make_ca, make_peer_tls
from tests.clients import MeshClient, check_sums, infer, infer_aio
from tests.conftest import wait_for

StartAgent = Callable[..., AgentProcess]
KEY = "test-cluster-key-0123456789abcdef"
CLUSTER_ENV = {
    "MESHLET_CLUSTER_KEYS": json.dumps([KEY]),
    "MESHLET_PEER_HOST": "127.0.0.1",
    "MESHLET_GOSSIP_INTERVAL_S": "0.2",
    "MESHLET_REGISTRY_SYNC_INTERVAL_S": "1",
    "MESHLET_COPY_CHECK_INTERVAL_S": "0.5",
    "MESHLET_DRAIN_TIMEOUT_S": "20",
    "MESHLET_MEMORY_BUDGET_BYTES": str(256 * 2**20),
}


def peer(agent: AgentProcess) -> str:
    return f"127.0.0.1:{agent.info['peer_port']}"


def members(agent: AgentProcess) -> dict[str, pb.ClusterMember]:
    with grpc.insecure_channel(agent.address) as channel:
        response = pb_grpc.NodeStub(channel).Members(pb.MembersRequest(), timeout=10)
    return {m.address: m for m in response.members}


def holds(agent: AgentProcess, model_id: str) -> bool:
    """Whether ``agent`` has ``model_id`` loaded (False once it is unregistered)."""
    with grpc.insecure_channel(agent.address) as channel:
        try:
            response = pb_grpc.NodeStub(channel).ModelSize(
                pb.ModelSizeRequest(model_id=model_id), timeout=10)
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise
    return bool(response.loaded)


def start_cluster(start_agent: StartAgent, n: int, **env: str) -> list[AgentProcess]:
    """``n`` agents joined through the first; returns once each sees all alive."""
    first = start_agent(**CLUSTER_ENV, **env)
    others = [start_agent("--peers", peer(first), wait=False, **CLUSTER_ENV, **env)
              for _ in range(n - 1)]
    for agent in others:
        agent.wait_ready(120)
    agents = [first, *others]
    everyone = {peer(a) for a in agents}
    for agent in agents:
        wait_for(lambda a=agent: {p for p, m in members(a).items() if m.state == "ALIVE"}
                 == everyone, timeout_s=30, what=f"{peer(agent)} sees all {n} alive")
    return agents


def test_register_on_one_node_infer_on_every_other(start_agent: StartAgent) -> None:
    a, b, c = start_cluster(start_agent, 3)
    mesh = MeshClient(a.address)
    mesh.register("shared-model")
    for agent in (b, c):
        client = triton.InferenceServerClient(agent.address)

        def answers(client: triton.InferenceServerClient = client) -> bool:
            try:
                check_sums(infer(client, "shared-model"))
                return True
            except InferenceServerException as err:
                # Not replicated here yet: the only answer allowed meanwhile.
                assert err.status() == "StatusCode.NOT_FOUND", err
                return False

        wait_for(answers, timeout_s=20, what=f"{agent.address} answers for shared-model")
    holders = [x for x in (a, b, c) if holds(x, "shared-model")]
    assert holders, "nobody loaded the model"
    # Every node's status names every copy, wherever it asks.
    status = MeshClient(c.address).stub.getModelStatus(mm.GetStatusRequest(modelId="shared-model"))
    assert status.status == mm.ModelStatusInfo.LOADED
    wait_for(lambda: all(members(x)[peer(h)].models >= 1 for x in (a, b, c) for h in holders),
             timeout_s=10, what="every node sees the holders' inventories")

    # A delete on another node reaches every node and stays.
    MeshClient(b.address).stub.unregisterModel(mm.UnregisterModelRequest(modelId="shared-model"))
    for agent in (a, b, c):
        wait_for(lambda x=agent: MeshClient(x.address).status("shared-model")
                 == mm.ModelStatusInfo.NOT_FOUND, timeout_s=20,
                 what=f"{agent.address} forgets shared-model")
    wait_for(lambda: not any(holds(x, "shared-model") for x in (a, b, c)), timeout_s=20,
             what="every copy unloaded")


async def _traffic(
    address: str, models: list[str], stop: asyncio.Event, rate_hz: float
) -> tuple[int, list[str]]:
    """Send requests round ``models`` at about ``rate_hz`` until ``stop``; no retries."""
    ok, failures = 0, []
    async with triton_aio.InferenceServerClient(address) as client:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        i = 0

        async def one(model: str) -> None:
            nonlocal ok
            try:
                check_sums(await infer_aio(client, model, client_timeout=30))
                ok += 1
            except InferenceServerException as err:
                failures.append(f"{model}: {err}")

        next_at = loop.time()
        while not stop.is_set():
            task = asyncio.create_task(one(models[i % len(models)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
            next_at += 1 / rate_hz
            await asyncio.sleep(max(0.0, next_at - loop.time()))  # pacing, not a wait
        await asyncio.gather(*pending)
    return ok, failures


def _lose_holder_under_traffic(
    agents: list[AgentProcess], lose: Callable[[AgentProcess], None], rate_hz: float
) -> tuple[int, list[str], AgentProcess]:
    """Traffic enters at the first agent; the models are loaded on the second
    (registered and loaded there), which is then lost."""
    entry, victim = agents[0], agents[1]
    models = [f"busy-{i}" for i in range(4)]
    mesh = MeshClient(victim.address)
    for model in models:
        mesh.register(model, load=True)
    wait_for(lambda: all(MeshClient(entry.address).status(m) == mm.ModelStatusInfo.LOADED
                         for m in models), timeout_s=20, what="the entry node sees the copies")
    client = triton.InferenceServerClient(entry.address)
    for model in models:
        check_sums(infer(client, model))

    async def run() -> tuple[int, list[str]]:
        stop = asyncio.Event()
        traffic = asyncio.create_task(_traffic(entry.address, models, stop, rate_hz))
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1.5)  # steady traffic before the loss  # poll
        await loop.run_in_executor(None, lose, victim)
        await asyncio.sleep(3.0)  # traffic after the loss  # poll
        stop.set()
        return await traffic

    ok, failures = asyncio.run(run())
    return ok, failures, victim


@pytest.mark.parametrize("recent_s", ["60", "0"], ids=["second-copy", "no-second-copy"])
def test_sigkill_of_the_holder_under_traffic_fails_no_request(
    start_agent: StartAgent, recent_s: str
) -> None:
    """With a second copy kept (the default), requests move to it; without,
    they are placed on a survivor, which loads the model."""
    agents = start_cluster(start_agent, 4, MESHLET_COPY_RECENT_S=recent_s,
                           MESHLET_COPY_RATE_THRESHOLD="1e9")
    ok, failures, victim = _lose_holder_under_traffic(agents, AgentProcess.kill, rate_hz=100)
    assert not failures, f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}"
    assert ok > 300
    wait_for(lambda: members(agents[0])[peer(victim)].state == "DEAD", timeout_s=10,
             what="the killed node declared dead")


def test_sigterm_drain_fails_no_request(start_agent: StartAgent) -> None:
    agents = start_cluster(start_agent, 3)

    def drain(agent: AgentProcess) -> None:
        assert agent.stop() == 0

    ok, failures, victim = _lose_holder_under_traffic(agents, drain, rate_hz=100)
    assert not failures, f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}"
    assert ok > 300
    assert members(agents[0])[peer(victim)].state == "LEFT"


def test_a_frozen_node_comes_back_and_catches_up(start_agent: StartAgent) -> None:
    a, b, c = start_cluster(start_agent, 3)
    os.kill(b.pid, signal.SIGSTOP)  # cut off: it answers nothing, like a partition
    try:
        wait_for(lambda: members(a)[peer(b)].state == "DEAD", timeout_s=15,
                 what="the frozen node declared dead")
        MeshClient(a.address).register("while-away")
    finally:
        os.kill(b.pid, signal.SIGCONT)
    for agent in (a, c):
        wait_for(lambda x=agent: members(x)[peer(b)].state == "ALIVE", timeout_s=20,
                 what=f"{peer(agent)} sees the node back")
    # It learned what was registered while it was away, and serves it.
    wait_for(lambda: MeshClient(b.address).status("while-away") != mm.ModelStatusInfo.NOT_FOUND,
             timeout_s=20, what="the registration reached the returning node")
    check_sums(infer(triton.InferenceServerClient(b.address), "while-away"))
    # Its state is taken again (it was forgotten when it was declared dead):
    # the others see what it loads, and route to it.
    holder = next(x for x in (a, b, c) if holds(x, "while-away"))
    for agent in (a, b, c):
        wait_for(lambda x=agent: members(x)[peer(holder)].models >= 1, timeout_s=20,
                 what=f"{peer(agent)} sees what {peer(holder)} holds")


def test_agents_over_mutual_tls_form_a_cluster_and_forward(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    ca, ca_file = make_ca(tmp_path / "ca", "meshlet test CA")
    tls = make_peer_tls(tmp_path / "node", ca, ca_file)
    env = {"MESHLET_PEER_TLS_CERT": str(tls.cert_file),
           "MESHLET_PEER_TLS_KEY": str(tls.key_file), "MESHLET_PEER_TLS_CA": str(ca_file),
           "MESHLET_COPY_RECENT_S": "0"}
    a, b = start_cluster(start_agent, 2, **env)
    MeshClient(b.address).register("over-tls", load=True)
    wait_for(lambda: members(a)[peer(b)].models >= 1, timeout_s=20,
             what="the inventory gossiped over TLS")
    check_sums(infer(triton.InferenceServerClient(a.address), "over-tls"))
    assert not holds(a, "over-tls"), "answered by forwarding, not by a load on the entry node"

    # A node without a certificate is not let in.
    plain = start_agent("--peers", peer(a), **CLUSTER_ENV)
    wait_for(lambda: "no seed answered" in plain.log_tail(), timeout_s=20,
             what="the plain node's join refused")
    assert peer(plain) not in members(a)
    assert list(members(plain)) == [peer(plain)]
