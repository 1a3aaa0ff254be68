"""The README stands alone and tells the truth about the CLI: its CLI block is
the parsers' own synopsis, every file it names is in the project, and the
project carries the license its metadata names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from agent.cli import synopsis

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# A path a reader could look for: a name with a file extension, or a folder path.
FILE_NAME = re.compile(r"(?<![\w./:-])((?:[\w.-]+/)*[\w-]+\.(?:md|py|toml|sh|yaml|json|txt))\b")


def test_cli_block_is_the_parsers_synopsis() -> None:
    assert synopsis.block() in README, (
        "README's CLI block is stale: run `python -m agent.cli.synopsis --write README.md`"
    )


def test_every_file_the_readme_names_is_in_the_project() -> None:
    # Paths into the project, and documents; bare names such as models.yaml
    # or model-settings.json are files the user writes.
    named = {n for n in FILE_NAME.findall(README) if "/" in n or n.endswith(".md")}
    assert "agent/config.py" in named  # the pattern finds what it should
    missing = sorted(name for name in named if not (ROOT / name).exists())
    assert missing == [], f"README names files the project does not have: {missing}"


def test_license_file_matches_the_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_replace_block_swaps_only_the_block() -> None:
    text = f"before\n{synopsis.BEGIN}\nold\n{synopsis.END}\nafter\n"
    assert synopsis.replace_block(text, "NEW") == "before\nNEW\nafter\n"
