"""The generated peer key survives upgrades: the chart reads the installed
Secret back (``lookup``) instead of making a new key. helm renders against a
stand-in API server (``fakeapi``) that holds what an install left."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from tests.charts import fakeapi, tools
from tests.charts.cases import FULLNAME, NAMESPACE, RELEASE

SECRET = f"{FULLNAME}-cluster-keys"


def installed_secret(data: dict[str, str]) -> dict[str, Any]:
    """The Secret as the install left it, with Helm's ownership marks."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": SECRET, "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": RELEASE,
                            "meta.helm.sh/release-namespace": NAMESPACE},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def render_against(helm: tools.Helm, objects: list[dict[str, Any]], tmp_path: Path,
                   *args: str) -> tuple[dict[str, Any], list[str]]:
    kubeconfig = tmp_path / "kubeconfig"
    with fakeapi.serving(objects, kubeconfig) as api:
        out = helm.run("template", RELEASE, str(tools.CHART), "--namespace", NAMESPACE,
                       "--dry-run=server", "--disable-openapi-validation",
                       "--show-only", "templates/secret.yaml", *args,
                       env={"KUBECONFIG": str(kubeconfig)})
    return yaml.safe_load(out), api.requests


def test_an_upgrade_keeps_the_installed_key(helm: tools.Helm, tmp_path: Path) -> None:
    installed = installed_secret({"cluster-keys": "kept-key\n"})
    secret, requests = render_against(helm, [installed], tmp_path)
    assert f"GET /api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}" in requests
    assert secret["data"] == installed["data"]
    assert not [r for r in requests if not r.startswith("GET ")]  # a dry run writes nothing


def test_a_first_install_makes_a_new_key(helm: tools.Helm, tmp_path: Path) -> None:
    secret, requests = render_against(helm, [], tmp_path)
    assert f"GET /api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}" in requests
    key = base64.b64decode(secret["data"]["cluster-keys"]).decode()
    assert len(key.strip()) == 64


def test_a_secret_without_the_key_gets_one(helm: tools.Helm, tmp_path: Path) -> None:
    # keySecretKey changed since the install: the old entry is not the key.
    installed = installed_secret({"cluster-keys": "old\n"})
    secret, _ = render_against(helm, [installed], tmp_path, "--set",
                               "cluster.keySecretKey=peer-keys")
    assert set(secret["data"]) == {"peer-keys"}
    assert len(base64.b64decode(secret["data"]["peer-keys"]).decode().strip()) == 64
