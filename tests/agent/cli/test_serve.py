"""`meshlet serve`: settings from env plus flags, and the ready file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.cli.errors import EXIT_USAGE, UsageError
from agent.cli.main import build_parser
from agent.cli.serve import ReadyFile, settings_from
from agent.config import Settings


def parse(*argv: str) -> Settings:
    return settings_from(build_parser().parse_args(["serve", *argv]))


def test_flags_override_env_and_env_applies_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MESHLET_GRPC_PORT", "9000")
    monkeypatch.setenv("MESHLET_METRICS_PORT", "9001")
    monkeypatch.setenv("MESHLET_SHUTDOWN_GRACE_S", "0.5")
    settings = parse("--grpc-port", "0", "--data-dir", str(tmp_path), "--memory-budget", "512Mi",
                     "--demo", "20")
    assert settings.grpc_port == 0
    assert settings.metrics_port == 9001
    assert settings.shutdown_grace_s == 0.5
    assert settings.data_dir == tmp_path
    assert settings.memory_budget_bytes == 512 * 2**20
    assert settings.demo_models == 20


def test_defaults_when_nothing_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MESHLET_"):
            monkeypatch.delenv(name)
    assert parse() == Settings.model_validate({})


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--grpc-port", "70000"], {}, "invalid setting grpc_port (--grpc-port or "
                                       "MESHLET_GRPC_PORT): Input should be less than or "
                                       "equal to 65535, got 70000"),
        ([], {"MESHLET_METRICS_PORT": "abc"}, "invalid setting metrics_port (--metrics-port or "
                                              "MESHLET_METRICS_PORT)"),
        ([], {"MESHLET_SHUTDOWN_GRACE_S": "-1"}, "invalid setting shutdown_grace_s "
                                                 "(MESHLET_SHUTDOWN_GRACE_S)"),
        ([], {"MESHLET_RUNTIMES": "not json"}, "invalid setting: "),
    ],
)
def test_invalid_settings_name_the_field(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UsageError) as info:
        parse(*argv)
    assert info.value.exit_code == EXIT_USAGE
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--memory-budget", "lots"], ["--grpc-port", "x"], ["--log-level", "loud"]):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["serve", *argv])
        assert info.value.code == EXIT_USAGE
    assert "is not a size" in capsys.readouterr().err


def test_log_level_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLET_LOG_LEVEL", "debug")
    assert build_parser().parse_args(["serve"]).log_level == "DEBUG"
    assert build_parser().parse_args(["serve", "--log-level", "error"]).log_level == "ERROR"


def test_ready_file_is_written_whole_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ready.json"
    ready = ReadyFile(path)
    ready.remove()  # nothing written yet: nothing to remove
    ready.write(SimpleNamespace(grpc_port=1234, metrics_port=5678, peer_port=0))  # type: ignore[arg-type]
    assert json.loads(path.read_text()) == {
        "pid": os.getpid(), "grpc_port": 1234, "metrics_port": 5678, "peer_port": 0
    }
    assert [p.name for p in path.parent.iterdir()] == ["ready.json"], "no temp file left"
    ready.remove()
    assert not path.exists()
