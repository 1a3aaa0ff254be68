"""The Services, the peer-key Secret, RBAC and the optional objects."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.charts import tools
from tests.charts.cases import FULLNAME, NAMESPACE, VALUE_SETS, Chart

Render = Callable[[str], Chart]

MODEL_RULES = [
    {"apiGroups": ["meshlet.io"], "resources": ["models"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["meshlet.io"], "resources": ["models/status"], "verbs": ["patch", "update"]},
]
MODELMESH_RULES = [
    {"apiGroups": ["serving.kserve.io"], "resources": ["predictors", "inferenceservices"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["serving.kserve.io"],
     "resources": ["predictors/status", "inferenceservices/status"],
     "verbs": ["patch", "update"]},
]
POD_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


def grants(chart: Chart) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(kind, namespace, name) -> rules, of every role the agent's account is bound to."""
    roles = {(r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"]): r["rules"]
             for r in chart.all("ClusterRole") + chart.all("Role")}
    bound = {}
    for binding in chart.all("ClusterRoleBinding") + chart.all("RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        key = (ref["kind"], binding["metadata"].get("namespace", ""), ref["name"])
        assert key in roles, f"{binding['metadata']['name']} binds a role the chart lacks"
        bound[key] = roles[key]
    assert bound.keys() == roles.keys(), "a role nobody is bound to"
    return bound


@pytest.mark.parametrize(("case", "expected"), [
    ("default", {("ClusterRole", "", FULLNAME): MODEL_RULES}),
    ("existing-key", {("ClusterRole", "", FULLNAME): MODEL_RULES}),
    ("modelmesh", {("ClusterRole", "", FULLNAME): MODEL_RULES + MODELMESH_RULES}),
    ("namespaced", {("Role", "team-a", FULLNAME): MODEL_RULES,
                    ("Role", "team-b", FULLNAME): MODEL_RULES}),
    ("everything", {("Role", "team-a", FULLNAME): MODEL_RULES + MODELMESH_RULES,
                    ("Role", NAMESPACE, f"{FULLNAME}-peers"): POD_RULES}),
    ("standalone", {}),
])
def test_rbac_grants_exactly_what_the_agent_uses(
    render: Render, case: str, expected: dict[Any, Any]
) -> None:
    assert grants(render(case)) == expected


def test_no_rbac_when_not_asked(helm: tools.Helm) -> None:
    chart = Chart(helm.template({"rbac": {"create": False}, "serviceAccount": {
        "create": False, "name": "models-reader"}}))
    assert not [o for o in chart if "Role" in o["kind"]]
    assert not chart.all("ServiceAccount")
    assert chart.pod["serviceAccountName"] == "models-reader"


def test_inference_service_is_node_local(render: Render) -> None:
    chart = render("default")
    service = chart.one("Service", FULLNAME)
    spec = service["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["internalTrafficPolicy"] == "Local"
    assert spec["selector"].items() <= chart.one("DaemonSet")["spec"]["template"]["metadata"][
        "labels"].items()
    ports = {p["name"]: p for p in spec["ports"]}
    assert ports["grpc"]["port"] == 8033 and ports["grpc"]["targetPort"] == "grpc"
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["http-metrics"]["targetPort"] == "http-metrics"
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "inference"


def test_peers_service_is_headless_and_lists_pods_before_they_are_ready(
    render: Render,
) -> None:
    chart = render("default")
    peers = chart.one("Service", f"{FULLNAME}-peers")
    spec = peers["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert spec["ports"] == [{"name": "peer", "port": 8034, "targetPort": "peer",
                              "protocol": "TCP"}]
    assert spec["selector"].items() <= chart.one("DaemonSet")["spec"]["template"]["metadata"][
        "labels"].items()
    # The agents seed from exactly this Service's DNS name.
    assert chart.env["MESHLET_PEERS_DNS"] == (
        f"{peers['metadata']['name']}.{NAMESPACE}.svc.cluster.local")
    # No cluster, no peers.
    assert [s["metadata"]["name"] for s in render("standalone").all("Service")] == [FULLNAME]


def test_the_generated_peer_key_is_random_and_in_the_mounted_secret(
    render: Render, helm: tools.Helm
) -> None:
    chart = render("default")
    secret = chart.one("Secret")
    assert secret["metadata"]["name"] == f"{FULLNAME}-cluster-keys"
    assert secret["type"] == "Opaque"
    keys = base64.b64decode(secret["data"]["cluster-keys"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{64}\n", keys)
    volume = next(v for v in chart.pod["volumes"] if v["name"] == "cluster-keys")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    # Without a cluster to look it up in, every render makes a new one.
    again = Chart(helm.template(None)).one("Secret")["data"]["cluster-keys"]
    assert again != secret["data"]["cluster-keys"]


def test_service_monitor_shape(render: Render) -> None:
    chart = render("servicemonitor")
    monitor = chart.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert set(spec) == {"jobLabel", "namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["endpoints"] == [{"port": "http-metrics", "path": "/metrics",
                                  "interval": "30s", "scrapeTimeout": "10s"}]
    # It selects the inference Service alone, by a port name that Service has.
    selected = [s for s in chart.all("Service")
                if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == [FULLNAME]
    assert "http-metrics" in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert not render("default").all("ServiceMonitor")


def test_network_policy_opens_the_peer_port_to_the_agents_only(render: Render) -> None:
    chart = render("everything")
    policy = chart.one("NetworkPolicy")["spec"]
    selector = chart.one("DaemonSet")["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"] == {"matchLabels": selector}
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(by_port) == {8033, 8034, 2112}
    assert by_port[8034]["from"] == [{"podSelector": {"matchLabels": selector}}]
    assert by_port[8033]["from"] == VALUE_SETS["everything"]["networkPolicy"]["grpcFrom"]
    assert "from" not in by_port[2112]  # anyone may scrape


def test_pod_disruption_budget(render: Render) -> None:
    chart = render("everything")
    budget = chart.one("PodDisruptionBudget")["spec"]
    assert budget == {"maxUnavailable": "10%", "selector": {
        "matchLabels": chart.one("DaemonSet")["spec"]["selector"]["matchLabels"]}}
