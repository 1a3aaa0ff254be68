"""When Kubernetes is on, its settings and flags, and the client's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import build_parser
from agent.cli.serve import settings_from
from agent.config import Settings
from agent.kube.config import KubeSettings, kube_enabled, load_api_client
from tests.agent.kube.apiserver import FakeApiServer


def test_auto_is_on_in_a_pod_with_a_token_or_with_a_kubeconfig(tmp_path: Path) -> None:
    token = tmp_path / "token"
    assert not kube_enabled(KubeSettings(environ={}, token_file=token))
    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert not kube_enabled(KubeSettings(environ=pod, token_file=token))  # no token mounted
    token.write_text("eyJ...")
    assert kube_enabled(KubeSettings(environ=pod, token_file=token))
    assert kube_enabled(KubeSettings(environ={"KUBECONFIG": "/k"}, token_file=token))
    assert kube_enabled(KubeSettings(environ={}, kubeconfig=Path("/k"),
                                     token_file=tmp_path / "none"))
    assert not kube_enabled(KubeSettings(mode="off", environ=pod, token_file=token))
    assert kube_enabled(KubeSettings(mode="on", environ={}, token_file=tmp_path / "none"))


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLET_KUBE", "on")
    monkeypatch.setenv("MESHLET_WATCH_NAMESPACES", "team-a, team-b")
    monkeypatch.setenv("MESHLET_MODELMESH_COMPAT", "true")
    monkeypatch.setenv("MESHLET_KUBE_STATUS_INTERVAL_S", "2.5")
    settings = Settings()
    kube = settings.kube_settings()
    assert (kube.mode, tuple(kube.namespaces), kube.modelmesh_compat) == (
        "on", ("team-a", "team-b"), True)
    assert kube.status_interval_s == 2.5
    monkeypatch.setenv("MESHLET_WATCH_NAMESPACES", '["x"]')
    assert Settings().watch_namespaces == ["x"]


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHLET_KUBE", "off")
    args = build_parser().parse_args([
        "serve", "--kube", "on", "--kubeconfig", str(tmp_path / "kc"),
        "--watch-namespaces", "a,b", "--modelmesh-compat",
    ])
    settings = settings_from(args)
    assert settings.kube == "on"
    assert settings.kubeconfig == tmp_path / "kc"
    assert settings.watch_namespaces == ["a", "b"]
    assert settings.modelmesh_compat
    plain = settings_from(build_parser().parse_args(["serve"]))
    assert (plain.kube, plain.modelmesh_compat) == ("off", False)  # the env's, and default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--kube", "maybe"])


def test_the_client_reads_the_named_kubeconfig(tmp_path: Path) -> None:
    server = FakeApiServer()  # not started: only its kubeconfig is read
    server.port = 6443
    path = server.write_kubeconfig(tmp_path / "kubeconfig", token="abc")
    client = load_api_client(KubeSettings(mode="on", kubeconfig=path, environ={}))
    try:
        assert client.configuration.host == "http://127.0.0.1:6443"
        assert client.configuration.api_key["BearerToken"].endswith("abc")
    finally:
        client.close()
