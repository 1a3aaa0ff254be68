"""Models loaded through the node cache by real agents and real MLServer: a
real scikit-learn model from http://, s3:// (moto) and file://, surviving
restarts, SIGKILL, storage outages and a corrupt blob, shared by two agents."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import joblib
import numpy as np
import pytest
import tritonclient.grpc as triton
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from agent.cli.main import main as cli
from agent.process import AgentProcess
from agent.proto import model_mesh_pb2 as mm
from tests.clients import MeshClient
from tests.servers import FileServer, moto_server

X = np.array([[0.1, 0.2, 0.0, 0.3], [5.0, 4.0, 6.0, 5.5], [0.0, 0.1, 0.2, 0.1],
              [6.0, 5.5, 4.5, 6.2]])
Y = np.array([0, 1, 0, 1])
SECRET = "e2e-s3cret-Never-Printed-42"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real scikit-learn model, as a user would export it."""
    root = tmp_path_factory.mktemp("served")
    joblib.dump(LogisticRegression().fit(X, Y), root / "model.joblib")
    return root / "model.joblib"


@pytest.fixture
def server(model_file: Path) -> Iterator[FileServer]:
    with FileServer(model_file.parent) as s:
        yield s


def predict(address: str, model_id: str) -> list[int]:
    client = triton.InferenceServerClient(address)
    try:
        inp = triton.InferInput("predict", list(X.shape), "FP64")
        inp.set_data_from_numpy(X)
        result = client.infer(model_id, [inp])
        return [int(v) for v in result.as_numpy("predict").ravel()]
    finally:
        client.close()


def metric(agent: AgentProcess, name: str) -> float:
    url = f"http://127.0.0.1:{agent.info['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    assert values, f"{name} not exported"
    return sum(values)


def cache_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert cli(["cache", *args]) == 0
    return capsys.readouterr().out


