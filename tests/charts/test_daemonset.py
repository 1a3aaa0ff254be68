"""The DaemonSet: what the agent needs to run safely, exactly."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.charts import tools
from tests.charts.cases import DIGEST, FULLNAME, NAMESPACE, RELEASE, VALUE_SETS, Chart

Render = Callable[[str], Chart]


def field(path: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": path}}


def test_default_environment_is_exactly_the_agents_settings(render: Render) -> None:
    assert render("default").env == {
        "MESHLET_NODE_NAME": field("spec.nodeName"),
        "MESHLET_POD_NAME": field("metadata.name"),
        "MESHLET_POD_IP": field("status.podIP"),
        "MESHLET_POD_NAMESPACE": field("metadata.namespace"),
        "MESHLET_DATA_DIR": "/var/lib/meshlet",
        "MESHLET_CACHE_DIR": "/var/cache/meshlet",
        "MESHLET_GRPC_PORT": "8033",
        "MESHLET_METRICS_PORT": "2112",
        "MESHLET_PEER_PORT": "8034",
        "MESHLET_RUNTIMES": '["mlserver"]',
        "MESHLET_LOG_LEVEL": "INFO",
        "MESHLET_SHUTDOWN_GRACE_S": "10",
        "MESHLET_DRAIN_TIMEOUT_S": "20",
        "MESHLET_CLUSTER_KEY_FILE": "/etc/meshlet/cluster/keys",
        "MESHLET_PEER_ADVERTISE_HOST": "$(MESHLET_POD_IP)",
        "MESHLET_DISCOVERY": "dns",
        "MESHLET_PEERS_DNS": f"{FULLNAME}-peers.{NAMESPACE}.svc.cluster.local",
        "MESHLET_STORAGE_CONFIG_DIR": "/etc/meshlet/storage-config",
        "MESHLET_KUBE": "on",
        "MESHLET_MODELMESH_COMPAT": "false",
    }
    assert "args" not in render("default").container  # sizes left to the agent


def test_settings_follow_the_values(render: Render) -> None:
    env = render("everything").env
    assert env["MESHLET_WATCH_NAMESPACES"] == "team-a"
    assert env["MESHLET_MODELMESH_COMPAT"] == "true"
    assert env["MESHLET_DISCOVERY"] == "kubernetes"
    assert "MESHLET_PEERS_DNS" not in env  # peers come from the API instead
    assert env["MESHLET_CACHE_DIR"] == "/mnt/nvme/meshlet"
    assert env["MESHLET_LOG_LEVEL"] == "DEBUG"
    assert env["MESHLET_DRAIN_TIMEOUT_S"] == "60"
    assert env["MESHLET_COPY_MAX"] == "2"  # extraEnv
    assert [v["name"] for v in render("everything").container["env"]][-1] == "MESHLET_COPY_MAX"
    assert render("namespaced").env["MESHLET_WATCH_NAMESPACES"] == "team-a,team-b"
    assert json.loads(render("gpu").env["MESHLET_RUNTIMES"]) == ["mlserver", "triton"]


def test_standalone_agents_have_no_cluster_and_no_api(render: Render) -> None:
    chart = render("standalone")
    env = chart.env
    assert env["MESHLET_KUBE"] == "off"
    for name in ("MESHLET_CLUSTER_KEY_FILE", "MESHLET_PEERS_DNS", "MESHLET_DISCOVERY",
                 "MESHLET_STORAGE_CONFIG_DIR", "MESHLET_WATCH_NAMESPACES",
                 "MESHLET_MODELMESH_COMPAT"):
        assert name not in env
    assert chart.pod["automountServiceAccountToken"] is False
    assert [p["name"] for p in chart.container["ports"]] == ["grpc", "http-metrics"]
    assert "initContainers" not in chart.pod
    assert chart.container["args"] == ["--memory-budget", "8Gi"]
    volumes = {v["name"]: v for v in chart.pod["volumes"]}
    assert set(volumes) == {"data", "cache", "tmp", "shm"}
    assert volumes["data"]["emptyDir"] == {"sizeLimit": "10Gi"}


def test_sizes_go_to_the_agent_as_flags_in_whole_bytes_or_as_written(render: Render) -> None:
    # 4294967296 reaches the template as a float; it must not become 4.294967296e+09.
    assert render("everything").container["args"] == [
        "--memory-budget", "4294967296", "--cache-quota", "200Gi"]


def test_security_context_is_non_root_read_only_and_without_capabilities(
    render: Render,
) -> None:
    for case in VALUE_SETS:
        chart = render(case)
        assert chart.container["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        }, case
        assert chart.pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, case


def test_only_the_permissions_init_container_is_root_and_only_with_chown(
    render: Render,
) -> None:
    chart = render("everything")
    [init] = chart.pod["initContainers"]
    assert init["image"] == chart.container["image"]
    assert init["command"] == ["chown", "10001:10001", "/mnt/nvme/meshlet", "/var/lib/meshlet"]
    assert init["securityContext"] == {
        "runAsUser": 0, "runAsNonRoot": False, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
    }
    assert {m["mountPath"] for m in init["volumeMounts"]} == {
        "/mnt/nvme/meshlet", "/var/lib/meshlet"}
    assert render("default").pod["initContainers"][0]["command"] == [
        "chown", "10001:10001", "/var/cache/meshlet"]


def test_probes_ask_the_agents_health_endpoints_on_the_metrics_port(render: Render) -> None:
    container = render("default").container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8033, "peer": 8034, "http-metrics": 2112}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert ports[get["port"]] == 2112, probe
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                     "readinessProbe": "/readyz"}
    startup = container["startupProbe"]
    # The runtimes get 90 s to start (runtime_start_timeout_s); the probe allows more.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 90
    assert container["livenessProbe"]["failureThreshold"] >= 3


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_grace_period_outlasts_the_drain_and_the_shutdown(render: Render, case: str) -> None:
    chart = render(case)
    env = chart.env
    drain_and_grace = float(env["MESHLET_DRAIN_TIMEOUT_S"]) + float(
        env["MESHLET_SHUTDOWN_GRACE_S"])
    assert chart.pod["terminationGracePeriodSeconds"] > drain_and_grace


def test_a_grace_period_shorter_than_the_drain_is_refused(helm: tools.Helm) -> None:
    with pytest.raises(tools.HelmError) as err:
        helm.template({"terminationGracePeriodSeconds": 30})
    assert "terminationGracePeriodSeconds (30) must exceed" in err.value.stderr
    assert "(30)" in err.value.stderr and "shutdownGraceSeconds (30)" in err.value.stderr


def test_volumes_cover_every_place_the_agent_writes(render: Render) -> None:
    chart = render("default")
    mounts = {m["mountPath"]: m for m in chart.container["volumeMounts"]}
    volumes = {v["name"]: v for v in chart.pod["volumes"]}
    assert {m["name"] for m in mounts.values()} <= set(volumes)
    assert volumes[mounts["/var/lib/meshlet"]["name"]] == {"name": "data", "emptyDir": {}}
    assert volumes[mounts["/var/cache/meshlet"]["name"]]["hostPath"] == {
        "path": "/var/cache/meshlet", "type": "DirectoryOrCreate"}
    assert volumes[mounts["/tmp"]["name"]] == {"name": "tmp", "emptyDir": {}}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {
        "medium": "Memory", "sizeLimit": "1Gi"}
    assert chart.env["MESHLET_DATA_DIR"] in mounts
    assert chart.env["MESHLET_CACHE_DIR"] in mounts
    # Read-only: the key file and the storage config.
    keys = mounts["/etc/meshlet/cluster"]
    assert keys["readOnly"] is True
    assert volumes[keys["name"]]["secret"] == {
        "secretName": f"{FULLNAME}-cluster-keys", "defaultMode": 0o440,
        "items": [{"key": "cluster-keys", "path": "keys"}]}
    assert chart.env["MESHLET_CLUSTER_KEY_FILE"] == "/etc/meshlet/cluster/keys"
    storage = mounts[chart.env["MESHLET_STORAGE_CONFIG_DIR"]]
    assert storage["readOnly"] is True
    # ModelMesh's Secret: every key a file; optional, so pods start before it exists.
    assert volumes[storage["name"]]["secret"] == {
        "secretName": "storage-config", "defaultMode": 0o440, "optional": True}


def test_data_dir_on_the_node_when_asked(render: Render) -> None:
    volumes = {v["name"]: v for v in render("everything").pod["volumes"]}
    assert volumes["data"]["hostPath"] == {"path": "/var/lib/meshlet",
                                          "type": "DirectoryOrCreate"}
    assert volumes["models"] == {"name": "models",
                                 "persistentVolumeClaim": {"claimName": "models"}}


def test_a_named_peer_key_secret_is_mounted_and_none_is_made(render: Render) -> None:
    chart = render("existing-key")
    assert not chart.all("Secret")
    volumes = {v["name"]: v for v in chart.pod["volumes"]}
    assert volumes["cluster-keys"]["secret"]["secretName"] == "team-peer-keys"
    assert volumes["cluster-keys"]["secret"]["items"] == [{"key": "keys", "path": "keys"}]


def test_gpu_limits_node_selector_and_tolerations(render: Render) -> None:
    gpu = render("gpu")
    assert gpu.container["resources"] == {
        "requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": 2}}
    assert gpu.pod["nodeSelector"] == {"kubernetes.io/os": "linux",
                                       "nvidia.com/gpu.present": "true"}
    assert gpu.pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    default = render("default")
    assert "limits" not in default.container["resources"]
    assert default.pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "tolerations" not in default.pod


def test_host_port_is_the_grpc_port_on_the_node(render: Render) -> None:
    [grpc] = [p for p in render("hostport").container["ports"] if p["name"] == "grpc"]
    assert grpc == {"name": "grpc", "containerPort": 8033, "protocol": "TCP", "hostPort": 18033}
    assert all("hostPort" not in p for p in render("default").container["ports"])


def test_rolling_update_one_node_at_a_time_by_default(render: Render) -> None:
    daemonset = render("default").one("DaemonSet")
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert render("everything").one("DaemonSet")["spec"]["updateStrategy"][
        "rollingUpdate"] == {"maxUnavailable": "20%"}


def test_image_by_tag_or_by_digest(render: Render) -> None:
    assert render("default").container["image"] == "ghcr.io/meshlet/meshlet:0.1.0"
    assert render("default").container["imagePullPolicy"] == "IfNotPresent"
    assert render("everything").container["image"] == f"ghcr.io/meshlet/meshlet@{DIGEST}"
    assert render("everything").pod["imagePullSecrets"] == [{"name": "registry"}]


def test_scheduling_and_pod_metadata_values_land(render: Render) -> None:
    chart = render("everything")
    values = VALUE_SETS["everything"]
    assert chart.pod["priorityClassName"] == "system-node-critical"
    assert chart.pod["affinity"] == values["affinity"]
    assert chart.pod["tolerations"] == values["tolerations"]
    assert chart.pod["terminationGracePeriodSeconds"] == 120
    assert chart.container["resources"] == values["resources"]
    template = chart.one("DaemonSet")["spec"]["template"]["metadata"]
    assert template["annotations"] == {"example.com/team": "ml"}
    assert template["labels"]["team"] == "ml"
    assert "priorityClassName" not in render("default").pod


def test_selector_picks_the_pods_and_survives_upgrades(render: Render) -> None:
    daemonset = render("everything").one("DaemonSet")
    selector = daemonset["spec"]["selector"]["matchLabels"]
    # Only labels that never change: a DaemonSet's selector is immutable.
    assert selector == {"app.kubernetes.io/name": "meshlet",
                        "app.kubernetes.io/instance": RELEASE}
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_service_account_and_token(render: Render) -> None:
    chart = render("default")
    account = chart.one("ServiceAccount")
    assert chart.pod["serviceAccountName"] == account["metadata"]["name"] == FULLNAME
    assert chart.pod["automountServiceAccountToken"] is True
    annotations = render("everything").one("ServiceAccount")["metadata"]["annotations"]
    assert annotations == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/m"}
