"""helm lint and helm template over every value set; every rendered object is
valid for Kubernetes 1.30 (its own schemas, strict) and carries the labels."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.charts import cases, tools
from tests.charts.cases import FULLNAME, NAMESPACE, RELEASE, VALUE_SETS, Chart

CASES = sorted(VALUE_SETS)
# Objects of kinds Kubernetes itself does not define: checked by hand below.
NOT_BUILTIN = {"ServiceMonitor"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}


def test_helm_is_the_real_v4(helm: tools.Helm) -> None:
    assert helm.version().startswith("v4."), helm.version()


@pytest.mark.parametrize("case", CASES)
def test_lint_passes(helm: tools.Helm, case: str) -> None:
    values = VALUE_SETS[case]
    args = ["-f", str(helm.values_file(values))] if values else []
    out = helm.run("lint", str(tools.CHART), "--strict", "--namespace", NAMESPACE,
                   "--kube-version", tools.KUBE_VERSION, *args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


@pytest.mark.parametrize("case", CASES)
def test_every_object_is_valid_kubernetes(
    render: Callable[[str], Chart], kube_validate: Callable[[dict[str, Any]], None], case: str
) -> None:
    chart = render(case)
    assert chart.objects
    for obj in chart:
        if obj["kind"] in NOT_BUILTIN:
            continue
        kube_validate(obj)


def test_the_validator_catches_a_wrong_field(
    render: Callable[[str], Chart], kube_validate: Callable[[dict[str, Any]], None]
) -> None:
    import kubernetes_validate  # here: kube_validate has already said if it is missing

    daemonset = copy.deepcopy(render("default").one("DaemonSet"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kube_validate(daemonset)


@pytest.mark.parametrize("case", CASES)
def test_every_object_has_the_labels_and_the_release_namespace(
    render: Callable[[str], Chart], case: str
) -> None:
    for obj in render(case):
        meta = obj["metadata"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "meshlet", meta["name"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/part-of"] == "meshlet"
        assert labels["helm.sh/chart"] == "meshlet-0.1.0"
        assert meta["name"].startswith(FULLNAME) or meta["name"] == "team-peer-keys"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta
        elif obj["kind"] not in {"Role", "RoleBinding"}:  # those go where models are
            assert meta["namespace"] == NAMESPACE, (obj["kind"], meta)


@pytest.mark.parametrize(("case", "kinds"), [
    ("default", ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Secret", "Service",
                 "Service", "ServiceAccount"]),
    ("existing-key", ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service", "Service",
                      "ServiceAccount"]),
    ("namespaced", ["DaemonSet", "Role", "Role", "RoleBinding", "RoleBinding", "Secret",
                    "Service", "Service", "ServiceAccount"]),
    ("standalone", ["DaemonSet", "Service", "ServiceAccount"]),
    ("everything", ["DaemonSet", "NetworkPolicy", "PodDisruptionBudget", "Role", "Role",
                    "RoleBinding", "RoleBinding", "Secret", "Service", "Service",
                    "ServiceAccount", "ServiceMonitor"]),
])
def test_what_each_value_set_installs(
    render: Callable[[str], Chart], case: str, kinds: list[str]
) -> None:
    assert render(case).kinds() == kinds


def test_one_template_per_object_kind() -> None:
    templates = sorted(p.name for p in (tools.CHART / "templates").glob("*.yaml"))
    assert templates == [
        "clusterrole.yaml", "clusterrolebinding.yaml", "daemonset.yaml", "networkpolicy.yaml",
        "poddisruptionbudget.yaml", "role.yaml", "rolebinding.yaml", "secret.yaml",
        "service.yaml", "serviceaccount.yaml", "servicemonitor.yaml",
    ]


@pytest.mark.parametrize("case", CASES)
def test_templates_and_kinds_match(helm: tools.Helm, case: str) -> None:
    values = VALUE_SETS[case]
    args = ["-f", str(helm.values_file(values))] if values else []
    out = helm.run("template", RELEASE, str(tools.CHART), "--namespace", NAMESPACE,
                   "--kube-version", tools.KUBE_VERSION, *args)
    for doc in out.split("\n---\n"):
        if "# Source: " not in doc:
            continue
        source = doc.split("# Source: meshlet/templates/", 1)[1].split("\n", 1)[0]
        obj = yaml.safe_load(doc)
        expected = source.removesuffix(".yaml")
        assert obj["kind"].lower() == expected, (source, obj["kind"])


def test_the_release_name_is_not_repeated(helm: tools.Helm) -> None:
    chart = Chart(helm.template(None, release="meshlet", namespace=NAMESPACE))
    assert chart.one("DaemonSet")["metadata"]["name"] == "meshlet"
    assert cases.FULLNAME == f"{RELEASE}-meshlet"
