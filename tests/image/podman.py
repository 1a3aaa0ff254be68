"""podman as the image tests run it.

Two settings make containers start on machines like ours, kept out of /etc:
``--runtime runc`` (crun fails there on hybrid cgroups) and a containers.conf
of our own with ``default_ulimits = []`` (the runtime may not raise
RLIMIT_NOFILE there), passed as ``CONTAINERS_CONF`` unless the caller set one.
Neither changes what a container sees on a machine where the defaults work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

TOOLS = ("podman", "runc", "debootstrap")
INSTALL = "apt-get install podman runc debootstrap"
CONTAINERS_CONF = "[containers]\ndefault_ulimits = []\n"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def missing_message(missing: list[str]) -> str:
    where = ("under CI (the CI variable is set; .ci/run installs them)"
             if os.environ.get("CI") else "on this machine")
    return (f"the image tests need {', '.join(missing)}, missing {where}; "
            f"install with: {INSTALL} (as root)")


class Podman:
    """Runs ``podman`` with this project's settings; every call has a timeout."""

    def __init__(self, conf_dir: Path) -> None:
        self.env = dict(os.environ)
        if "CONTAINERS_CONF" not in self.env:
            conf = conf_dir / "containers.conf"
            conf.write_text(CONTAINERS_CONF)
            self.env["CONTAINERS_CONF"] = str(conf)
        self.global_args = ["--runtime", "runc"] if shutil.which("runc") else []

    def run(self, *args: str, timeout_s: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *self.global_args, *args], capture_output=True, text=True,
            timeout=timeout_s, env=self.env,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}"
            )
        return result

    def out(self, *args: str, timeout_s: float = 120) -> str:
        return self.run(*args, timeout_s=timeout_s).stdout.strip()

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0

    def inspect(self, what: str, name: str) -> dict[str, Any]:
        [found] = json.loads(self.out(what, "inspect", name))
        return found  # type: ignore[no-any-return]
