"""Run ``meshlet serve`` as a child process and wait until it is ready.

Used by the integration tests and the benchmarks: an agent in its own process,
as users run it. ``meshlet serve --ready-file F`` writes F (JSON: pid, grpc_port,
metrics_port) once it serves, so callers bind port 0 and still find the agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

READY_FILE = "ready.json"


class AgentProcess:
    def __init__(
        self,
        data_dir: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.env = env or {}
        self.log_path = log_path or data_dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._log: IO[bytes] | None = None

    @property
    def ready_file(self) -> Path:
        return self.data_dir / READY_FILE

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.info['grpc_port']}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 120.0, wait: bool = True) -> AgentProcess:
        """Start the agent; with ``wait`` (default) return once it serves, else at
        once (call ``wait_ready`` later: several agents then start together)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "agent.cli.main", "serve",
            "--data-dir", str(self.data_dir),
            "--grpc-host", "127.0.0.1", "--grpc-port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            "--peer-port", "0",
            "--ready-file", str(self.ready_file),
            *self.args,
        ]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"agent exited with {self.proc.returncode} before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self.ready_file.exists():
                self.info = json.loads(self.ready_file.read_text())
                return
            time.sleep(0.05)  # poll
        raise TimeoutError(f"agent not ready after {timeout_s} s; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL. Returns the exit code. Safe to call twice."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a node failure or the OOM killer would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
