"""``meshlet infer``: one KServe v2 inference request from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.cli.args import add_command
from agent.cli.client import Client, add_address_argument
from agent.cli.errors import UsageError
from agent.cli.infer_inputs import read_inputs
from agent.cli.tensors import DATATYPES, build_request, format_response, response_json
from agent.proto import grpc_service_pb2 as pb

OUTPUT_FORMATS = ("text", "json")


def add_parser(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "infer", "send one inference request and print the outputs",
        "Send one inference request (KServe v2 ModelInfer) to model ID and print\n"
        "each output as  NAME (DATATYPE, shape [..]): v1, v2, ...  (or, with\n"
        "--output json, the KServe v2 JSON response).\n\n"
        "Inputs come from --input, --json or --npy (at least one; they mix, one\n"
        "source per input). Each --input NAME=v1,v2,... is one row; the same NAME\n"
        "again adds a row. When the model's metadata declares the input (the\n"
        "model is loaded if needed), it gives the datatype and shape: a leading -1\n"
        "dimension is the number of rows, another -1 takes the values given. When\n"
        "the model declares no inputs (a plain scikit-learn model), an input is\n"
        "FP64 if every value is a number, else BYTES, with shape\n"
        "[rows, values per row]. --datatype and --shape override either; the\n"
        "values must fill the shape exactly. BYTES values are sent as UTF-8 text;\n"
        "numbers must fit their datatype, one of\n"
        f"{', '.join(DATATYPES)}.\n\n"
        "Exit codes: 2 for bad usage (nothing is sent), 1 for an error from the server.",
        "  meshlet infer simple-string-7 \\\n"
        "      --input INPUT0=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 \\\n"
        "      --input INPUT1=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n"
        "  meshlet infer my-lr --input x=5.1,3.5,1.4,0.2 --input x=6.7,3.0,5.2,2.3  # two rows\n"
        "  meshlet infer my-lr --input x=5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3 --shape x=2,4 \\\n"
        "      --datatype x=FP32\n"
        "  meshlet infer my-lr --npy x=batch.npy --output json\n"
        "  meshlet infer my-model --json request.json --output-name y\n"
        "  echo '{\"inputs\": [{\"name\": \"x\", \"datatype\": \"FP64\", \"shape\": [1, 4],\n"
        "         \"data\": [5.1, 3.5, 1.4, 0.2]}]}' | meshlet infer my-lr --json -",
    )
    parser.add_argument("model_id", metavar="ID", help="model or vmodel id")
    parser.add_argument("--input", dest="inputs", action="append", default=[],
                        metavar="NAME=V1,V2,...",
                        help="one row of an input's values, comma-separated; repeat the "
                             "NAME for more rows, another NAME for another input")
    parser.add_argument("--json", dest="json_path", metavar="FILE",
                        help="a KServe v2 JSON inference request body "
                             '({"inputs": [{"name", "datatype", "shape", "data"}], '
                             '"outputs": [{"name"}]}); - reads standard input')
    parser.add_argument("--npy", dest="npy", action="append", default=[],
                        metavar="NAME=FILE",
                        help="an input from a numpy .npy file (its shape, dtype and values)")
    parser.add_argument("--shape", dest="shapes", action="append", default=[],
                        metavar="NAME=D1,D2,...",
                        help="the input's shape instead of the model's or the source's")
    parser.add_argument("--datatype", dest="datatypes", action="append", default=[],
                        metavar="NAME=TYPE",
                        help="the input's datatype instead of the model's or the source's "
                             "(FP32, INT64, BYTES, ...)")
    parser.add_argument("--output-name", dest="output_names", action="append", default=[],
                        metavar="NAME", help="an output to return; repeat for more "
                                             "(default: all)")
    parser.add_argument("--output", dest="output_format", default="text", metavar="FORMAT",
                        help="text (default: one line per output) or json (the KServe v2 "
                             "JSON response)")
    add_address_argument(parser)
    parser.set_defaults(run=infer)


def output_format(text: str) -> str:
    if text not in OUTPUT_FORMATS:
        raise UsageError(f"--output {text!r}: the format is text or json "
                         "(to choose outputs, use --output-name NAME)")
    return text


async def infer(args: argparse.Namespace) -> int:
    form = output_format(args.output_format)
    inputs = read_inputs(args.inputs, args.json_path, args.npy, args.shapes, args.datatypes,
                         sys.stdin)
    names = list(dict.fromkeys([*inputs.outputs, *args.output_names]))
    async with Client(args.address) as client:
        declared = []
        if inputs.needs_metadata:  # --input rows are typed by it; --json and --npy are not
            metadata = await client.inference.ModelMetadata(
                pb.ModelMetadataRequest(name=args.model_id)
            )
            declared = list(metadata.inputs)
        request = build_request(args.model_id, inputs.resolve(args.model_id, declared), names,
                                inputs.request_id, inputs.parameters)
        response = await client.inference.ModelInfer(request)
    if form == "json":
        print(json.dumps(response_json(response, names)))
    else:
        for line in format_response(response, names):
            print(line)
    return 0
