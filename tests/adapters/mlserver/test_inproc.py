"""Runs ``inproc/`` (tests that import MLServer itself) in a child pytest: the
main test process must never import ``mlserver`` (see tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
INPROC = Path(__file__).resolve().parent / "inproc"


def test_mlserver_side_tests_in_a_child_pytest() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider", INPROC],
        cwd=ROOT,
        env={**os.environ, "MESHLET_INPROC_MLSERVER": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert " passed" in result.stdout