def test_http_model_survives_restart_sigkill_and_storage_outage(
    start_agent: Callable[..., AgentProcess], server: FileServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "agent"
    agent = start_agent(data_dir=data)
    mesh = MeshClient(agent.address)
    mesh.register("iris", uri=server.url("model.joblib"), model_type="sklearn")
    mesh.close()
    assert predict(agent.address, "iris") == Y.tolist()
    assert server.gets == {"/model.joblib": 1}
    listing = cache_cli(capsys, "ls", "--cache-dir", str(data / "cache"))
    assert server.url("model.joblib") in listing
    assert listing.rstrip().endswith("\n1 entry")

    server.failing = True  # from here on only the cache has the model
    agent.stop()
    agent = start_agent(data_dir=data)
    assert predict(agent.address, "iris") == Y.tolist()
    agent.kill()
    agent = start_agent(data_dir=data)
    assert predict(agent.address, "iris") == Y.tolist()
    assert server.gets == {"/model.joblib": 1}
    assert metric(agent, 'meshlet_cache_lookups_total{result="hit"}') >= 1
    stats = cache_cli(capsys, "stats", "--cache-dir", str(data / "cache"))
    assert "blobs:      1 (1 pinned" in stats


def test_s3_model_with_modelmesh_storage_config(
    start_agent: Callable[..., AgentProcess], model_file: Path, tmp_path: Path
) -> None:
    with moto_server(tmp_path / "moto.log") as endpoint:
        anon = {"endpoint_url": endpoint, "region_name": "us-east-1",
                "aws_access_key_id": "seed", "aws_secret_access_key": "seed"}
        iam = boto3.client("iam", **anon)
        iam.create_user(UserName="agent")
        iam.put_user_policy(UserName="agent", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="agent")["AccessKey"]
        iam.close()
        s3 = boto3.client("s3", **anon)
        s3.create_bucket(Bucket="models")
        s3.upload_file(str(model_file), "models", "sklearn/iris/model.joblib")
        s3.close()
        config = tmp_path / "storage-config"
        config.mkdir()
        for name, secret in (("minio", key["SecretAccessKey"]), ("broken", SECRET)):
            (config / name).write_text(json.dumps({
                "type": "s3", "access_key_id": key["AccessKeyId"],
                "secret_access_key": secret, "endpoint_url": endpoint,
                "region": "us-east-1", "bucket": "models",
            }))
        urllib.request.urlopen(urllib.request.Request(  # moto checks keys from now on
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
            headers={"Content-Type": "text/plain"})).close()
        agent = start_agent(MESHLET_STORAGE_CONFIG_DIR=str(config))
        mesh = MeshClient(agent.address)
        # ModelMesh's own form: a bucket-relative path and the key in modelInfo.key.
        mesh.register("iris", uri="sklearn/iris", model_type="sklearn",
                      storage_key="minio", bucket="models")
        mesh.register("denied", uri="s3://models/sklearn/iris/", model_type="sklearn",
                      storage_key="broken")
        mesh.register("missing", uri="s3://models/nothing-here/m.joblib",
                      model_type="sklearn", storage_key="minio")
        mesh.close()
        assert predict(agent.address, "iris") == Y.tolist()
        for model_id in ("denied", "missing"):
            with pytest.raises(InferenceServerException) as raised:
                predict(agent.address, model_id)
            assert str(raised.value.status()) == "StatusCode.FAILED_PRECONDITION"
            assert "s3://models/" in raised.value.message()
            assert SECRET not in raised.value.message()
        assert SECRET not in agent.log_tail(1000)


def test_corrupt_blob_is_fetched_again(
    start_agent: Callable[..., AgentProcess], model_file: Path, tmp_path: Path
) -> None:
    agent = start_agent()
    mesh = MeshClient(agent.address)
    mesh.register("iris", uri=f"file://{model_file}", model_type="sklearn", load=True)
    mesh.close()
    blobs = list((agent.data_dir / "cache" / "blobs").glob("*/*.zst"))
    assert len(blobs) == 1
    client = triton.InferenceServerClient(agent.address)
    client.unload_model("iris")
    client.close()
    data = bytearray(blobs[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    blobs[0].write_bytes(bytes(data))
    assert predict(agent.address, "iris") == Y.tolist()
    assert metric(agent, "meshlet_cache_corrupt_blobs_total") == 1


def test_two_agents_share_one_cache(
    start_agent: Callable[..., AgentProcess], server: FileServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "node-cache"
    agents = [start_agent(MESHLET_CACHE_DIR=str(cache)) for _ in range(2)]
    for agent in agents:
        mesh = MeshClient(agent.address)
        mesh.register("iris", uri=server.url("model.joblib"), model_type="sklearn")
        mesh.close()
    answers: dict[int, list[int]] = {}

    def ask(i: int) -> None:
        answers[i] = predict(agents[i].address, "iris")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == {0: Y.tolist(), 1: Y.tolist()}
    stats = cache_cli(capsys, "stats", "--cache-dir", str(cache))
    assert "blobs:      1 (1 pinned" in stats
    listing = cache_cli(capsys, "ls", "--cache-dir", str(cache))
    assert "   2  " in listing, listing  # pinned by both agents' loaded models
    agents[0].stop()
    assert predict(agents[1].address, "iris") == Y.tolist()


def test_prefetch_and_quota(
    start_agent: Callable[..., AgentProcess], server: FileServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    big = server.root / "big.joblib"
    big.write_bytes(np.random.default_rng(0).bytes(3 * 2**20))
    agent = start_agent(MESHLET_CACHE_QUOTA_BYTES=str(2**20))
    capsys.readouterr()
    code = cli(["model", "add", "iris", "--uri", server.url("model.joblib"), "--type",
                "sklearn", "--prefetch", "--address", agent.address])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cache:   pulled" in out
    assert server.gets == {"/model.joblib": 1}
    mesh = MeshClient(agent.address)
    assert mesh.status("iris") == mm.ModelStatusInfo.NOT_LOADED
    assert predict(agent.address, "iris") == Y.tolist()
    assert server.gets == {"/model.joblib": 1}

    mesh.register("big", uri=server.url("big.joblib"), model_type="sklearn")
    mesh.close()
    with pytest.raises(InferenceServerException) as raised:
        predict(agent.address, "big")
    assert str(raised.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
    assert "big" in raised.value.message()
    assert cli(["model", "add", "big2", "--uri", server.url("big.joblib"), "--type",
                "sklearn", "--prefetch", "--address", agent.address]) == 1
    assert "RESOURCE_EXHAUSTED" in capsys.readouterr().err
