"""The command tree: every command explains itself, bad usage exits 2."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from agent.cli.client import DEFAULT_ADDRESS
from agent.cli.errors import EXIT_OK, EXIT_USAGE
from agent.cli.main import build_parser, main


def command_paths(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*path, name))


PATHS = [path for path, _ in command_paths(build_parser())]


def test_the_tree_has_every_command() -> None:
    assert set(PATHS) >= {
        (), ("serve",), ("infer",), ("model",), ("vmodel",),
        *(("model", c) for c in ("add", "rm", "ls", "status", "load", "unload")),
        *(("vmodel", c) for c in ("set", "rm", "status")),
    }


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "meshlet")
def test_help_of_every_command(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == EXIT_OK
    text = capsys.readouterr().out
    assert text.startswith(f"usage: meshlet {' '.join(path)}".rstrip())
    assert "examples:\n  meshlet" in text


@pytest.mark.parametrize(
    "argv",
    [[], ["model"], ["nope"], ["model", "rm"], ["infer"],
     ["model", "add", "m", "--size-hint", "big"], ["model", "add", "--file", "f",
                                                   "--concurrency", "0"]],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    assert "error:" in capsys.readouterr().err


def test_address_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHLET_ADDRESS", raising=False)
    assert build_parser().parse_args(["model", "ls"]).address == DEFAULT_ADDRESS
    monkeypatch.setenv("MESHLET_ADDRESS", "10.0.0.1:9000")
    assert build_parser().parse_args(["model", "ls"]).address == "10.0.0.1:9000"
    args = build_parser().parse_args(["model", "ls", "--address", "h:1"])
    assert args.address == "h:1"
