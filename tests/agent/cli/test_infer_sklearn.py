"""`meshlet infer` against a plain scikit-learn model, which declares no inputs:
a real agent, a real LogisticRegression saved with joblib, the CLI as a child
process, and the predictions the same model gives in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import pytest
from sklearn.linear_model import LogisticRegression

from agent.process import AgentProcess

ROWS = [[5.0, 0.5, 1.0], [-2.0, 1.5, -0.25]]


def meshlet(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", *args],
        capture_output=True, text=True, timeout=120, input=stdin,
    )


def row_args(rows: list[list[float]]) -> list[str]:
    return [arg for row in rows for arg in ("--input", "x=" + ",".join(map(str, row)))]


@pytest.fixture
def model(tmp_path: Path) -> LogisticRegression:
    """A tiny classifier on 3 features, saved as the artifact MLServer loads."""
    features = [[0, 0, 0], [1, 0, 1], [2, 1, 0], [4, 1, 2], [5, 0, 3], [6, 2, 1]]
    trained = LogisticRegression().fit(features, [0, 0, 0, 1, 1, 1])
    (tmp_path / "model").mkdir()
    joblib.dump(trained, tmp_path / "model" / "model.joblib")
    return trained


@pytest.fixture
def address(start_agent: Callable[..., AgentProcess], model: LogisticRegression,
            tmp_path: Path) -> str:
    agent = start_agent()
    added = meshlet("model", "add", "my-lr", "--uri", f"file://{tmp_path / 'model'}",
                    "--type", "sklearn", "--address", agent.address)
    assert added.returncode == 0, added.stderr
    return agent.address


def test_infer_sends_rows_to_a_model_without_declared_inputs(
    address: str, model: LogisticRegression
) -> None:
    predicted = model.predict(ROWS).tolist()
    assert sorted(predicted) == [0, 1]  # the two rows tell the classes apart

    result = meshlet("infer", "my-lr", *row_args(ROWS), "--address", address)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"predict (INT64, shape [2, 1]): {predicted[0]}, {predicted[1]}\n"

    probabilities = meshlet("infer", "my-lr", *row_args(ROWS), "--output-name", "predict_proba",
                            "--address", address)
    assert probabilities.returncode == 0, probabilities.stderr
    expected = ", ".join(repr(p) for p in model.predict_proba(ROWS).ravel().tolist())
    assert probabilities.stdout == f"predict_proba (FP64, shape [2, 2]): {expected}\n"


def test_infer_output_json(address: str, model: LogisticRegression) -> None:
    result = meshlet("infer", "my-lr", *row_args(ROWS), "--output", "json",
                     "--address", address)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "model_name": "my-lr", "model_version": "", "id": "",
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [2, 1],
                     "data": model.predict(ROWS).tolist()}],
    }

    # The same request as a KServe v2 JSON body on stdin, asking for probabilities.
    body: dict[str, Any] = {
        "id": "req-1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": ROWS}],
        "outputs": [{"name": "predict_proba"}],
    }
    from_json = meshlet("infer", "my-lr", "--json", "-", "--output", "json",
                        "--address", address, stdin=json.dumps(body))
    assert from_json.returncode == 0, from_json.stderr
    response = json.loads(from_json.stdout)
    assert response["id"] == "req-1"
    assert response["outputs"] == [{
        "name": "predict_proba", "datatype": "FP64", "shape": [2, 2],
        "data": model.predict_proba(ROWS).ravel().tolist(),
    }]


def test_bad_inputs_are_one_line_errors(address: str) -> None:
    uneven = meshlet("infer", "my-lr", "--input", "x=1,2,3", "--input", "x=4,5",
                     "--address", address)
    assert (uneven.returncode, uneven.stdout) == (2, "")
    assert uneven.stderr == (
        "error: input x: row 2 has 2 values but row 1 has 3; each --input x=... is one row\n")

    misfit = meshlet("infer", "my-lr", "--input", "x=1,2,3,4,5,6", "--shape", "x=4,2",
                     "--address", address)
    assert (misfit.returncode, misfit.stderr) == (
        2, "error: input x: 6 values do not fit --shape [4, 2]\n")

    old_flag = meshlet("infer", "my-lr", "--input", "x=1,2,3", "--output", "predict",
                       "--address", address)
    assert (old_flag.returncode, old_flag.stderr) == (
        2, "error: --output 'predict': the format is text or json (to choose outputs, "
           "use --output-name NAME)\n")

    nothing = meshlet("infer", "my-lr", "--address", address)
    assert (nothing.returncode, nothing.stderr) == (
        2, "error: give the inputs with --input NAME=v1,v2,..., --json FILE or "
           "--npy NAME=FILE\n")

    # Four features where the model takes three: the server's answer, exit 1.
    wrong = meshlet("infer", "my-lr", "--input", "x=1,2,3,4", "--address", address)
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("error: ")
    assert len(wrong.stderr.splitlines()) == 1
