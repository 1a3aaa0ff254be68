"""``meshlet vmodel set|rm|status``: aliases that move between models, over
ModelMesh's setVModel, deleteVModel and getVModelStatus."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.args import add_command, add_group
from agent.cli.client import Client, add_address_argument
from agent.cli.errors import CliError
from agent.cli.render import vmodel_status_lines
from agent.proto import model_mesh_pb2 as mm


def add_parser(subparsers: Any) -> None:
    commands = add_group(
        subparsers, "vmodel", "point aliases (vmodels) at models",
        "A vmodel is an alias for a model. Retargeting it loads the new model first\n"
        "and switches traffic only once it is ready, so clients never wait on a load.",
        "  meshlet vmodel set my-alias simple-string-3\n"
        "  meshlet vmodel status my-alias",
    )

    set_ = add_command(
        commands, "set", "create a vmodel or point it at another model",
        "Create vmodel VID pointing at model TARGET, or start moving an existing\n"
        "one there: TARGET is loaded, then becomes active. Prints the vmodel status.",
        "  meshlet vmodel set my-alias simple-string-4 --sync\n"
        "  meshlet vmodel set my-alias simple-string-4 --force",
    )
    set_.add_argument("vmodel_id", metavar="VID", help="vmodel id")
    set_.add_argument("target", metavar="TARGET", help="id of a registered model")
    set_.add_argument("--force", action="store_true",
                      help="switch at once, without waiting for TARGET to load "
                           "(default: switch once loaded)")
    set_.add_argument("--owner", default="", help="owner tag; must match an existing one "
                                                  "(default: none)")
    set_.add_argument("--sync", action="store_true",
                      help="wait until the move is finished (default: return at once)")
    add_address_argument(set_)
    set_.set_defaults(run=set_vmodel)

    rm = add_command(
        commands, "rm", "delete a vmodel",
        "Delete vmodel VID. The models it pointed at stay registered.",
        "  meshlet vmodel rm my-alias",
    )
    rm.add_argument("vmodel_id", metavar="VID", help="vmodel id")
    rm.add_argument("--owner", default="", help="owner tag of the vmodel (default: none)")
    add_address_argument(rm)
    rm.set_defaults(run=delete_vmodel)

    status = add_command(
        commands, "status", "show where a vmodel points",
        "Show vmodel VID's state (DEFINED, TRANSITIONING, TRANSITION_FAILED), its\n"
        "active and target models and their states. Exits 1 if there is no such vmodel.",
        "  meshlet vmodel status my-alias",
    )
    status.add_argument("vmodel_id", metavar="VID", help="vmodel id")
    status.add_argument("--owner", default="", help="owner tag of the vmodel (default: none)")
    add_address_argument(status)
    status.set_defaults(run=show_vmodel)


async def set_vmodel(args: argparse.Namespace) -> int:
    request = mm.SetVModelRequest(
        vModelId=args.vmodel_id, targetModelId=args.target, owner=args.owner,
        force=args.force, sync=args.sync, loadNow=True,
    )
    async with Client(args.address) as client:
        info = await client.mmesh.setVModel(request)
    print("\n".join(vmodel_status_lines(args.vmodel_id, info)))
    return 1 if info.status == mm.VModelStatusInfo.TRANSITION_FAILED else 0


async def delete_vmodel(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        await client.mmesh.deleteVModel(
            mm.DeleteVModelRequest(vModelId=args.vmodel_id, owner=args.owner)
        )
    print(f"deleted vmodel {args.vmodel_id}")
    return 0


async def show_vmodel(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        info = await client.mmesh.getVModelStatus(
            mm.GetVModelStatusRequest(vModelId=args.vmodel_id, owner=args.owner)
        )
    if info.status == mm.VModelStatusInfo.NOT_FOUND:
        raise CliError(f"NOT_FOUND: vmodel {args.vmodel_id!r} does not exist")
    print("\n".join(vmodel_status_lines(args.vmodel_id, info)))
    return 0
