"""``meshlet infer``: one KServe v2 inference request from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.args import add_command
from agent.cli.client import Client, add_address_argument
from agent.cli.errors import UsageError
from agent.cli.tensors import DATATYPES, build_request, format_response, parse_input_arg
from agent.proto import grpc_service_pb2 as pb


def add_parser(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "infer", "send one inference request and print the outputs",
        "Send one inference request (KServe v2 ModelInfer) to model ID and print\n"
        "each output as  NAME (DATATYPE, shape [..]): v1, v2, ...\n\n"
        "The model's metadata gives each input its datatype and shape (loading the\n"
        "model if needed): a -1 dimension takes the number of values given; a\n"
        "leading -1 batch dimension becomes 1. BYTES values are sent as UTF-8 text;\n"
        f"numbers must fit their datatype ({', '.join(DATATYPES)}).\n"
        "A value that does not parse exits 2; an error from the server exits 1.",
        "  meshlet infer simple-string-7 \\\n"
        "      --input INPUT0=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 \\\n"
        "      --input INPUT1=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n"
        "  meshlet infer my-model --input x=0.5,1.5 --output y",
    )
    parser.add_argument("model_id", metavar="ID", help="model or vmodel id")
    parser.add_argument("--input", dest="inputs", action="append", default=[],
                        type=_input_type, metavar="NAME=V1,V2,...", required=True,
                        help="one input tensor's values, comma-separated; repeat per input")
    parser.add_argument("--output", dest="outputs", action="extend", nargs="+", default=[],
                        metavar="NAME", help="outputs to return (default: all)")
    add_address_argument(parser)
    parser.set_defaults(run=infer)


def _input_type(text: str) -> tuple[str, list[str]]:
    try:
        return parse_input_arg(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


async def infer(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        metadata = await client.inference.ModelMetadata(
            pb.ModelMetadataRequest(name=args.model_id)
        )
        request = build_request(args.model_id, metadata, args.inputs, args.outputs)
        response = await client.inference.ModelInfer(request)
    for line in format_response(response, args.outputs):
        print(line)
    return 0
