"""``meshlet serve``: run the node agent in the foreground until SIGTERM/SIGINT.

Settings come from ``MESHLET_*`` environment variables; a flag given on the
command line overrides its variable, and a flag not given leaves it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from agent.cli.args import LOG_LEVELS, SIZE_HELP, add_command, log_level_type, size_type
from agent.cli.errors import CliError, UsageError
from agent.config import Settings

if TYPE_CHECKING:
    from agent.app import Agent

LOG_LEVEL_ENV = "MESHLET_LOG_LEVEL"

# flag -> (Settings field, argparse type)
FLAGS: dict[str, tuple[str, Any]] = {
    "--data-dir": ("data_dir", Path),
    "--grpc-host": ("grpc_host", str),
    "--grpc-port": ("grpc_port", int),
    "--metrics-host": ("metrics_host", str),
    "--metrics-port": ("metrics_port", int),
    "--memory-budget": ("memory_budget_bytes", size_type),
    "--cache-dir": ("cache_dir", Path),
    "--cache-quota": ("cache_quota_bytes", size_type),
    "--storage-config-dir": ("storage_config_dir", Path),
    "--peer-port": ("peer_port", int),
    "--peers": ("peers", lambda text: [p.strip() for p in text.split(",") if p.strip()]),
    "--peers-dns": ("peers_dns", str),
    "--demo": ("demo_models", int),
    "--kube": ("kube", str),
    "--kubeconfig": ("kubeconfig", Path),
    "--watch-namespaces": ("watch_namespaces", lambda text: [
        n.strip() for n in text.split(",") if n.strip()]),
}
# flag -> Settings field, for flags that take no value and set it true
SWITCHES: dict[str, str] = {"--modelmesh-compat": "modelmesh_compat"}
CHOICES: dict[str, tuple[str, ...]] = {"--kube": ("auto", "on", "off")}
METAVARS = {
    "--data-dir": "DIR", "--grpc-host": "HOST", "--grpc-port": "PORT",
    "--metrics-host": "HOST", "--metrics-port": "PORT", "--memory-budget": "SIZE", "--demo": "N",
    "--cache-dir": "DIR", "--cache-quota": "SIZE", "--storage-config-dir": "DIR",
    "--peer-port": "PORT", "--peers": "HOST:PORT,...", "--peers-dns": "NAME",
    "--kubeconfig": "FILE", "--watch-namespaces": "NS,...",
}


def add_parser(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "serve", "run the node agent (foreground)",
        "Run a meshlet node agent in the foreground: the gRPC API (KServe v2\n"
        "inference and ModelMesh management), /metrics and /healthz over HTTP, and\n"
        "the runtime processes it supervises. SIGTERM or SIGINT stops it in order.\n\n"
        "Every setting can also come from its MESHLET_* environment variable; a flag\n"
        "overrides its variable.",
        "  meshlet serve --demo 100\n"
        "  meshlet serve --grpc-port 0 --ready-file /tmp/meshlet.json\n"
        "  MESHLET_DATA_DIR=/var/lib/meshlet meshlet serve --memory-budget 8Gi",
    )
    for flag, (field, type_) in FLAGS.items():
        parser.add_argument(flag, dest=field, type=type_, metavar=METAVARS.get(flag),
                            choices=CHOICES.get(flag), help=setting_help(field))
    for flag, field in SWITCHES.items():
        parser.add_argument(flag, dest=field, action="store_const", const=True,
                            help=setting_help(field))
    parser.add_argument(
        "--log-level", type=log_level_type, default=os.environ.get(LOG_LEVEL_ENV, "INFO"),
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: INFO; env {LOG_LEVEL_ENV})",
    )
    parser.add_argument(
        "--ready-file", type=Path, metavar="FILE",
        help="once serving, write JSON {pid, grpc_port, metrics_port, peer_port} here "
             "(atomically), so a caller that asked for port 0 finds the ports "
             "(default: none)",
    )
    parser.set_defaults(run=run)


def setting_help(field: str) -> str:
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    unit = f"; {SIZE_HELP}" if field.endswith("_bytes") else ""
    about = (info.description or field).rstrip(".")
    text = f"{about} (default: {default}; env MESHLET_{field.upper()}{unit})"
    return text.replace("%", "%%")


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings, overridden by the flags that were given."""
    given = {field: getattr(args, field) for field, _ in FLAGS.values()}
    given.update({field: getattr(args, field) for field in SWITCHES.values()})
    overrides = {field: value for field, value in given.items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise UsageError(describe_validation_error(err)) from None
    except SettingsError as err:  # e.g. MESHLET_RUNTIMES that is not JSON
        raise UsageError(f"invalid setting: {err}") from None


def describe_validation_error(err: ValidationError) -> str:
    flags = {field: flag for flag, (field, _) in FLAGS.items()}
    flags.update({field: flag for flag, field in SWITCHES.items()})
    problems = []
    for error in err.errors():
        field = ".".join(str(part) for part in error["loc"])
        env = f"MESHLET_{str(error['loc'][0]).upper()}" if error["loc"] else "MESHLET_*"
        source = f"{flags[field]} or {env}" if field in flags else env
        problems.append(f"invalid setting {field} ({source}): {error['msg']}, "
                        f"got {error['input']!r}")
    return "; ".join(problems)


class ReadyFile:
    """``{"pid", "grpc_port", "metrics_port", "peer_port"}`` at ``path`` (peer_port 0:
    no cluster), written atomically so a
    reader never sees half of it; removed again when the agent stops."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written = False

    def write(self, agent: Agent) -> None:
        info = {"pid": os.getpid(), "grpc_port": agent.grpc_port,
                "metrics_port": agent.metrics_port, "peer_port": agent.peer_port}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(info, out)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._written = True

    def remove(self) -> None:
        if self._written:
            self.path.unlink(missing_ok=True)
            self._written = False


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when it is installed, else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    # Imported here, not at the top: client commands never need the agent's code.
    from agent.app import serve
    from agent.datadir import StartupError

    ready = ReadyFile(args.ready_file) if args.ready_file else None
    try:
        run_loop(serve(settings, on_ready=ready.write if ready else None))
    except StartupError as err:
        raise CliError(str(err)) from None
    finally:
        if ready is not None:
            ready.remove()
    return 0
