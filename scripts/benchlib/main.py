"""``scripts/bench SUBCOMMAND [options] [--json PATH]``: meshlet's benchmarks.

Each prints the machine, the versions and its figures; ``--json PATH`` writes
them as JSON (without it the JSON is printed after the figures). Agents the
benchmarks start are stopped however the run ends (Ctrl-C and SIGTERM too).
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from . import cache, cluster, coldstart, density, registry, serve
from .report import finish

BENCHMARKS = {
    "density": (density, "register and load N models; memory per model, loads per second"),
    "serve": (serve, "QPS and latency through meshlet vs directly against MLServer"),
    "coldstart": (coldstart, "first request to a registered, unloaded model"),
    "registry": (registry, "the SQLite registry alone: register, list, get 1M models"),
    "cache": (cache, "node cache: compression ratio and speed, unpack vs copy, cold start"),
    "cluster": (cluster, "gossip at 10-1,000 members (simulated); forwarding and node loss "
                         "with real agents"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="SUBCOMMAND")
    for name, (module, help_text) in BENCHMARKS.items():
        sp = sub.add_parser(name, help=help_text, description=module.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sp)
        sp.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
        sp.add_argument("--keep", action="store_true",
                        help="keep the temporary data dir(s) (agent logs, registry)")
    return p


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # runs every finally: agents are stopped


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    module, _ = BENCHMARKS[args.benchmark]
    try:
        result = module.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
