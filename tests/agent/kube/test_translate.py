"""The pure translations, on the resources' real YAML (``examples/``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.kube.kinds import KINDS
from agent.kube.translate import (
    Entry,
    Invalid,
    inference_service_entry,
    model_entry,
    model_id_for,
    predictor_entry,
    vmodel_of,
)
from agent.registry.spec import MAX_ID_BYTES, ModelSpec, validate_model_id
from tests.agent.kube.conftest import example

CHART_EXAMPLES = Path(__file__).resolve().parents[3] / "charts" / "meshlet" / "examples"

BUCKETS = {"minio": "models", "localMinIO": "modelmesh-example-models",
           "default": "default-bucket", "my_storage": "my_bucket"}


def by_name(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs}


def entry(result: object) -> Entry:
    assert isinstance(result, Entry), result
    return result


MODELS = by_name(example("models"))


def test_model_with_uri_labels_and_a_quantity_size() -> None:
    e = entry(model_entry(MODELS["iris"], BUCKETS.get))
    assert e.vmodel_id == "iris"
    spec = e.spec
    assert (spec.uri, spec.runtime, spec.model_type) == ("s3://models/iris/v3", "mlserver",
                                                         "sklearn")
    assert spec.storage_key == ""  # a URI's bucket picks its credentials
    assert spec.size_hint == 64 * 2**20
    assert spec.labels == {"team": "a", "tier": "gold"}
    assert not spec.gpu
    assert spec.model_id.startswith("iris__") and len(spec.model_id) == len("iris__") + 10
    validate_model_id(spec.model_id)


def test_model_with_a_storage_key_and_path_becomes_an_s3_uri_as_modelmesh() -> None:
    e = entry(model_entry(MODELS["mnist"], BUCKETS.get))
    assert e.spec.uri == "s3://modelmesh-example-models/onnx/mnist"
    assert e.spec.storage_key == "localMinIO"
    assert (e.spec.runtime, e.spec.gpu) == ("triton", True)


def test_model_names_its_runtime_and_the_bucket_parameter_wins() -> None:
    greeter = entry(model_entry(MODELS["greeter"], BUCKETS.get)).spec
    assert (greeter.runtime, greeter.uri, greeter.size_hint) == (
        "triton", "builtin://simple-string", 16384)
    churn = entry(model_entry(MODELS["churn"], BUCKETS.get)).spec
    # the key's credentials, but parameters.bucket names the bucket
    assert (churn.uri, churn.storage_key, churn.runtime) == (
        "s3://other-bucket/churn/model.bst", "minio", "mlserver")


def test_a_path_without_a_key_uses_the_default_keys_bucket() -> None:
    obj = copy.deepcopy(MODELS["churn"])
    del obj["spec"]["storage"]["key"], obj["spec"]["storage"]["parameters"]
    spec = entry(model_entry(obj, BUCKETS.get)).spec
    assert (spec.uri, spec.storage_key) == ("s3://default-bucket/churn/model.bst", "")


@pytest.mark.parametrize(("fmt", "runtime"), [
    ("sklearn", "mlserver"), ("xgboost", "mlserver"), ("lightgbm", "mlserver"),
    ("mlflow", "mlserver"), ("onnx", "triton"), ("pytorch", "triton"),
    ("tensorflow", "triton"), ("tensorrt", "triton"), ("triton", "triton"),
    ("python", "triton"), ("simple-string", "mlserver"),
])
def test_model_formats_map_to_the_runtime_that_serves_them(fmt: str, runtime: str) -> None:
    obj = copy.deepcopy(MODELS["iris"])
    obj["spec"]["modelFormat"]["name"] = fmt
    assert entry(model_entry(obj, BUCKETS.get)).spec.runtime == runtime


INVALID = example("invalid-models")


@pytest.mark.parametrize(("name", "field", "words"), [
    ("no-format", "spec.modelFormat", "required"),
    ("keras", "spec.modelFormat.name", "served by no meshlet runtime"),
    ("wrong-runtime", "spec.runtime", "does not serve model format 'onnx'; triton does"),
    ("bad-size", "spec.sizeHint", "'lots' is not a quantity"),
    ("both-storages", "spec.storage", "not both"),
    ("ftp", "spec.storage.uri", "scheme 'ftp' is not supported"),
    ("no-bucket", "spec.storage.key", "storage key 'nowhere' names no bucket"),
    ("gpu-yes", "spec.gpu", "must be true or false"),
    ("no-storage", "spec.storage", "required"),
    ("bad-labels", "spec.labels.team", "must be a string"),
])
def test_invalid_models_name_the_field(name: str, field: str, words: str) -> None:
    result = model_entry(by_name(INVALID)[name], BUCKETS.get)
    assert isinstance(result, Invalid), result
    assert result.field == field
    assert words in result.message
    assert str(result).startswith(f"{field}: ")


def test_every_invalid_example_is_covered() -> None:
    assert len(INVALID) == 10


def test_no_supporting_runtime_has_its_modelmesh_reason() -> None:
    keras = model_entry(by_name(INVALID)["keras"], BUCKETS.get)
    assert isinstance(keras, Invalid) and keras.reason == "NoSupportingRuntime"


def test_model_ids_follow_the_spec() -> None:
    a = entry(model_entry(MODELS["iris"], BUCKETS.get)).spec.model_id
    assert entry(model_entry(copy.deepcopy(MODELS["iris"]), BUCKETS.get)).spec.model_id == a
    changed = copy.deepcopy(MODELS["iris"])
    changed["spec"]["storage"]["uri"] = "s3://models/iris/v4"
    assert entry(model_entry(changed, BUCKETS.get)).spec.model_id != a
    relabeled = copy.deepcopy(MODELS["iris"])
    relabeled["metadata"]["labels"] = {"unrelated": "x"}  # metadata is not the spec
    assert entry(model_entry(relabeled, BUCKETS.get)).spec.model_id == a
    assert vmodel_of(a) == "iris"


def test_a_long_name_keeps_the_id_within_the_limit() -> None:
    spec = ModelSpec("", "builtin://simple-string", "mlserver", "simple-string")
    long_name = "a" * 253
    model_id = model_id_for(long_name, "isvc", spec)
    assert len(model_id.encode()) == MAX_ID_BYTES
    assert model_id.endswith(model_id_for("a", "isvc", spec)[1:])
    validate_model_id(model_id)


PREDICTORS = by_name(example("predictors"))


def test_deprecated_predictor_path_and_s3_secret_key() -> None:
    e = entry(predictor_entry(PREDICTORS["my-mnist-predictor"], BUCKETS.get))
    assert e.vmodel_id == "my-mnist-predictor"
    assert e.spec.model_id.startswith("my-mnist-predictor__ksp-")  # ModelMesh's form
    assert (e.spec.uri, e.spec.storage_key) == ("s3://my_bucket/my_models/mnist-tf", "my_storage")
    assert (e.spec.runtime, e.spec.model_type) == ("triton", "tensorflow")


def test_predictor_storage_key_and_path() -> None:
    e = entry(predictor_entry(PREDICTORS["example-sklearn-predictor"], BUCKETS.get))
    assert e.spec.uri == "s3://modelmesh-example-models/sklearn/mnist-svm.joblib"
    assert (e.spec.storage_key, e.spec.runtime) == ("localMinIO", "mlserver")


def test_predictor_gpu_required_and_bucket_parameter() -> None:
    e = entry(predictor_entry(PREDICTORS["gpu-onnx"], BUCKETS.get))
    assert e.spec.gpu
    assert e.spec.uri == "s3://override-bucket/onnx/mnist.onnx"
    preferred = copy.deepcopy(PREDICTORS["gpu-onnx"])
    preferred["spec"]["gpu"] = "preferred"
    assert not entry(predictor_entry(preferred, BUCKETS.get)).spec.gpu


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"runtime": {"name": "ovms-1.x"}}, "spec.runtime.name", "RuntimeNotRecognized"),
    ({"runtime": {"name": "mlserver-1.x"}}, "spec.runtime.name", "NoSupportingRuntime"),
    ({"gpu": "always"}, "spec.gpu", "InvalidSpec"),
    ({"modelType": {"name": "openvino_ir"}}, "spec.modelType.name", "NoSupportingRuntime"),
    ({"modelType": None}, "spec.modelType", "InvalidSpec"),
    ({"storage": {"key": "localMinIO"}}, "spec.storage.path", "InvalidSpec"),
])
def test_invalid_predictors_name_the_field(change: dict[str, Any], field: str,
                                           reason: str) -> None:
    obj = copy.deepcopy(PREDICTORS["gpu-onnx"])
    obj["spec"].update(change)
    result = predictor_entry(obj, BUCKETS.get)
    assert isinstance(result, Invalid), result
    assert (result.field, result.reason) == (field, reason)


ISVCS = by_name(example("inferenceservices"))


def test_inference_service_with_model_format_and_storage_key() -> None:
    e = entry(inference_service_entry(ISVCS["example-sklearn-isvc"], BUCKETS.get))
    assert e.spec.model_id.startswith("example-sklearn-isvc__isvc-")
    assert e.spec.uri == "s3://modelmesh-example-models/sklearn/mnist-svm.joblib"
    assert (e.spec.runtime, e.spec.model_type, e.spec.storage_key) == (
        "mlserver", "sklearn", "localMinIO")


def test_inference_service_storage_uri_and_secret_key_annotation() -> None:
    e = entry(inference_service_entry(ISVCS["example-tensorflow-mnist"], BUCKETS.get))
    assert e.spec.uri == "s3://modelmesh-example-models/tensorflow/mnist.savedmodel"
    assert (e.spec.storage_key, e.spec.runtime) == ("localMinIO", "triton")


def test_inference_service_legacy_framework_key() -> None:
    e = entry(inference_service_entry(ISVCS["legacy-onnx"], BUCKETS.get))
    assert (e.spec.model_type, e.spec.runtime) == ("onnx", "triton")


def test_inference_service_not_in_modelmesh_mode_is_not_ours() -> None:
    assert inference_service_entry(ISVCS["serverless-sklearn"], BUCKETS.get) is None


def test_inference_service_bucket_parameter_overrides_the_uri_bucket() -> None:
    obj = copy.deepcopy(ISVCS["example-tensorflow-mnist"])
    obj["spec"]["predictor"]["model"]["storage"] = {"parameters": {"bucket": "b2"}}
    e = entry(inference_service_entry(obj, BUCKETS.get))
    assert e.spec.uri == "s3://b2/tensorflow/mnist.savedmodel"


@pytest.mark.parametrize(("model", "field"), [
    ({"modelFormat": {"name": "sklearn"}}, "spec.predictor.model.storageUri"),
    ({"modelFormat": {"name": "sklearn"}, "storageUri": "s3://a/b",
      "storage": {"path": "b"}}, "spec.predictor.model.storageUri"),
    ({"storageUri": "s3://a/b"}, "spec.predictor.model.modelFormat"),
    ({"modelFormat": {"name": "sklearn"}, "storageUri": "gs://bucket/model"},
     "spec.predictor.model.storageUri"),
])
def test_invalid_inference_services_name_the_field(model: dict[str, Any], field: str) -> None:
    obj = copy.deepcopy(ISVCS["example-sklearn-isvc"])
    obj["spec"]["predictor"]["model"] = model
    result = inference_service_entry(obj, BUCKETS.get)
    assert isinstance(result, Invalid), result
    assert result.field == field


def test_translation_never_raises_on_garbage() -> None:
    for garbage in ({}, {"metadata": "x"}, {"metadata": {"name": "a"}, "spec": []},
                    {"metadata": {"name": "a/b"}, "spec": {}},
                    {"metadata": {"name": "a", "annotations": {
                        "serving.kserve.io/deploymentMode": "ModelMesh"}}, "spec": {
                        "predictor": {"model": 3}}}):
        for translate in (model_entry, predictor_entry, inference_service_entry):
            result = translate(garbage, BUCKETS.get)
            assert result is None or isinstance(result, Invalid)


@pytest.mark.skipif(not CHART_EXAMPLES.is_dir(), reason="no chart examples in this checkout")
def test_the_charts_examples_are_served() -> None:
    docs = [d for f in sorted(CHART_EXAMPLES.glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if d]
    assert docs
    for doc in docs:
        result = KINDS[doc["kind"]].translate(doc, {"my-s3": "models"}.get)
        assert isinstance(result, Entry), (doc["metadata"]["name"], result)
