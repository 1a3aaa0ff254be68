"""One real agent with real MLServer behind it, driven by real tritonclient:
every RPC, lazy loading, headers, health, reflection, metrics, and bad input."""

from __future__ import annotations

import importlib.util
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from agent.process import AgentProcess
from agent.proto import model_mesh_pb2 as mm
from tests.clients import MeshClient, check_sums, infer, infer_aio, string_inputs


@pytest.fixture(scope="module")
def client(shared_agent: AgentProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(shared_agent.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def mesh(shared_agent: AgentProcess) -> Iterator[MeshClient]:
    m = MeshClient(shared_agent.address)
    yield m
    m.close()


def status_of(err: InferenceServerException) -> str:
    return str(err.status())


def test_server_rpcs(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "meshlet"
    assert "model_repository" in meta.extensions


def test_first_request_loads_then_answers(client: triton.InferenceServerClient) -> None:
    assert not client.is_model_ready("simple-string-1")
    check_sums(infer(client, "simple-string-1"))
    assert client.is_model_ready("simple-string-1")


async def test_aio_client_infer_and_metadata(shared_agent: AgentProcess) -> None:
    async with triton_aio.InferenceServerClient(shared_agent.address) as c:
        check_sums(await infer_aio(c, "simple-string-2"))
        meta = await c.get_model_metadata("simple-string-2")
        assert meta.name == "simple-string-2"
        assert {t.name for t in meta.inputs} == {"INPUT0", "INPUT1"}


def test_repository_rpcs(client: triton.InferenceServerClient) -> None:
    index = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
    assert len([n for n in index if n.startswith("simple-string-")]) == 30
    # Triton's states for Triton's clients; meshlet's (ModelMesh's names) in the reason.
    assert index["simple-string-4"] == ("UNAVAILABLE", "NOT_LOADED")
    client.load_model("simple-string-4")
    assert client.is_model_ready("simple-string-4")
    index = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
    assert index["simple-string-4"] == ("READY", "LOADED")
    ready = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    assert "simple-string-4" in ready
    client.unload_model("simple-string-4")
    assert not client.is_model_ready("simple-string-4")
    check_sums(infer(client, "simple-string-4"))  # and back on demand


def test_mm_model_id_header_routes(client: triton.InferenceServerClient) -> None:
    result = infer(client, "ignored-name", headers={"mm-model-id": "simple-string-5"})
    check_sums(result)
    assert result.get_response().model_name == "simple-string-5"


def test_health_and_reflection(shared_agent: AgentProcess) -> None:
    with grpc.insecure_channel(shared_agent.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "mmesh.ModelMesh"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
        ])))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"inference.GRPCInferenceService", "mmesh.ModelMesh",
                "grpc.health.v1.Health"} <= names
        assert replies[1].file_descriptor_response.file_descriptor_proto


def test_metrics_endpoint(shared_agent: AgentProcess, client: triton.InferenceServerClient) -> None:
    infer(client, "simple-string-6")
    base = f"http://127.0.0.1:{shared_agent.info['metrics_port']}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    assert 'meshlet_infer_requests_total{code="OK"}' in body
    assert "meshlet_models_loaded" in body
    samples = {line.split()[0]: float(line.split()[1]) for line in body.splitlines()
               if line.startswith("meshlet_node_") or line.startswith("meshlet_runtime_rss")}
    assert samples["meshlet_node_memory_limit_bytes"] > samples[
        "meshlet_node_memory_available_bytes"] > 0
    assert samples["meshlet_node_cpu_limit_cores"] >= 1
    assert samples["meshlet_runtime_rss_bytes"] > 10 * 2**20  # an MLServer process is there
    with urllib.request.urlopen(f"{base}/readyz", timeout=10) as resp:
        assert resp.status == 200
        assert resp.read().decode() == "ready\nmlserver: up\n"


# --- bad input: each gets its status, and the agent keeps serving -----------------


def test_unknown_model_is_not_found(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        infer(client, "no-such-model")
    assert status_of(err.value) == "StatusCode.NOT_FOUND"
    assert "no-such-model" in err.value.message()


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ("short", "INPUT0"),
        ("int32", "INPUT1"),
        ("not-a-number", "INPUT0"),
    ],
)
def test_malformed_tensor_is_invalid_argument(
    client: triton.InferenceServerClient, inputs: str, named: str
) -> None:
    good = string_inputs()
    if inputs == "short":
        bad = triton.InferInput("INPUT0", [15], "BYTES")
        bad.set_data_from_numpy(np.array([b"1"] * 15, dtype=np.object_))
        tensors = [bad, good[1]]
    elif inputs == "int32":
        bad = triton.InferInput("INPUT1", [16], "INT32")
        bad.set_data_from_numpy(np.arange(16, dtype=np.int32))
        tensors = [good[0], bad]
    else:
        bad = triton.InferInput("INPUT0", [16], "BYTES")
        bad.set_data_from_numpy(np.array([b"x"] * 16, dtype=np.object_))
        tensors = [bad, good[1]]
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple-string-7", tensors)
    assert status_of(err.value) == "StatusCode.INVALID_ARGUMENT"
    assert named in err.value.message()


