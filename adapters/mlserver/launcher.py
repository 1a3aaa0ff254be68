"""One MLServer runtime process, as the agent starts it.

    python -m adapters.mlserver.launcher --repo DIR --grpc-port P --http-port Q \\
        --socket PATH [--parent-pid PID] [--max-payload-bytes N]

It differs from ``mlserver start`` in three ways:

* the kernel SIGKILLs it when the agent dies (``PR_SET_PDEATHSIG``), so no
  runtime outlives its agent however the agent exits;
* its settings are built here, not read from files: loopback only, the O(1)
  ``DirectModelRepository``, nothing loaded at startup, no worker pool, no
  metrics server, no access log;
* besides MLServer's gRPC and REST ports it serves the unix-socket channel
  (channel_server.py) straight into MLServer's data plane, the agent's hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from adapters.mlserver.framing import DEFAULT_MAX_PAYLOAD_BYTES
from adapters.pdeathsig import arm_parent_death_signal

if TYPE_CHECKING:
    from mlserver.settings import Settings

# MLServer itself is imported only in build_settings/serve, after the parent
# death signal is armed: the import takes about a second, and this module's
# constants stay importable where MLServer must not be loaded (the agent).

# Named, not __name__: run with -m this module is "__main__".
log = logging.getLogger("adapters.mlserver.launcher")



def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m adapters.mlserver.launcher")
    parser.add_argument("--repo", required=True, help="model repository root")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--socket", required=True, help="unix socket path of the channel")
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="pid of the agent; exit at once if it is already gone",
    )
    parser.add_argument(
        "--max-payload-bytes",
        type=int,
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        help="largest channel frame payload and gRPC message",
    )
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> Settings:
    from mlserver.settings import Settings

    from adapters.mlserver.repository import DirectModelRepository

    settings = Settings(
        host="127.0.0.1",
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        model_repository_root=os.path.abspath(args.repo),
        model_repository_implementation=DirectModelRepository,
        load_models_at_startup=False,
        # Models are loaded in this process: a worker pool would copy every
        # model into each worker process.
        parallel_workers=0,
        metrics_endpoint=None,
        # debug=True turns on a log line per request (gRPC and REST).
        debug=False,
        cache_enabled=False,
        kafka_enabled=False,
        tracing_server=None,
        grpc_max_message_length=args.max_payload_bytes,
    )
    # gRPC binds with SO_REUSEPORT by default: two runtimes handed the same
    # "free" port would then share it silently, the kernel splitting
    # connections between them. Without it the second bind fails, the process
    # exits, and the agent respawns it on new ports. (MLServer logs a warning
    # for any custom gRPC option.)
    settings._custom_grpc_server_settings = {"grpc.so_reuseport": 0}
    return settings


async def serve(args: argparse.Namespace) -> None:
    from mlserver import MLServer

    from adapters.mlserver.channel_server import ChannelServer, handlers

    # MLServer installs its own SIGTERM/SIGINT handlers (they stop its
    # servers, which ends ``start()``); it must be built inside the loop.
    server = MLServer(build_settings(args))
    # Ctrl-C in a terminal reaches the agent's whole process group; the agent
    # stops its runtimes itself, in order, so SIGINT must not stop this one.
    asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = await ChannelServer.start(
        args.socket,
        handlers(server._data_plane),
        args.max_payload_bytes,
    )
    log.info("channel listening on %s", args.socket)
    try:
        await server.start()
    finally:
        await channel.close()


def _install_event_loop_policy() -> None:
    # What ``mlserver start`` does too: uvloop makes both MLServer's gRPC
    # server and the channel cheaper per request.
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _configure_logging() -> None:
    # Our own records only: MLServer's logger writes to stdout itself, and a
    # root handler would print each of its lines twice.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("adapters")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _configure_logging()
    arm_parent_death_signal(args.parent_pid)
    _install_event_loop_policy()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
