"""--input parsing, request building and output decoding for `meshlet infer`."""

from __future__ import annotations

import struct

import pytest

from agent.cli.errors import EXIT_USAGE, CliError, UsageError
from agent.cli.tensors import (
    DATATYPES,
    build_request,
    format_output,
    format_response,
    pack_raw,
    parse_input_arg,
    parse_values,
    resolve_shape,
    unpack_raw,
)
from agent.proto import grpc_service_pb2 as pb


def metadata(*inputs: tuple[str, str, list[int]]) -> pb.ModelMetadataResponse:
    meta = pb.ModelMetadataResponse(name="m")
    for name, datatype, shape in inputs:
        meta.inputs.add(name=name, datatype=datatype, shape=shape)
    return meta


def test_parse_input_arg() -> None:
    assert parse_input_arg("INPUT0=1,2,3") == ("INPUT0", ["1", "2", "3"])
    assert parse_input_arg(" x =a=b") == ("x", ["a=b"])
    for bad in ("INPUT0", "=1,2"):
        with pytest.raises(UsageError, match="NAME=v1,v2"):
            parse_input_arg(bad)


@pytest.mark.parametrize(
    ("datatype", "texts", "values"),
    [
        ("BOOL", ["true", "0", "FALSE", "1"], [True, False, False, True]),
        ("INT8", ["-128", " 127"], [-128, 127]),
        ("UINT64", ["18446744073709551615"], [2**64 - 1]),
        ("FP32", ["0.5", "-1e3", "nan"], [0.5, -1000.0, pytest.approx(float("nan"), nan_ok=True)]),
        ("BYTES", ["a b", ""], [b"a b", b""]),
    ],
)
def test_parse_values(datatype: str, texts: list[str], values: list[object]) -> None:
    assert parse_values("x", DATATYPES[datatype], texts) == values


