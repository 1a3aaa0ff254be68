"""``meshlet node``: one agent's node as tables: budget and usage, runtime
processes, GPUs, and the largest loaded models (``meshlet.v1.Node/Status``)."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.args import add_command
from agent.cli.client import Client, add_address_argument
from agent.cli.render import human_bytes, plural
from agent.proto import meshlet_pb2 as pb

DEFAULT_TOP = 10


def add_parser(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "node", "show the node: budget, processes, GPUs, largest models",
        "Show what the agent's node has and holds: the model memory budget and\n"
        "how much of it loaded models use, the node's (or container's) memory and\n"
        "CPU limits, each runtime process (kind, pid, models, RSS with children,\n"
        "GPU memory), each GPU (total, used, free, used by meshlet), each runtime's\n"
        "state, and the largest loaded models.",
        "  meshlet node\n"
        "  meshlet node --top 50 --address 10.0.0.7:8033",
    )
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N",
                        help=f"largest models listed (default: {DEFAULT_TOP})")
    add_address_argument(parser)
    parser.set_defaults(run=show_node)


def render(status: pb.NodeStatusResponse) -> list[str]:
    free = max(status.budget_bytes - status.used_bytes, 0)
    lines = [
        f"node:     {status.node}",
        f"budget:   {human_bytes(status.budget_bytes)}; used {human_bytes(status.used_bytes)} by "
        f"{plural(status.models_loaded, 'model')}; free {human_bytes(free)}",
        f"memory:   limit {human_bytes(status.memory_limit_bytes)}, available "
        f"{human_bytes(status.memory_available_bytes)}; CPU limit {status.cpu_limit_cores:g} "
        f"{'core' if status.cpu_limit_cores == 1 else 'cores'}",
    ]
    for kind, reason in sorted(status.runtimes.items()):
        lines.append(f"runtime:  {kind}: {'up' if not reason else 'unavailable: ' + reason}")
    lines += ["", f"{'RUNTIME':<10} {'PID':>8} {'MODELS':>7} {'RSS':>11} {'GPU':>11}"]
    for p in status.processes:
        lines.append(f"{p.runtime:<10} {p.pid:>8} {p.models:>7} {human_bytes(p.rss_bytes):>11} "
                     f"{human_bytes(p.gpu_bytes) if p.gpu_bytes else '-':>11}")
    lines.append("")
    if status.gpus:
        lines.append(f"{'GPU':<4} {'NAME':<24} {'TOTAL':>11} {'USED':>11} {'FREE':>11} "
                     f"{'MESHLET':>11}")
        for g in status.gpus:
            lines.append(f"{g.index:<4} {g.name[:24]:<24} {human_bytes(g.total_bytes):>11} "
                         f"{human_bytes(g.used_bytes):>11} {human_bytes(g.free_bytes):>11} "
                         f"{human_bytes(g.meshlet_bytes):>11}")
    else:
        lines.append("GPUs: none (no NVML on this node)")
    lines += ["", f"{'MODEL':<40} {'RUNTIME':<10} {'SIZE':>11} {'IN FLIGHT':>9}"]
    for m in status.top_models:
        lines.append(f"{m.model_id[:40]:<40} {m.runtime:<10} {human_bytes(m.size_bytes):>11} "
                     f"{m.in_flight:>9}")
    if not status.top_models:
        lines.append("(no model loaded)")
    return lines


async def show_node(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        status = await client.node.Status(pb.NodeStatusRequest(top_models=max(args.top, 0)))
    print("\n".join(render(status)))
    return 0
