"""The agent under test: one ``meshlet serve`` process in a temporary data dir.

Wraps ``agent.process.AgentProcess`` with what the benchmarks measure from the
outside: RSS and CPU of the agent alone and of its runtime processes, the
runtimes' own gRPC addresses (for the "direct" comparison), and /metrics.
``stop`` also reports (and kills) runtime processes that outlived the agent.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.process import AgentProcess

from .report import progress

_PORT_FLAG = re.compile(r"^--grpc[-_]port(?:=(\d+))?$")


def default_budget_bytes() -> int:
    """Large enough that nothing is evicted: 80% of the machine's memory."""
    return int(psutil.virtual_memory().total * 0.8)


@dataclass(frozen=True)
class RuntimeProc:
    """One runtime process the agent started (and its own children)."""

    pid: int
    cmdline: list[str]
    grpc_port: int | None  # from its command line; None when it was not there
    listen_ports: list[int]

    def tree(self) -> list[psutil.Process]:
        try:
            top = psutil.Process(self.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


class BenchAgent:
    """Start with ``start()``; always ``stop()`` (in ``finally``)."""

    def __init__(
        self,
        demo_models: int,
        memory_budget_bytes: int,
        keep: bool = False,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        label: str = "agent",
    ) -> None:
        self.demo_models = demo_models
        self.keep = keep
        self.label = label
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"meshlet-bench-{label}-"))
        env = {"MESHLET_MEMORY_BUDGET_BYTES": str(memory_budget_bytes), **(extra_env or {})}
        self.process = AgentProcess(
            self.data_dir, ["--demo", str(demo_models), *(extra_args or [])], env=env
        )
        self.orphans: list[str] = []
        self._ps: psutil.Process | None = None

    # --- lifecycle ---------------------------------------------------------

    def start(self, timeout_s: float = 600.0) -> BenchAgent:
        self.process.start(timeout_s)
        self._ps = psutil.Process(self.process.pid)
        return self

    def stop(self) -> None:
        """SIGTERM, grace, SIGKILL; then kill any runtime process left behind."""
        before: list[psutil.Process] = []
        if self._ps is not None:
            try:
                before = self._ps.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        code = self.process.stop(timeout_s=30.0)
        survivors = [p for p in before if _alive(p)]
        if survivors:
            # The agent must not leave runtimes behind however it exits; say so loudly.
            _gone, alive = psutil.wait_procs(survivors, timeout=5.0)
            for p in alive:
                self.orphans.append(f"pid {p.pid}: {' '.join(_cmdline(p))[:200]}")
                p.kill()
            if self.orphans:
                progress(f"[{self.label}] ORPHANS after agent exit: {self.orphans}")
        if code not in (0, None, -15):
            progress(f"[{self.label}] agent exited with {code}; log tail:\n"
                     f"{self.process.log_tail(20)}")
        if self.keep:
            progress(f"[{self.label}] kept data dir {self.data_dir}")
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- what it exposes ---------------------------------------------------

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ps(self) -> psutil.Process:
        assert self._ps is not None, "agent not started"
        return self._ps

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def descendants(self) -> list[psutil.Process]:
        try:
            return self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def descendants_rss(self) -> int:
        total = 0
        for p in self.descendants():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def descendants_pss(self) -> int | None:
        """Proportional set size (shared pages split): fairer than summed RSS."""
        total = 0
        for p in self.descendants():
            try:
                total += p.memory_full_info().pss
            except psutil.NoSuchProcess:
                pass
            except (psutil.AccessDenied, AttributeError):
                return None
        return total

    def runtimes(self) -> list[RuntimeProc]:
        """The agent's direct children: each is one runtime process (launcher)."""
        found = []
        for child in self.ps.children(recursive=False):
            cmd = _cmdline(child)
            found.append(RuntimeProc(child.pid, cmd, _grpc_port(cmd), _listen_ports(child)))
        return found

    def metrics_text(self) -> str:
        """The raw /metrics page ("" when it cannot be read)."""
        port = self.process.info.get("metrics_port")
        if not port:
            return ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def metrics(self) -> dict[str, float]:
        """``meshlet_*`` samples from /metrics (label sets joined into the name)."""
        out: dict[str, float] = {}
        for line in self.metrics_text().splitlines():
            if line.startswith("meshlet_") and "_bucket{" not in line and "_created" not in line:
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _grpc_port(cmd: list[str]) -> int | None:
    for i, arg in enumerate(cmd):
        m = _PORT_FLAG.match(arg)
        if not m:
            continue
        value = m.group(1) or (cmd[i + 1] if i + 1 < len(cmd) else "")
        if value.isdigit():
            return int(value)
    return None


def _listen_ports(p: psutil.Process) -> list[int]:
    ports: set[int] = set()
    for proc in [p, *p.children(recursive=True)]:
        try:
            for c in proc.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr:
                    ports.add(c.laddr.port)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return sorted(ports)
