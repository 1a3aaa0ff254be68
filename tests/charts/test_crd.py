"""The Model CRD: valid for the API server, and its schema accepts the example
Models and rejects what the agent would reject (checked with jsonschema on
the CRD's own openAPIV3Schema; its CEL rule evaluated with a CEL library)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import yaml

from tests.charts import tools

CRD = yaml.safe_load((tools.CHART / "crds" / "models.yaml").read_text())
[VERSION] = CRD["spec"]["versions"]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
EXAMPLES = tools.CHART / "examples"
JUNCTORS = ("allOf", "anyOf", "oneOf")


def openapi_to_jsonschema(node: Any) -> Any:
    """The CRD's OpenAPI v3 schema as JSON Schema (draft 4, which OpenAPI 3.0's
    schema objects follow): ``nullable`` becomes a type list, an int-or-string
    without its anyOf gets one, Kubernetes' own ``x-kubernetes-*`` keys go."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


VALIDATOR = jsonschema.Draft4Validator(openapi_to_jsonschema(SCHEMA))


def errors(model: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in VALIDATOR.iter_errors(model)]


def example_models() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / "model.yaml").read_text()) if d]


def model(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"modelFormat": {"name": "sklearn"},
                            "storage": {"uri": "s3://models/iris"}}
    base.update(spec)
    return {"apiVersion": "meshlet.io/v1alpha1", "kind": "Model",
            "metadata": {"name": "iris", "namespace": "ml"},
            "spec": {k: v for k, v in base.items() if v is not None}}


def test_the_crd_is_a_valid_kubernetes_object(
    kube_validate: Callable[[dict[str, Any]], None],
) -> None:
    kube_validate(CRD)


