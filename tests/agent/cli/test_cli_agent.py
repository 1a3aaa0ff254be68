"""The `meshlet` CLI as users run it: child processes against one real agent
(`meshlet serve --demo 20`, real MLServer), plus the failures that need none."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.process import AgentProcess
from tests.conftest import FAST_ENV

SIXTEEN = ",".join(str(i) for i in range(1, 17))
ONES = ",".join(["1"] * 16)


def meshlet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    process = AgentProcess(tmp_path_factory.mktemp("cli-agent"), ["--demo", "20"], FAST_ENV)
    try:
        process.start()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def address(agent: AgentProcess) -> str:
    return agent.address


def listed_ids(address: str) -> set[str]:
    result = meshlet("model", "ls", "-q", "--address", address)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_ready_file_names_the_serving_process(agent: AgentProcess) -> None:
    assert agent.info["pid"] == agent.pid
    assert agent.info["grpc_port"] > 0 and agent.info["metrics_port"] > 0


def test_model_add_then_status(address: str) -> None:
    added = meshlet("model", "add", "cli-one", "--uri", "builtin://simple-string",
                    "--type", "simple-string", "--label", "team=cli", "--address", address)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("model cli-one: NOT_LOADED")

    status = meshlet("model", "status", "cli-one", "--address", address)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == "model cli-one: NOT_LOADED"

    loaded = meshlet("model", "load", "cli-one", "--address", address)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines()[0] == "model cli-one: LOADED"
    assert re.match(r"  copy on \S+: LOADED since \d{4}-", loaded.stdout.splitlines()[1])


def table(stdout: str) -> list[tuple[str, str, str]]:
    """``model ls`` rows as (id, state, reason), checked against the header."""
    lines = stdout.splitlines()
    assert re.fullmatch(r"ID +STATE +REASON", lines[0])
    state_at, reason_at = lines[0].index("STATE"), lines[0].index("REASON")
    return [(line[:state_at].strip(), line[state_at:reason_at].strip(), line[reason_at:])
            for line in lines[1:-1]]


def test_model_ls_names_states_as_model_status_does(address: str, tmp_path: Path) -> None:
    no_settings = tmp_path / "no-settings"  # there, but not loadable by MLServer
    no_settings.mkdir()
    for model_id, uri, model_type in (
        ("ls-10", "builtin://simple-string", "simple-string"),
        ("ls-2", "builtin://simple-string", "simple-string"),
        ("ls-1", "builtin://simple-string", "simple-string"),
        ("ls-broken", str(no_settings), "mlserver"),
    ):
        added = meshlet("model", "add", model_id, "--uri", uri, "--type", model_type,
                        "--address", address)
        assert added.returncode == 0, added.stderr
    assert meshlet("model", "load", "ls-2", "--address", address).returncode == 0
    assert meshlet("model", "load", "ls-broken", "--address", address).returncode == 1

    result = meshlet("model", "ls", "--address", address)
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    ours = [row for row in rows if row[0].startswith("ls-")]
    assert [row[:2] for row in ours] == [
        ("ls-1", "NOT_LOADED"), ("ls-2", "LOADED"), ("ls-10", "NOT_LOADED"),
        ("ls-broken", "LOADING_FAILED"),
    ]
    assert [row[2] for row in ours[:3]] == ["", "", ""]
    assert "model-settings.json" in ours[3][2]
    for model_id, state, _ in ours:
        status = meshlet("model", "status", model_id, "--address", address)
        assert status.stdout.splitlines()[0] == f"model {model_id}: {state}"

    demo = [row for row in rows if row[0].startswith("simple-string-")]
    assert [row[0] for row in demo] == [f"simple-string-{i}" for i in range(20)]
    assert {row[1] for row in demo} <= {"NOT_LOADED", "LOADED"}
    counts = Counter(state for _, state, _ in rows)
    by_state = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    assert result.stdout.splitlines()[-1] == f"{len(rows)} models ({by_state})"

    ready = meshlet("model", "ls", "--ready", "-q", "--address", address)
    assert ready.stdout.split() == [row[0] for row in rows if row[1] == "LOADED"]


def test_infer_prints_sums_and_differences(address: str) -> None:
    result = meshlet("infer", "simple-string-3", "--input", f"INPUT0={SIXTEEN}",
                     "--input", f"INPUT1={ONES}", "--address", address)
    assert result.returncode == 0, result.stderr
    sums = ", ".join(str(i + 1) for i in range(1, 17))
    differences = ", ".join(str(i - 1) for i in range(1, 17))
    assert re.search(rf"^OUTPUT0 \(BYTES, shape \[[\d, ]+\]\): {sums}$", result.stdout, re.M)
    assert re.search(rf"^OUTPUT1 \(BYTES, shape \[[\d, ]+\]\): {differences}$",
                     result.stdout, re.M)

    only = meshlet("infer", "simple-string-3", "--input", f"INPUT0={SIXTEEN}",
                   "--input", f"INPUT1={ONES}", "--output-name", "OUTPUT1", "--address", address)
    assert only.returncode == 0, only.stderr
    assert [line.split()[0] for line in only.stdout.splitlines()] == ["OUTPUT1"]


def test_infer_of_an_unknown_model_exits_1(address: str) -> None:
    result = meshlet("infer", "no-such-model", "--input", "INPUT0=1", "--address", address)
    assert result.returncode == 1
    assert result.stderr.startswith("error: NOT_FOUND: ")
    assert "no-such-model" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_infer_with_values_that_do_not_fit_exits_2(address: str) -> None:
    result = meshlet("infer", "simple-string-4", "--input", "INPUT0=1,2,3",
                     "--input", f"INPUT1={ONES}", "--address", address)
    assert result.returncode == 2
    assert result.stderr.startswith("error: input INPUT0: ")


def test_model_add_file(address: str, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n" + "".join(
        f"  - {{id: cli-file-{i}, uri: 'builtin://simple-string', type: simple-string}}\n"
        for i in range(3)
    ))
    result = meshlet("model", "add", "--file", str(models), "--concurrency", "2",
                     "--address", address)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "registered 3 models (0 failed)\n"
    assert re.search(r"^registering\s+3/3\s+100\.0%", result.stderr, re.M)  # not a TTY: plain
    assert {f"cli-file-{i}" for i in range(3)} <= listed_ids(address)

    one = tmp_path / "one.yaml"
    one.write_text("- {id: cli-file-one, uri: 'builtin://simple-string', type: simple-string}\n")
    result = meshlet("model", "add", "--file", str(one), "--address", address)
    assert (result.returncode, result.stdout) == (0, "registered 1 model (0 failed)\n")


def test_prefetch_of_builtin_models_has_nothing_to_fetch(address: str, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("".join(
        f"- {{id: cli-pre-{i}, uri: 'builtin://simple-string', type: simple-string}}\n"
        for i in range(100)
    ))
    result = meshlet("model", "add", "--file", str(models), "--prefetch", "--address", address)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("registered 100 models (0 failed)\n"
                             "prefetched 0 models (0 failed); nothing to fetch for 100 builtin "
                             "models\n")
    assert "failed:" not in result.stderr

    single = meshlet("model", "add", "cli-pre-one", "--uri", "builtin://simple-string",
                     "--type", "simple-string", "--prefetch", "--address", address)
    assert single.returncode == 0, single.stderr
    assert single.stdout == ("model cli-pre-one: NOT_LOADED\n"
                             "cache:   nothing to fetch (builtin)\n")


def test_registration_errors_name_the_fix(address: str, tmp_path: Path) -> None:
    torch = meshlet("model", "add", "cli-torch", "--uri", str(tmp_path), "--type", "pytorch",
                    "--address", address)
    assert torch.returncode == 1
    assert torch.stderr == (
        "error: INVALID_ARGUMENT: model type 'pytorch' is served by runtime 'triton', not "
        "'mlserver': register it with --runtime triton (ModelMesh API: modelInfo.key "
        '{"runtime": "triton"})\n'
    )
    missing = tmp_path / "no-such-model.joblib"
    nowhere = meshlet("model", "add", "cli-nowhere", "--uri", str(missing), "--type", "sklearn",
                      "--address", address)
    assert nowhere.returncode == 1
    assert nowhere.stderr == (
        f"error: INVALID_ARGUMENT: storage uri {str(missing)!r}: {missing} does not exist\n"
    )
    assert not {"cli-torch", "cli-nowhere"} & listed_ids(address)


def test_an_invalid_file_sends_nothing(address: str, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("- {id: cli-never, uri: builtin://simple-string, type: simple-string}\n"
                      "- {id: cli-bad, uri: builtin://simple-string}\n")
    result = meshlet("model", "add", "--file", str(models), "--address", address)
    assert result.returncode == 2
    assert "[1] (id 'cli-bad'): type: is required" in result.stderr
    assert "cli-never" not in listed_ids(address)


def test_vmodel_set_status_rm(address: str) -> None:
    env = {**os.environ, "MESHLET_ADDRESS": address}  # the default --address
    created = meshlet("vmodel", "set", "cli-alias", "simple-string-5", "--sync", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[:4] == [
        "vmodel cli-alias: DEFINED", "  active: simple-string-5", "  target: simple-string-5",
        "  model simple-string-5: LOADED",  # the names `model status` and `model ls` use
    ]
    shown = meshlet("vmodel", "status", "cli-alias", env=env)
    assert shown.stdout.splitlines()[:4] == created.stdout.splitlines()[:4]
    status = meshlet("model", "status", "cli-alias", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("vmodel cli-alias: DEFINED")

    assert meshlet("vmodel", "rm", "cli-alias", env=env).returncode == 0
    gone = meshlet("vmodel", "status", "cli-alias", env=env)
    assert gone.returncode == 1
    assert "NOT_FOUND" in gone.stderr


def test_model_rm(address: str) -> None:
    added = meshlet("model", "add", "cli-doomed", "--uri", "builtin://simple-string",
                    "--type", "simple-string", "--address", address)
    assert added.returncode == 0, added.stderr
    removed = meshlet("model", "rm", "cli-doomed", "--address", address)
    assert (removed.returncode, removed.stdout) == (0, "unregistered cli-doomed\n")
    status = meshlet("model", "status", "cli-doomed", "--address", address)
    assert status.returncode == 1
    assert "NOT_FOUND" in status.stderr


# --- no agent needed -----------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_agent_exits_1() -> None:
    address = f"127.0.0.1:{closed_port()}"
    result = meshlet("model", "ls", "--address", address)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach meshlet at {address} (")
    assert len(result.stderr.splitlines()) == 1


def test_serve_with_an_invalid_setting_exits_2() -> None:
    result = meshlet("serve", "--grpc-port", "70000")
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid setting grpc_port (--grpc-port or ")
    assert len(result.stderr.splitlines()) == 1


def test_help_runs_as_a_module() -> None:
    result = meshlet("--help")
    assert result.returncode == 0
    assert "model" in result.stdout and "infer" in result.stdout


def test_node_shows_budget_processes_and_largest_models(agent: AgentProcess,
                                                        address: str) -> None:
    for model_id in ("simple-string-11", "simple-string-12"):
        assert meshlet("model", "load", model_id, "--address", address).returncode == 0
    result = meshlet("node", "--top", "1", "--address", address)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^budget: +[\d.]+ \w+; used [\d.]+ KiB by \d+ models", out, re.M), out
    assert "runtime:  mlserver: up" in out
    assert re.search(r"^mlserver +\d+ +\d+ +[\d.]+ MiB", out, re.M), out
    assert "GPUs: none" in out  # no NVML on this machine
    model_rows = out.split("IN FLIGHT\n", 1)[1].strip().splitlines()
    assert len(model_rows) == 1 and model_rows[0].split()[1] == "mlserver"

    status = meshlet("model", "status", "simple-string-11", "--address", address)
    assert re.search(r"^size: +[\d.]+ \w+ \(predicted 16.0 KiB, [\d.]+x\)$", status.stdout,
                     re.M), status.stdout
    unloaded = meshlet("model", "status", "simple-string-19", "--address", address)
    assert re.search(r"^size: +(not measured yet|[\d.]+ \w+ when last measured)",
                     unloaded.stdout, re.M), unloaded.stdout