@pytest.mark.parametrize("bad_id", ["a/b", "..", "x..y", "nul\x00id", "x" * 257])
def test_bad_model_ids_are_invalid_argument(mesh: MeshClient, bad_id: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        mesh.register(bad_id)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unsupported_scheme_is_invalid_argument(mesh: MeshClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        mesh.register("ftp-model", uri="ftp://example.com/model")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ftp" in str(err.value.details())


def test_a_missing_local_path_is_invalid_argument_at_registration(
    mesh: MeshClient, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(grpc.RpcError) as err:
        mesh.register("nowhere", uri=f"file://{missing}", model_type="sklearn")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"storage uri 'file://{missing}': {missing} does not exist"
    assert mesh.status("nowhere") == mm.ModelStatusInfo.NOT_FOUND


def test_a_type_another_runtime_serves_is_invalid_argument_naming_the_fix(
    mesh: MeshClient,
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        mesh.register("torch-model", uri="builtin://simple-string", model_type="pytorch")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "model type 'pytorch' is served by runtime 'triton', not 'mlserver': register it with "
        '--runtime triton (ModelMesh API: modelInfo.key {"runtime": "triton"})'
    )


@pytest.mark.skipif(importlib.util.find_spec("mlserver_xgboost") is not None,
                    reason="mlserver-xgboost is installed here")
def test_a_type_whose_package_is_missing_is_failed_precondition(mesh: MeshClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        mesh.register("xgb", uri="s3://models/xgb/model.bst", model_type="xgboost")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (err.value.details() or "").endswith(": pip install mlserver-xgboost")
    assert mesh.status("xgb") == mm.ModelStatusInfo.NOT_FOUND


def test_request_over_limit_is_resource_exhausted(client: triton.InferenceServerClient) -> None:
    tensors = string_inputs()
    huge = np.array([b"9" * 80_000] * 16, dtype=np.object_)  # 1.3 MB: over the 1 MiB limit
    tensors[0].set_data_from_numpy(huge)
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple-string-8", tensors)
    assert status_of(err.value) == "StatusCode.RESOURCE_EXHAUSTED"
    check_sums(infer(client, "simple-string-8"))


def test_model_larger_than_budget(mesh: MeshClient, client: triton.InferenceServerClient) -> None:
    mesh.register("too-big", size_hint=2**40)
    with pytest.raises(InferenceServerException) as err:
        infer(client, "too-big")
    assert status_of(err.value) == "StatusCode.RESOURCE_EXHAUSTED"
    assert "budget" in err.value.message()


def test_failed_load_is_failed_precondition_and_retried(
    mesh: MeshClient, client: triton.InferenceServerClient, tmp_path: Path
) -> None:
    artifact = tmp_path / "own-settings"
    artifact.mkdir()  # there at registration (checked), gone by the first load
    mesh.register("late-artifact", uri=str(artifact), model_type="mlserver")
    artifact.rmdir()
    with pytest.raises(InferenceServerException) as err:
        infer(client, "late-artifact")
    assert status_of(err.value) == "StatusCode.FAILED_PRECONDITION"
    assert "late-artifact" in err.value.message()
    assert mesh.status("late-artifact") == mm.ModelStatusInfo.LOADING_FAILED
    entry = next(m for m in client.get_model_repository_index().models
                 if m.name == "late-artifact")
    assert entry.state == "UNAVAILABLE"
    assert entry.reason.startswith("LOADING_FAILED: ") and "does not exist" in entry.reason
    # Provide the artifact; the next request retries the load and succeeds.
    artifact.mkdir()
    (artifact / "model-settings.json").write_text(
        '{"implementation": "adapters.mlserver.simple_string.SimpleStringModel"}'
    )
    check_sums(infer(client, "late-artifact"))


def test_reregistration(mesh: MeshClient, client: triton.InferenceServerClient) -> None:
    mesh.register("rereg")
    check_sums(infer(client, "rereg"))
    mesh.register("rereg")  # same spec: a no-op, stays loaded
    assert client.is_model_ready("rereg")
    mesh.register("rereg", size_hint=12345)  # a different spec replaces and unloads
    assert not client.is_model_ready("rereg")
    assert mesh.status("rereg") == mm.ModelStatusInfo.NOT_LOADED


def test_unregister(mesh: MeshClient, client: triton.InferenceServerClient) -> None:
    mesh.register("short-lived", load=True)
    assert client.is_model_ready("short-lived")
    mesh.stub.unregisterModel(mm.UnregisterModelRequest(modelId="short-lived"))
    assert mesh.status("short-lived") == mm.ModelStatusInfo.NOT_FOUND
    with pytest.raises(InferenceServerException):
        infer(client, "short-lived")


def test_agent_survived_everything(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
