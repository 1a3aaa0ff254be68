"""MLServerAdapter with a real MLServer process: loads, inference through the
channel (bytes_contents and raw_input_contents requests), errors, unloads,
a runtime killed under it, and stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from adapters.base import RuntimeOptions
from adapters.mlserver import process as mlserver_process
from adapters.mlserver.adapter import MLServerAdapter
from adapters.mlserver.framing import HEADER, KIND_INFER
from agent.errors import Code, LoadFailed, RuntimeRequestFailed, RuntimeUnavailable
from agent.proto import grpc_service_pb2 as pb
from agent.proto import grpc_service_pb2_grpc as pb_grpc
from agent.registry.spec import ModelSpec
from tests.adapters.helpers import pid_exists, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

A = list(range(-8, 8))
B = [5] * 16


def options(work_dir: Path) -> RuntimeOptions:
    return RuntimeOptions(
        work_dir=work_dir,
        start_timeout_s=60,
        stop_grace_s=5,
        load_timeout_s=30,
        restart_backoff_s=0.05,
        channel_connections=2,
    )


def simple(model_id: str) -> ModelSpec:
    return ModelSpec(model_id, "builtin://simple-string", model_type="simple-string")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlserver")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter(work_dir: Path) -> AsyncIterator[MLServerAdapter]:
    adapter = MLServerAdapter(options(work_dir))
    try:
        await adapter.start()
        await adapter.load(simple("ss"), None)
        yield adapter
    finally:
        await adapter.stop()


def infer_request(
    model: str = "ss", raw: bool = False, b: list[int] = B, shape1: int = 16
) -> bytes:
    message = pb.ModelInferRequest(model_name=model)
    for name, values, shape in (("INPUT0", A, 16), ("INPUT1", b, shape1)):
        elements = [str(v).encode() for v in values]
        message.inputs.add(name=name, datatype="BYTES", shape=[shape])
        if raw:
            # As tritonclient's InferInput.set_data_from_numpy builds it.
            array = np.array(elements, dtype=np.object_)
            message.raw_input_contents.append(serialize_byte_tensor(array).item())
        else:
            message.inputs[-1].contents.bytes_contents.extend(elements)
    return message.SerializeToString()


def outputs(answer: bytes) -> dict[str, list[int]]:
    response = pb.ModelInferResponse.FromString(answer)
    got = {}
    for index, out in enumerate(response.outputs):
        if response.raw_output_contents:
            values = list(deserialize_bytes_tensor(response.raw_output_contents[index]))
        else:
            values = list(out.contents.bytes_contents)
        got[out.name] = [int(v) for v in values]
    return got


EXPECTED = {
    "OUTPUT0": [x + y for x, y in zip(A, B, strict=True)],
    "OUTPUT1": [x - y for x, y in zip(A, B, strict=True)],
}


async def test_started_and_serving(adapter: MLServerAdapter) -> None:
    assert adapter.available
    assert adapter.unavailable_reason == ""
    [info] = adapter.processes()
    assert info.kind == "mlserver"
    assert info.models == 1
    assert info.grpc_address.startswith("127.0.0.1:")
    assert pid_exists(info.pid)


@pytest.mark.parametrize("raw", [False, True], ids=["bytes_contents", "raw_input_contents"])
async def test_infer(adapter: MLServerAdapter, raw: bool) -> None:
    answer = await adapter.infer("ss", infer_request(raw=raw))
    assert bool(pb.ModelInferResponse.FromString(answer).raw_output_contents) == raw
    assert outputs(answer) == EXPECTED


async def test_many_requests_in_flight(adapter: MLServerAdapter) -> None:
    answers = await asyncio.gather(
        *(adapter.infer("ss", infer_request(b=[i] * 16)) for i in range(50))
    )
    for i, answer in enumerate(answers):
        assert outputs(answer)["OUTPUT0"] == [x + i for x in A]


async def test_malformed_tensor_is_invalid_argument_naming_the_input(
    adapter: MLServerAdapter,
) -> None:
    with pytest.raises(RuntimeRequestFailed) as raised:
        await adapter.infer("ss", infer_request(b=B[:15], shape1=15))
    assert raised.value.code == Code.INVALID_ARGUMENT
    assert "input 'INPUT1'" in raised.value.message
    assert "[15]" in raised.value.message


async def test_garbage_request_is_invalid_argument(adapter: MLServerAdapter) -> None:
    with pytest.raises(RuntimeRequestFailed) as raised:
        await adapter.infer("ss", b"\xff\xff\xff not a protobuf")
    assert raised.value.code == Code.INVALID_ARGUMENT


async def test_unload_then_infer_is_not_found(adapter: MLServerAdapter, work_dir: Path) -> None:
    settings_folder = work_dir / "repository" / "short-lived"
    await adapter.load(simple("short-lived"), None)
    assert settings_folder.is_dir()
    assert outputs(await adapter.infer("short-lived", infer_request("short-lived"))) == EXPECTED
    await adapter.unload("short-lived")
    await adapter.unload("short-lived")  # not held any more: not an error
    assert not settings_folder.exists()
    with pytest.raises(RuntimeRequestFailed) as raised:
        await adapter.infer("short-lived", infer_request("short-lived"))
    assert raised.value.code == Code.NOT_FOUND
    assert "short-lived" in raised.value.message


async def test_load_of_unsupported_type_fails(adapter: MLServerAdapter, work_dir: Path) -> None:
    assert not adapter.supports("tensorflow")
    spec = ModelSpec("tf", "builtin://x", model_type="tensorflow")
    with pytest.raises(LoadFailed, match=r"'tf'.*'tensorflow' is not served"):
        await adapter.load(spec, None)
    assert not (work_dir / "repository" / "tf").exists()


async def test_load_failure_carries_mlserver_reason(
    adapter: MLServerAdapter, work_dir: Path, tmp_path: Path
) -> None:
    # Supported type, but its runtime package is not installed here (or the
    # artifact is no model): either way MLServer's own words come back.
    artifact = tmp_path / "model.joblib"
    artifact.write_bytes(b"not a model")
    spec = ModelSpec("broken", str(artifact), model_type="sklearn")
    with pytest.raises(LoadFailed) as raised:
        await adapter.load(spec, artifact)
    assert "model 'broken'" in raised.value.message
    assert "mlserver could not load it: " in raised.value.message
    assert len(raised.value.message) > len("model 'broken': mlserver could not load it: ")
    assert not (work_dir / "repository" / "broken").exists()
    assert adapter.processes()[0].models == 1


async def test_artifact_with_its_own_settings(adapter: MLServerAdapter, tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model-settings.json").write_text(
        '{"name": "ignored", "implementation": "adapters.mlserver.simple_string.SimpleStringModel"}'
    )
    await adapter.load(ModelSpec("own", f"file://{artifact}", model_type="mlserver"), artifact)
    try:
        assert outputs(await adapter.infer("own", infer_request("own"))) == EXPECTED
    finally:
        await adapter.unload("own")


async def test_metadata(adapter: MLServerAdapter) -> None:
    metadata = pb.ModelMetadataResponse.FromString(await adapter.metadata("ss"))
    assert metadata.name == "ss"
    assert [t.name for t in metadata.inputs] == ["INPUT0", "INPUT1"]


async def test_runtime_lists_nothing_but_finds_by_name(adapter: MLServerAdapter) -> None:
    # Loads go through DirectModelRepository.find; its list() is empty, so the
    # repository index shows nothing although "ss" is loaded and ready.
    async with grpc.aio.insecure_channel(adapter.processes()[0].grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        ready = await stub.ModelReady(pb.ModelReadyRequest(name="ss"), timeout=10)
    assert list(index.models) == []
    assert ready.ready


@pytest.mark.parametrize(
    "frame",
    [HEADER.pack(2**31, 1, KIND_INFER), HEADER.pack(0, 1, 99)],
    ids=["over the payload limit", "unknown kind"],
)
async def test_malformed_frame_closes_only_that_connection(
    adapter: MLServerAdapter, work_dir: Path, frame: bytes
) -> None:
    pid = adapter.processes()[0].pid
    reader, writer = await asyncio.open_unix_connection(str(work_dir / "mlserver-0.sock"))
    try:
        writer.write(frame)
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed on us
    finally:
        writer.close()
        await writer.wait_closed()
    assert outputs(await adapter.infer("ss", infer_request())) == EXPECTED
    assert adapter.processes()[0].pid == pid


async def test_predict_size() -> None:
    adapter = MLServerAdapter(options(Path("/nonexistent")))
    assert adapter.predict_size(simple("x"), 0) == 16 * 1024
    hinted = ModelSpec("x", "/a", model_type="sklearn", size_hint=123)
    assert adapter.predict_size(hinted, 10**9) == 123
    assert adapter.predict_size(ModelSpec("x", "/a", model_type="sklearn"), 10) == 2**20
    spec = ModelSpec("x", "s3://b/k", model_type="xgboost")
    assert adapter.predict_size(spec, 4 * 2**20) == int(4 * 2**20 * 1.25)


async def test_settings_uri_outside_the_artifact_is_refused(
    adapter: MLServerAdapter, tmp_path: Path
) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model-settings.json").write_text(
        '{"implementation": "mlserver_sklearn.SKLearnModel", '
        '"parameters": {"uri": "../elsewhere/model.joblib"}}'
    )
    spec = ModelSpec("escape", f"file://{artifact}", model_type="mlserver")
    with pytest.raises(LoadFailed, match="outside the artifact"):
        await adapter.load(spec, artifact)


async def test_runtime_death_reports_lost_models_and_restarts(tmp_path: Path) -> None:
    adapter = MLServerAdapter(options(tmp_path))
    lost: list[tuple[str, list[str]]] = []
    adapter.set_models_lost_listener(lambda kind, ids: lost.append((kind, sorted(ids))))
    try:
        await adapter.start()
        await adapter.load(simple("a"), None)
        await adapter.load(simple("b"), None)
        old_pid = adapter.processes()[0].pid

        os.kill(old_pid, signal.SIGKILL)
        await wait_until(lambda: lost, timeout_s=30)
        assert lost == [("mlserver", ["a", "b"])]
        with pytest.raises((RuntimeUnavailable, RuntimeRequestFailed)):
            await adapter.infer("a", infer_request("a"))  # down, or up without "a"

        await wait_until(lambda: adapter.available, timeout_s=60)
        [info] = adapter.processes()
        assert info.pid != old_pid
        assert info.models == 0
        assert not pid_exists(old_pid)
        await adapter.load(simple("a"), None)
        assert outputs(await adapter.infer("a", infer_request("a"))) == EXPECTED
    finally:
        await adapter.stop()
        await adapter.stop()
    assert not adapter.available
    assert adapter.unavailable_reason == "stopped"
    assert adapter.processes() == []
    assert not pid_exists(info.pid)
    with pytest.raises(RuntimeUnavailable):
        await adapter.infer("a", infer_request("a"))
    with pytest.raises(RuntimeUnavailable):
        await adapter.load(simple("a"), None)


@pytest.fixture
def taken_ports() -> Iterator[list[int]]:
    """Two loopback ports held by listening sockets for the whole test."""
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
        s.listen()
    yield [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()


async def test_ports_taken_before_the_runtime_binds_them(
    tmp_path: Path, taken_ports: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race free_ports cannot exclude: another process takes the ports
    # between our pick and the runtime's bind. The runtime exits and is
    # respawned on new ports.
    picks: list[list[int]] = []

    def first_pick_taken(count: int) -> list[int]:
        picks.append(taken_ports if not picks else free_ports(count))
        return picks[-1]

    free_ports = mlserver_process.free_ports
    monkeypatch.setattr(mlserver_process, "free_ports", first_pick_taken)
    adapter = MLServerAdapter(options(tmp_path))
    try:
        await adapter.start()
        assert len(picks) >= 2
        [info] = adapter.processes()
        assert info.grpc_address != f"127.0.0.1:{taken_ports[0]}"
        await adapter.load(simple("ss"), None)
        assert outputs(await adapter.infer("ss", infer_request())) == EXPECTED
    finally:
        await adapter.stop()


def sklearn_artifact(folder: Path) -> Path:
    """A real, tiny scikit-learn model (a pickle of ~1 KiB) as MLServer takes it."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    folder.mkdir(parents=True)
    model = LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]],
                                     [0, 1, 1, 0])
    joblib.dump(model, folder / "model.joblib")
    return folder


async def test_first_model_of_a_type_is_not_charged_for_the_runtimes_import(
    tmp_path: Path,
) -> None:
    adapter = MLServerAdapter(options(tmp_path / "work"))
    try:
        await adapter.start()
        [info] = adapter.processes()
        before = mlserver_process_rss(info.pid)
        sizes = []
        for name in ("lr-1", "lr-2"):
            artifact = sklearn_artifact(tmp_path / name)
            spec = ModelSpec(name, str(artifact), model_type="sklearn")
            sizes.append(await adapter.load(spec, artifact, size_bytes=2**20))
        grown = mlserver_process_rss(info.pid) - before
    finally:
        await adapter.stop()
    # Importing scikit-learn grows MLServer by tens of MiB; none of it is a
    # model's: each tiny model keeps its prediction (None) or a small figure.
    assert grown > 20 * 2**20, f"the import should have grown the process ({grown} bytes)"
    assert all(size is None or size < 4 * 2**20 for size in sizes), sizes


def mlserver_process_rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)

