"""``meshlet cluster``: the members an agent knows (``meshlet.v1.Node/Members``)."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.args import add_command
from agent.cli.client import Client, add_address_argument
from agent.cli.render import human_bytes, plural
from agent.proto import meshlet_pb2 as pb


def add_parser(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "cluster", "list the cluster's members as this agent sees them",
        "List every member of the cluster this agent knows, itself marked with *:\n"
        "peer address, state (ALIVE, SUSPECT, DEAD, LEFT, or DRAINING while it\n"
        "leaves), incarnation, models loaded, free room in its memory budget,\n"
        "requests in flight (as last gossiped) and the address it serves\n"
        "inference on; then the peer messages it dropped (bad\n"
        "key, malformed, spoofed sender) by reason. An agent with no cluster keys\n"
        "runs alone and lists nothing.",
        "  meshlet cluster\n"
        "  meshlet cluster --address 10.0.0.7:8033",
    )
    add_address_argument(parser)
    parser.set_defaults(run=show_cluster)


def render(response: pb.MembersResponse) -> list[str]:
    if not response.members:
        return ["no cluster: this agent runs alone (no MESHLET_CLUSTER_KEYS)"]
    lines = [f"  {'PEER':<24} {'STATE':<8} {'INC':>5} {'MODELS':>7} {'FREE':>9} "
             f"{'INFLIGHT':>8}  GRPC"]
    for m in response.members:
        mark = "*" if m.self else " "
        state = "DRAINING" if m.draining and m.state == "ALIVE" else m.state
        lines.append(
            f"{mark} {m.address:<24} {state:<8} {m.incarnation:>5} {m.models:>7} "
            f"{human_bytes(m.free_bytes):>9} {m.in_flight:>8}  {m.grpc_address}"
        )
    alive = sum(1 for m in response.members if m.state == "ALIVE")
    lines.append(f"{plural(len(response.members), 'member')}, {alive} alive")
    if response.dropped:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(response.dropped.items()))
        lines.append(f"dropped peer messages: {drops}")
    return lines


async def show_cluster(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        response = await client.node.Members(pb.MembersRequest())
    print("\n".join(render(response)))
    return 0
