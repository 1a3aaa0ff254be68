"""Fixtures for the chart tests: the real helm, and the validators.

A missing tool never passes unnoticed: under CI (the environment variable CI
set) the tests that need it fail, saying what to ``pip install``; elsewhere
they are skipped with that message, and the session's summary repeats it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.charts import cases, tools
from tests.charts.cases import Chart

_MISSING: dict[str, str] = {}  # what is missing -> how to get it, for the summary


def require(what: str, message: str) -> NoReturn:
    """Fail (under CI) or skip (elsewhere, loudly) a test that needs ``what``."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing: {message}", pytrace=False)
    _MISSING[what] = message
    pytest.skip(f"{what} is missing: {message}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for what, message in _MISSING.items():
        terminalreporter.write_sep("!", f"chart tests skipped: {what} is missing", red=True)
        terminalreporter.write_line(message)


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tools.Helm:
    """The real helm, extracted once per session (or once per machine, where
    pytest's cache is on)."""
    cache = getattr(request.config, "cache", None)
    root = (Path(cache.mkdir("helm-tools")) if cache is not None
            else tmp_path_factory.getbasetemp() / "helm-tools")
    try:
        binary = tools.tool_path("helm", root)
    except tools.ToolMissing as err:
        require("helm", str(err))
    return tools.Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def kube_validate() -> Callable[[dict[str, Any]], None]:
    """Validates one object against Kubernetes' own schemas (strict: unknown
    fields are errors) for the version the chart is rendered for."""
    try:
        import kubernetes_validate
    except ImportError:
        require("kubernetes-validate", "pip install kubernetes-validate (a dev dependency)")

    def validate(obj: dict[str, Any]) -> None:
        kubernetes_validate.validate(obj, tools.KUBE_VERSION, strict=True)

    return validate


@pytest.fixture(scope="session")
def cel_evaluate() -> Callable[[str, dict[str, Any]], Any]:
    """Evaluates a CEL expression (the CRD's x-kubernetes-validations rules)."""
    try:
        import cel
    except ImportError:
        require("common-expression-language",
                "pip install common-expression-language (a dev dependency)")

    def evaluate(rule: str, self: dict[str, Any]) -> Any:
        return cel.evaluate(rule, {"self": self})

    return evaluate


@pytest.fixture(scope="session")
def render(helm: tools.Helm) -> Callable[[str], Chart]:
    """The chart rendered with one of ``cases.VALUE_SETS``, once per session."""
    done: dict[str, Chart] = {}

    def get(case: str) -> Chart:
        if case not in done:
            done[case] = Chart(helm.template(
                cases.VALUE_SETS[case], release=cases.RELEASE, namespace=cases.NAMESPACE))
        return done[case]

    return get
