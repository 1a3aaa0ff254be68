"""The value sets the chart is rendered with, and a view of what it renders."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

RELEASE = "prod"
NAMESPACE = "serving"
FULLNAME = "prod-meshlet"
DIGEST = "sha256:" + "ab" * 32

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {"gpu": {"enabled": True, "count": 2}, "runtimes": ["mlserver", "triton"]},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "modelmesh": {"compat": {"modelmesh": True}},
    "servicemonitor": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                           "scrapeTimeout": "10s"},
    },
    "hostport": {"hostPort": {"enabled": True, "port": 18033}},
    "existing-key": {"cluster": {"existingKeySecret": "team-peer-keys", "keySecretKey": "keys"}},
    # Everything optional at once, with non-default values where they show.
    "everything": {
        "image": {"digest": DIGEST, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/m"}},
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "16Gi"}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "models",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "pool", "operator": "In", "values": ["models"]}]}]}}},
        "priorityClassName": "system-node-critical",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "20%"}},
        "terminationGracePeriodSeconds": 120,
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"team": "ml"},
        "extraEnv": [{"name": "MESHLET_COPY_MAX", "value": "2"}],
        "extraVolumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
        "extraVolumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
        "logLevel": "DEBUG",
        "memoryBudget": 4294967296,
        "dataDir": {"hostPath": "/var/lib/meshlet"},
        "cache": {"hostPath": "/mnt/nvme/meshlet", "quota": "200Gi"},
        "service": {"annotations": {"example.com/lb": "internal"}},
        "cluster": {"discovery": "kubernetes", "drainTimeoutSeconds": 60},
        "watchNamespaces": ["team-a"],
        "compat": {"modelmesh": True},
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": "10%"},
        "networkPolicy": {
            "enabled": True,
            "grpcFrom": [{"namespaceSelector": {"matchLabels": {"meshlet-client": "true"}}}],
        },
        "serviceMonitor": {"enabled": True},
    },
    # One agent per node on its own: no cluster, no Kubernetes API, no extras.
    "standalone": {
        "cluster": {"enabled": False},
        "kube": {"enabled": False},
        "storageConfigSecret": "",
        "volumePermissions": {"enabled": False},
        "dataDir": {"sizeLimit": "10Gi"},
        "memoryBudget": "8Gi",
    },
}


class Chart:
    """The objects one render produced."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.objects)

    def kinds(self) -> list[str]:
        return sorted(obj["kind"] for obj in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        """The DaemonSet's pod spec."""
        spec: dict[str, Any] = self.one("DaemonSet")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        [container] = self.pod["containers"]
        assert container["name"] == "meshlet"
        return container

    @property
    def env(self) -> dict[str, Any]:
        """The container's environment: name -> value, or the valueFrom object."""
        env = {}
        for var in self.container["env"]:
            assert var["name"] not in env, f"{var['name']} set twice"
            env[var["name"]] = var.get("value", var.get("valueFrom"))
        return env