@pytest.mark.parametrize(
    ("datatype", "text"),
    [("INT8", "128"), ("UINT8", "-1"), ("INT32", "1.5"), ("BOOL", "yes"),
     ("FP16", "1e6"), ("FP32", "1e39"), ("FP64", "one")],
)
def test_a_value_that_does_not_fit_names_the_input(datatype: str, text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_values("INPUT0", DATATYPES[datatype], ["1", text])
    assert info.value.exit_code == EXIT_USAGE
    assert str(info.value).startswith(f"input INPUT0: value 1 {text!r} is not a valid {datatype}")


@pytest.mark.parametrize(
    ("declared", "count", "shape"),
    [
        ([16], 16, [16]),
        ([-1], 5, [5]),
        ([-1, 16], 16, [1, 16]),
        ([-1, -1], 5, [1, 5]),
        ([-1, 2, -1], 6, [1, 2, 3]),
        ([2, -1], 6, [2, 3]),
        ([], 3, [3]),
    ],
)
def test_resolve_shape(declared: list[int], count: int, shape: list[int]) -> None:
    assert resolve_shape("x", declared, count) == shape


@pytest.mark.parametrize(("declared", "count"), [([16], 3), ([-1, 16], 3), ([2, -1], 3)])
def test_resolve_shape_rejects_counts_that_do_not_fit(declared: list[int], count: int) -> None:
    with pytest.raises(UsageError, match=rf"input x: {count} values do not fit"):
        resolve_shape("x", declared, count)


def test_build_request_types_and_shapes_from_metadata() -> None:
    meta = metadata(("INPUT0", "BYTES", [-1, 2]), ("N", "INT64", [-1]), ("F", "FP32", [2]))
    request = build_request("m", meta, [("INPUT0", ["1", "2"]), ("N", ["7"]),
                                        ("F", ["0.5", "2"])], ["OUTPUT0"])
    assert request.model_name == "m"
    first, second, third = request.inputs
    assert (first.datatype, list(first.shape)) == ("BYTES", [1, 2])
    assert list(first.contents.bytes_contents) == [b"1", b"2"]
    assert (second.datatype, list(second.shape), list(second.contents.int64_contents)) == (
        "INT64", [1], [7])
    assert list(third.contents.fp32_contents) == [0.5, 2.0]
    assert [o.name for o in request.outputs] == ["OUTPUT0"]
    assert not request.raw_input_contents


def test_fp16_sends_every_input_raw() -> None:
    meta = metadata(("H", "FP16", [-1]), ("S", "BYTES", [-1]))
    request = build_request("m", meta, [("H", ["1.5"]), ("S", ["ab"])])
    assert list(request.raw_input_contents) == [struct.pack("<e", 1.5), b"\x02\x00\x00\x00ab"]
    assert not request.inputs[0].HasField("contents")


def test_build_request_rejects_unknown_and_repeated_inputs() -> None:
    meta = metadata(("INPUT0", "BYTES", [-1]))
    with pytest.raises(UsageError, match=r"no input 'X' \(inputs: INPUT0\)"):
        build_request("m", meta, [("X", ["1"])])
    with pytest.raises(UsageError, match="INPUT0 is given twice"):
        build_request("m", meta, [("INPUT0", ["1"]), ("INPUT0", ["2"])])
    with pytest.raises(CliError, match="datatype 'BF16'"):
        build_request("m", metadata(("B", "BF16", [-1])), [("B", ["1"])])


@pytest.mark.parametrize(
    ("datatype", "values"),
    [("BYTES", [b"17", b"", b"-3"]), ("INT32", [1, -2, 3]), ("UINT8", [0, 255]),
     ("FP64", [0.1, -2.5]), ("BOOL", [True, False]), ("FP16", [0.5, 2.0])],
)
def test_raw_round_trip(datatype: str, values: list[object]) -> None:
    dtype = DATATYPES[datatype]
    assert unpack_raw(dtype, pack_raw(dtype, values), "o") == values


def test_raw_bytes_layout_and_corruption() -> None:
    raw = b"\x02\x00\x00\x0017\x01\x00\x00\x00x"
    assert unpack_raw(DATATYPES["BYTES"], raw, "o") == [b"17", b"x"]
    with pytest.raises(CliError, match="runs past the end"):
        unpack_raw(DATATYPES["BYTES"], b"\x09\x00\x00\x00ab", "o")
    with pytest.raises(CliError, match="inside a length prefix"):
        unpack_raw(DATATYPES["BYTES"], b"\x00\x00", "o")
    with pytest.raises(CliError, match="not a whole number of INT32"):
        unpack_raw(DATATYPES["INT32"], b"\x00" * 5, "o")


def test_format_output() -> None:
    fp32 = struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert format_output("Y", DATATYPES["FP32"], [1, 2], [fp32, 2.0]) == \
        "Y (FP32, shape [1, 2]): 0.1, 2"
    assert format_output("B", DATATYPES["BYTES"], [2], [b"ok", b"\xff"]) == \
        "B (BYTES, shape [2]): ok, b'\\xff'"
    assert format_output("T", DATATYPES["BOOL"], [1], [True]) == "T (BOOL, shape [1]): true"


def test_format_response_reads_raw_and_typed_contents() -> None:
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="OUTPUT0", datatype="BYTES", shape=[1, 3])
    response.outputs.add(name="OUTPUT1", datatype="INT64", shape=[2])
    response.raw_output_contents.append(pack_raw(DATATYPES["BYTES"], [b"2", b"3", b"4"]))
    response.raw_output_contents.append(pack_raw(DATATYPES["INT64"], [-1, 5]))
    assert format_response(response) == [
        "OUTPUT0 (BYTES, shape [1, 3]): 2, 3, 4",
        "OUTPUT1 (INT64, shape [2]): -1, 5",
    ]
    assert format_response(response, ["OUTPUT1"]) == ["OUTPUT1 (INT64, shape [2]): -1, 5"]
    typed = pb.ModelInferResponse(model_name="m")
    typed.outputs.add(name="S", datatype="FP64", shape=[1]).contents.fp64_contents.append(0.25)
    assert format_response(typed) == ["S (FP64, shape [1]): 0.25"]