def test_names_scope_version_and_columns() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "models.meshlet.io"
    assert spec["group"] == "meshlet.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {"kind": "Model", "listKind": "ModelList", "plural": "models",
                             "singular": "model", "shortNames": ["mlm"],
                             "categories": ["meshlet"]}
    assert VERSION["name"] == "v1alpha1" and VERSION["served"] and VERSION["storage"]
    assert VERSION["subresources"] == {"status": {}}
    columns = [(c["name"], c["type"], c["jsonPath"]) for c in VERSION["additionalPrinterColumns"]]
    assert columns == [
        ("Format", "string", ".spec.modelFormat.name"),
        ("State", "string", ".status.state"),
        ("Copies", "integer", ".status.copies"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    for _, _, path in columns[:-1]:  # each column shows a field the schema has
        node = SCHEMA
        for part in path.strip(".").split("."):
            node = node["properties"][part]


def structural_problems(node: dict[str, Any], where: str, junctor: bool = False) -> list[str]:
    """What the API server's structural-schema rules refuse: a node without a
    type (unless int-or-string or preserve-unknown-fields); types, properties,
    descriptions or defaults inside allOf/anyOf/oneOf/not."""
    problems = []
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if junctor:
        banned = {"type", "properties", "items", "additionalProperties", "description",
                  "default", "nullable"} & set(node)
        if banned:
            problems.append(f"{where}: {sorted(banned)} inside a junctor")
    elif "type" not in node and not int_or_string and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{where}: no type")
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{where}.{name}", junctor)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += structural_problems(node[key], f"{where}.{key}", junctor)
    for key in JUNCTORS:
        for i, child in enumerate(node.get(key, [])):
            if int_or_string and key == "anyOf":
                assert child in ({"type": "integer"}, {"type": "string"}), where
                continue
            problems += structural_problems(child, f"{where}.{key}[{i}]", junctor=True)
    if "not" in node:
        problems += structural_problems(node["not"], f"{where}.not", junctor=True)
    return problems


def test_the_schema_is_structural() -> None:
    assert structural_problems(SCHEMA, "openAPIV3Schema") == []
    # At the root, metadata may only restrict name (and generateName).
    assert set(SCHEMA["properties"]["metadata"]["properties"]) == {"name"}


def test_the_structural_check_catches_a_typeless_field() -> None:
    broken = copy.deepcopy(SCHEMA)
    del broken["properties"]["spec"]["properties"]["gpu"]["type"]
    assert structural_problems(broken, "s") == ["s.spec.gpu: no type"]


def test_the_example_models_are_valid() -> None:
    examples = example_models()
    assert [m["metadata"]["name"] for m in examples] == ["iris-lr", "simple-string"]
    assert examples[0]["spec"]["storage"]["key"] and examples[0]["spec"]["modelFormat"][
        "name"] == "sklearn"
    assert examples[1]["spec"]["storage"] == {"uri": "builtin://simple-string"}
    for example in examples:
        assert errors(example) == [], example["metadata"]["name"]


GOOD = {
    "each scheme": [model(storage={"uri": uri}) for uri in (
        "file:///models/iris", "http://models.local/iris.joblib",
        "https://models.example.com/iris", "s3://models/iris/", "builtin://simple-string")],
    "key and path": [model(storage={"key": "minio", "path": "iris"}),
                     model(storage={"key": "minio", "path": "iris",
                                    "parameters": {"bucket": "models"}})],
    "sizes": [model(sizeHint=s) for s in (0, 1048576, "0", "512Mi", "1.5Gi", "2G", "1e9")],
    "the rest": [
        model(runtime="triton", gpu=True, modelFormat={"name": "onnx", "version": "1"}),
        model(labels={"team": "ml", "tier": "gold"}),
    ],
}
BAD = {
    "missing modelFormat": model(modelFormat=None),
    "modelFormat without name": model(modelFormat={"version": "1"}),
    "empty format name": model(modelFormat={"name": ""}),
    "missing storage": model(storage=None),
    "uri with ftp://": model(storage={"uri": "ftp://models/iris"}),
    "uri without a scheme": model(storage={"uri": "/models/iris"}),
    "negative sizeHint": model(sizeHint=-1),
    "negative sizeHint quantity": model(sizeHint="-1Gi"),
    "sizeHint in millibytes": model(sizeHint="500m"),
    "sizeHint not a quantity": model(sizeHint="big"),
    "both uri and key": model(storage={"uri": "s3://models/iris", "key": "minio",
                                       "path": "iris"}),
    "uri and a key alone": model(storage={"uri": "s3://models/iris", "key": "minio"}),
    "key without path": model(storage={"key": "minio"}),
    "neither uri nor key": model(storage={}),
    "parameters with a uri": model(storage={"uri": "s3://m/i", "parameters": {"a": "b"}}),
    "unknown runtime": model(runtime="tensorflow-serving"),
    "gpu not a boolean": model(gpu="yes"),
    "labels not strings": model(labels={"replicas": 2}),
}


@pytest.mark.parametrize("valid", [m for ms in GOOD.values() for m in ms],
                         ids=[f"{k}-{i}" for k, ms in GOOD.items() for i in range(len(ms))])
def test_valid_models_pass(valid: dict[str, Any]) -> None:
    assert errors(valid) == []


@pytest.mark.parametrize("invalid", list(BAD.values()), ids=list(BAD))
def test_invalid_models_fail(invalid: dict[str, Any]) -> None:
    assert errors(invalid) != []


@pytest.mark.parametrize("name", ["Iris", "iris_lr", "-iris", "iris-", "a" * 254, "iris/lr"])
def test_model_names_must_be_dns_subdomains(name: str) -> None:
    bad = model()
    bad["metadata"]["name"] = name
    assert errors(bad) != [], name


@pytest.mark.parametrize("name", ["iris", "iris-lr.v2", "a" * 253, "0-simple-string"])
def test_model_names_that_are_dns_subdomains_pass(name: str) -> None:
    good = model()
    good["metadata"]["name"] = name
    assert errors(good) == []


def test_the_storage_rule_agrees_with_the_schema(
    cel_evaluate: Callable[[str, dict[str, Any]], Any],
) -> None:
    storage = SCHEMA["properties"]["spec"]["properties"]["storage"]
    [rule] = storage["x-kubernetes-validations"]
    assert "uri" in rule["message"] and "key and path" in rule["message"]
    cases = [m["spec"]["storage"] for ms in GOOD.values() for m in ms] + [
        m["spec"]["storage"] for m in BAD.values() if m["spec"].get("storage") is not None]
    # The rule says what the oneOf says (which form), for the API server's message.
    one_of = jsonschema.Draft4Validator({"oneOf": storage["oneOf"]})
    assert {one_of.is_valid(case) for case in cases} == {True, False}
    for case in cases:
        assert cel_evaluate(rule["rule"], case) == one_of.is_valid(case), case


def test_a_status_the_agents_write_is_valid() -> None:
    loaded = model()
    loaded["status"] = {
        "state": "Loaded", "copies": 2, "failedCopies": 0, "observedGeneration": 3,
        "lastFailure": {"reason": "ModelLoadFailed", "message": "no such key",
                        "node": "node-1", "time": "2026-01-01T00:00:00Z"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Loaded",
                        "message": "2 copies", "lastTransitionTime": "2026-01-01T00:00:00Z",
                        "observedGeneration": 3}],
    }
    assert errors(loaded) == []
    loaded["status"]["state"] = "Ready"  # not one of the states
    assert errors(loaded) != []


def test_the_modelmesh_examples() -> None:
    [predictor] = yaml.safe_load_all((EXAMPLES / "predictor.yaml").read_text())
    assert (predictor["apiVersion"], predictor["kind"]) == ("serving.kserve.io/v1alpha1",
                                                            "Predictor")
    assert predictor["spec"]["modelType"] == {"name": "sklearn"}
    assert set(predictor["spec"]["storage"]) == {"key", "path"}
    [isvc] = yaml.safe_load_all((EXAMPLES / "inferenceservice.yaml").read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1",
                                                  "InferenceService")
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "ModelMesh"}
    model_spec = isvc["spec"]["predictor"]["model"]
    assert model_spec["modelFormat"] == {"name": "sklearn"}
    assert set(model_spec["storage"]) == {"key", "path"}
