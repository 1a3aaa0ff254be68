"""The ``meshlet`` command: root parser, dispatch, logging, exit codes.

Each command group lives in its own module and adds its parser here; a leaf
command sets ``run``, a function of the parsed args returning the exit code
(a coroutine for the commands that talk to an agent). Exit codes: 0 ok, 1 the
server answered with an error or could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from agent.cli import cache, cluster, infer, model, node, serve, vmodel
from agent.cli.args import setup_logging
from agent.cli.errors import EXIT_ERROR, EXIT_OK, CliError

EXIT_INTERRUPTED = 130
CLIENT_LOG_LEVEL = "WARNING"


def _version() -> str:
    try:
        return version("meshlet")
    except PackageNotFoundError:
        return "0.0.0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlet",
        description="meshlet: a per-node model-serving agent. `meshlet serve` runs the agent;\n"
        "the other commands talk to a running agent over gRPC (--address, default\n"
        "localhost:8033 or $MESHLET_ADDRESS).\n\n"
        "Exit codes: 0 ok, 1 the server answered with an error or could not be\n"
        "reached, 2 bad usage.",
        epilog="examples:\n"
        "  meshlet serve --demo 20\n"
        "  meshlet model ls\n"
        "  meshlet infer simple-string-3 --input INPUT0=1,2 --input INPUT1=3,4\n"
        "  meshlet COMMAND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"meshlet {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve.add_parser(commands)
    model.add_parser(commands)
    vmodel.add_parser(commands)
    infer.add_parser(commands)
    cache.add_parser(commands)
    node.add_parser(commands)
    cluster.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad usage: argparse exits 2
    setup_logging(getattr(args, "log_level", CLIENT_LOG_LEVEL))
    try:
        outcome = args.run(args)
        if inspect.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`meshlet model ls | head`): stop quietly, and keep
        # Python from failing again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    return int(outcome or EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
