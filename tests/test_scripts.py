"""scripts/run, scripts/test and scripts/bench each set up the environment of
their purpose, and never another's (the Triton extra pins numpy < 2, which must
not reach what `meshlet serve` runs on), whatever arguments they were given."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def environment_of(script: str, *args: str) -> str:
    """The virtualenv and extras ``script`` would use, read by running its own
    ``source`` line in dry-run mode (nothing is created or installed)."""
    text = (ROOT / "scripts" / script).read_text()
    [line] = [ln for ln in text.splitlines() if "_env.sh" in ln and ln.startswith("source")]
    result = subprocess.run(
        ["bash", "-c", f'set -- "$@"; {line}', script, *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT / "scripts",
        env={k: v for k, v in {**os.environ, "MESHLET_ENV_DRY_RUN": "1"}.items()
             if k != "MESHLET_VENV"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize(("script", "venv", "extras"), [
    ("run", ".venv", "base"),
    ("test", ".venv-dev-triton", "dev,triton"),
    ("bench", ".venv-dev-triton", "dev,triton"),
])
def test_each_script_uses_the_environment_of_its_purpose(
    script: str, venv: str, extras: str
) -> None:
    # Arguments meant for the command (./scripts/run --grpc-port 9033) must not
    # be taken for the extras to install.
    assert environment_of(script, "--grpc-port", "9033") == f"{ROOT / venv} {extras}"


def test_run_and_test_environments_differ() -> None:
    assert environment_of("run").split()[0] != environment_of("test").split()[0]
    assert re.search(r"^\.venv-\*/$", (ROOT / ".gitignore").read_text(), re.MULTILINE)
