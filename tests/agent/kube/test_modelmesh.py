"""ModelMesh compatibility: Predictors and InferenceServices served as models,
their status written in ModelMesh's shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.agent.kube.apiserver import FakeApiServer
from tests.agent.kube.conftest import KubeNode, example, until

PREDICTORS = {d["metadata"]["name"]: d for d in example("predictors")}
ISVCS = {d["metadata"]["name"]: d for d in example("inferenceservices")}
NS = "modelmesh-serving"


@pytest.fixture
def storage_config(tmp_path: Path) -> Path:
    """A ModelMesh storage-config Secret, mounted: one JSON file per key."""
    directory = tmp_path / "storage-config"
    directory.mkdir()
    (directory / "localMinIO").write_text(json.dumps({
        "type": "s3", "access_key_id": "AKIA", "secret_access_key": "secret",
        "endpoint_url": "http://minio:9000", "bucket": "modelmesh-example-models",
    }))
    return directory


async def compat_node(make_node: Callable[..., KubeNode], storage_config: Path) -> KubeNode:
    node = make_node(modelmesh_compat=True, storage_config_dir=storage_config)
    await node.start()
    await node.synced()
    return node


def status(server: FakeApiServer, kind: str, name: str) -> dict[str, Any]:
    return server.status(kind, NS, name)


async def test_predictor_is_served_and_its_status_has_modelmesh_shape(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode], storage_config: Path
) -> None:
    apiserver.create(PREDICTORS["example-sklearn-predictor"])
    node = await compat_node(make_node, storage_config)
    model_id = (node.target("example-sklearn-predictor") or ("", ""))[0]
    assert model_id.startswith("example-sklearn-predictor__ksp-")
    spec = node.registry.get(model_id)
    assert spec is not None
    assert spec.uri == "s3://modelmesh-example-models/sklearn/mnist-svm.joblib"
    assert spec.storage_key == "localMinIO"
    await until(lambda: status(apiserver, "Predictor", "example-sklearn-predictor"),
                what="status")
    assert status(apiserver, "Predictor", "example-sklearn-predictor") == {
        "available": True, "activeModelState": "Standby", "targetModelState": "",
        "transitionStatus": "UpToDate", "totalCopies": 0, "failedCopies": 0,
    }
    await node.infer("example-sklearn-predictor")
    await until(lambda: status(apiserver, "Predictor", "example-sklearn-predictor")
                .get("activeModelState") == "Loaded", what="Loaded")
    assert status(apiserver, "Predictor", "example-sklearn-predictor")["totalCopies"] == 1


async def test_a_failed_new_spec_blocks_the_transition_and_says_why(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode], storage_config: Path
) -> None:
    apiserver.create(PREDICTORS["example-sklearn-predictor"])
    node = await compat_node(make_node, storage_config)
    old = (node.target("example-sklearn-predictor") or ("", ""))[0]
    await node.infer("example-sklearn-predictor")
    spec = dict(PREDICTORS["example-sklearn-predictor"]["spec"])
    spec["storage"] = {"key": "localMinIO", "path": "sklearn/broken.joblib"}
    node.adapter.fail = {}  # the new model's id is known once registered: fail every load
    original_load = node.adapter.load

    async def failing_load(spec: Any, *args: Any, **kw: Any) -> Any:
        if spec.model_id != old:
            node.adapter.fail[spec.model_id] = "cannot unpickle sklearn/broken.joblib"
        return await original_load(spec, *args, **kw)

    node.adapter.load = failing_load  # type: ignore[method-assign]
    apiserver.update("Predictor", NS, "example-sklearn-predictor", spec=spec)
    await until(lambda: status(apiserver, "Predictor", "example-sklearn-predictor")
                .get("transitionStatus") == "BlockedByFailedLoad", what="blocked")
    got = status(apiserver, "Predictor", "example-sklearn-predictor")
    assert (got["available"], got["activeModelState"], got["targetModelState"]) == (
        True, "Loaded", "FailedToLoad")
    assert got["failedCopies"] == 1
    failure = got["lastFailureInfo"]
    assert failure["reason"] == "ModelLoadFailed"
    assert "cannot unpickle" in failure["message"]
    assert failure["modelId"].startswith("example-sklearn-predictor__ksp-")
    assert failure["modelId"] != old and failure["location"] == "node-a"
    assert (await node.infer("example-sklearn-predictor")).endswith(old.encode())  # still old
    # the vmodel retries the load again and again: the status, unchanged, is not rewritten
    written = len(apiserver.patches())
    tries = len(node.adapter.load_calls)
    await until(lambda: len(node.adapter.load_calls) >= tries + 5, what="retries")
    assert len(apiserver.patches()) == written


async def test_inference_service_in_modelmesh_mode_only(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode], storage_config: Path
) -> None:
    apiserver.create(ISVCS["example-sklearn-isvc"])
    apiserver.create(ISVCS["serverless-sklearn"])
    node = await compat_node(make_node, storage_config)
    model_id = (node.target("example-sklearn-isvc") or ("", ""))[0]
    assert model_id.startswith("example-sklearn-isvc__isvc-")
    assert node.target("serverless-sklearn") is None
    await node.infer("example-sklearn-isvc")
    await until(lambda: status(apiserver, "InferenceService", "example-sklearn-isvc")
                .get("modelStatus", {}).get("states", {}).get("activeModelState") == "Loaded",
                what="Loaded")
    got = status(apiserver, "InferenceService", "example-sklearn-isvc")
    assert got["modelStatus"] == {
        "states": {"activeModelState": "Loaded", "targetModelState": ""},
        "transitionStatus": "UpToDate", "copies": {"totalCopies": 1, "failedCopies": 0},
    }
    (ready,) = got["conditions"]
    assert (ready["type"], ready["status"]) == ("Ready", "True")
    assert apiserver.status("InferenceService", "kserve-test", "serverless-sklearn") == {}
    # the annotation taken away: no longer ModelMesh's, so no longer served here
    apiserver.update("InferenceService", NS, "example-sklearn-isvc", annotations={})
    await until(lambda: node.target("example-sklearn-isvc") is None, what="dropped")


async def test_an_unknown_serving_runtime_is_an_invalid_spec(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode], storage_config: Path
) -> None:
    predictor = json.loads(json.dumps(PREDICTORS["example-sklearn-predictor"]))
    predictor["metadata"]["name"] = "on-ovms"
    predictor["spec"]["runtime"] = {"name": "ovms-1.x"}
    apiserver.create(predictor)
    node = await compat_node(make_node, storage_config)
    await until(lambda: status(apiserver, "Predictor", "on-ovms"), what="status")
    got = status(apiserver, "Predictor", "on-ovms")
    assert (got["available"], got["transitionStatus"], got["activeModelState"]) == (
        False, "InvalidSpec", "Pending")
    assert got["lastFailureInfo"]["reason"] == "RuntimeNotRecognized"
    assert got["lastFailureInfo"]["message"].startswith("spec.runtime.name: ")
    assert node.target("on-ovms") is None


async def test_a_model_and_a_predictor_of_one_name_conflict(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode], storage_config: Path
) -> None:
    predictor = json.loads(json.dumps(PREDICTORS["example-sklearn-predictor"]))
    predictor["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    apiserver.create(predictor)
    apiserver.create({
        "apiVersion": "meshlet.io/v1alpha1", "kind": "Model",
        "metadata": {"name": "example-sklearn-predictor", "namespace": "default",
                     "creationTimestamp": "2026-03-01T00:00:00Z"},
        "spec": {"modelFormat": {"name": "sklearn"}, "storage": {"uri": "s3://x/y"}},
    })
    node = await compat_node(make_node, storage_config)
    assert "__ksp-" in (node.target("example-sklearn-predictor") or ("", ""))[0]
    await until(lambda: apiserver.status("Model", "default", "example-sklearn-predictor")
                .get("state") == "FailedToLoad", what="the Model's conflict")
