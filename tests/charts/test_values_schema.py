"""values.schema.json makes a wrong value an install-time error that names
the key; the values users write are accepted."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.charts import tools
from tests.charts.cases import VALUE_SETS

SCHEMA = json.loads((tools.CHART / "values.schema.json").read_text())


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """``"a.b", 1`` -> ``{"a": {"b": 1}}``."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value  # type: ignore[no-any-return]


BAD = [
    # (key, value, where helm's error points)
    ("memoryBudget", -1, "/memoryBudget"),
    ("memoryBudget", "-4Gi", "/memoryBudget"),
    ("memoryBudget", "lots", "/memoryBudget"),
    ("memoryBudget", "1.5", "/memoryBudget"),  # the agent wants a unit with a fraction
    ("memoryBudget", "4m", "/memoryBudget"),  # millibytes (or megabytes?): refused
    ("memoryBudget", True, "/memoryBudget"),
    ("cache.quota", "100 GB", "/cache/quota"),
    ("cache.hostPath", "relative/dir", "/cache/hostPath"),
    ("runtimes", ["tensorflow"], "/runtimes/0"),
    ("runtimes", ["mlserver", "mlserver"], "/runtimes"),
    ("runtimes", [], "/runtimes"),
    ("runtimes", "mlserver", "/runtimes"),
    ("ports.grpc", "8033", "/ports/grpc"),
    ("ports.peer", 70000, "/ports/peer"),
    ("gpu.enabled", "yes", "/gpu/enabled"),
    ("gpu.count", 0, "/gpu/count"),
    ("resources", {"limits": {"memory": "lots"}}, "/resources/limits/memory"),
    ("resources", {"requests": {"cpu": -1}}, "/resources/requests/cpu"),
    ("resources", {"limit": {"memory": "1Gi"}}, "/resources"),
    ("shm.sizeLimit", "1 GiB", "/shm/sizeLimit"),
    ("dataDir.sizeLimit", "big", "/dataDir/sizeLimit"),
    ("cluster.discovery", "consul", "/cluster/discovery"),
    ("cluster.drainTimeoutSeconds", -5, "/cluster/drainTimeoutSeconds"),
    ("watchNamespaces", ["Team_A"], "/watchNamespaces/0"),
    ("watchNamespaces", "team-a", "/watchNamespaces"),
    ("image.digest", "latest", "/image/digest"),
    ("image.pullPolicy", "Sometimes", "/image/pullPolicy"),
    ("service.internalTrafficPolicy", "Nearby", "/service/internalTrafficPolicy"),
    ("logLevel", "verbose", "/logLevel"),
    ("nodeSelector", {"disk": True}, "/nodeSelector/disk"),
    ("livenessProbe", {"httpGet": {"path": "/x", "port": 1}}, "/livenessProbe"),
    ("updateStrategy", {"type": "Recreate"}, "/updateStrategy/type"),
    ("podDisruptionBudget.maxUnavailable", "half", "/podDisruptionBudget/maxUnavailable"),
    ("serviceMonitor.interval", "30 seconds", "/serviceMonitor/interval"),
    ("extraEnv", [{"value": "x"}], "/extraEnv/0"),
    ("kube.enabled", "on", "/kube/enabled"),
    ("memoryBudgetBytes", 1, "memoryBudgetBytes"),  # a misspelt key
    ("image.tags", "1", "tags"),
]


@pytest.mark.parametrize(("key", "value", "where"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_helm_refuses_a_bad_value_naming_it(
    helm: tools.Helm, key: str, value: Any, where: str
) -> None:
    with pytest.raises(tools.HelmError) as err:
        helm.template(nested(key, value))
    assert "values don't meet the specifications of the schema" in err.value.stderr
    assert where in err.value.stderr, err.value.stderr


def test_set_on_the_command_line_is_checked_too(helm: tools.Helm) -> None:
    with pytest.raises(tools.HelmError) as err:
        helm.template(None, "--set", "runtimes[0]=onnxruntime")
    assert "/runtimes/0" in err.value.stderr and "'mlserver', 'triton'" in err.value.stderr


GOOD = [
    ("memoryBudget", "8Gi"), ("memoryBudget", "512Mi"), ("memoryBudget", "16G"),
    ("memoryBudget", "1.5Ti"), ("memoryBudget", 0), ("memoryBudget", "0"),
    ("memoryBudget", 8589934592), ("cache.quota", "100Gi"), ("runtimes", ["triton"]),
    ("resources", {"limits": {"memory": "16Gi", "cpu": "1500m"}, "requests": {"cpu": 2}}),
    ("updateStrategy", {"type": "OnDelete"}), ("podDisruptionBudget.maxUnavailable", "25%"),
    ("serviceMonitor.interval", "1m30s"), ("watchNamespaces", ["team-a", "ml"]),
]


@pytest.mark.parametrize(("key", "value"), GOOD, ids=[f"{k}={v!r}" for k, v in GOOD])
def test_values_users_write_are_accepted(helm: tools.Helm, key: str, value: Any) -> None:
    assert helm.template(nested(key, value))


def test_defaults_and_every_value_set_match_the_schema() -> None:
    # In-process too, with the schema's own draft: a second reader of the same file.
    validator = jsonschema.Draft202012Validator(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    defaults = yaml.safe_load((tools.CHART / "values.yaml").read_text())
    validator.validate(defaults)
    for values in VALUE_SETS.values():
        validator.validate(_merged(defaults, values))


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if both else value
    return out
