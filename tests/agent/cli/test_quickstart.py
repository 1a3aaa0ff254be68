"""The README's "Serve your own scikit-learn model" quickstart, run as written
against a real agent: the same shell commands, in order, and the output the
README says they print. Only what a test must change is changed: the agent's
address (MESHLET_ADDRESS instead of the fixed port 8033), the model folder
(this test's tmp dir instead of /tmp/my-model), and the `source` line (this
process's virtualenv is already on PATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agent.process import AgentProcess

ROOT = Path(__file__).resolve().parents[3]
SECTION = "## Serve your own scikit-learn model"


def quickstart() -> tuple[list[str], str]:
    """The section's commands and the output it promises."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    commands, printed = re.findall(r"```\w*\n(.*?)```", section, re.DOTALL)[:2]
    return [line for line in commands.splitlines() if line.strip()], printed


def test_readme_quickstart_works_as_written(
    start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    commands, printed = quickstart()
    assert commands[0] == "source .venv/bin/activate"
    agent = start_agent()
    model_dir = tmp_path / "my-model"
    env = {
        **os.environ,
        "MESHLET_ADDRESS": agent.address,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    output = ""
    for command in commands[1:]:
        result = subprocess.run(
            ["bash", "-c", command.replace("/tmp/my-model", str(model_dir))],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        output += result.stdout
    assert output == printed
