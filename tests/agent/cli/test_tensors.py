"""Values, shapes, request building and output decoding (text and JSON) for `meshlet infer`."""

from __future__ import annotations

import json
import struct

import pytest

from agent.cli.errors import EXIT_USAGE, CliError, UsageError
from agent.cli.tensors import (
    DATATYPES,
    Tensor,
    build_request,
    check_shape,
    coerce_values,
    format_output,
    format_response,
    is_number,
    pack_raw,
    parse_values,
    resolve_shape,
    response_json,
    unpack_raw,
)
from agent.proto import grpc_service_pb2 as pb


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


@pytest.mark.parametrize(
    ("declared", "count", "rows", "shape"),
    [
        ([-1, 3], 6, 2, [2, 3]),
        ([-1, 16], 32, 2, [2, 16]),
        ([-1, -1], 6, 3, [3, 2]),
        ([2, 3], 6, 2, [2, 3]),
        ([-1], 6, 2, [6]),  # no batch dimension: the rows are one after another
        ([6], 6, 3, [6]),
    ],
)
def test_resolve_shape_makes_rows_the_batch(declared: list[int], count: int, rows: int,
                                            shape: list[int]) -> None:
    assert resolve_shape("x", declared, count, rows) == shape


def test_resolve_shape_rejects_rows_that_do_not_fit() -> None:
    with pytest.raises(UsageError,
                       match=r"^input x: 3 rows do not fit the model's shape \[2, 2\]$"):
        resolve_shape("x", [2, 2], 6, 3)
    with pytest.raises(UsageError,
                       match=r"^input x: 8 values do not fit the model's shape \[-1, 3\]$"):
        resolve_shape("x", [-1, 3], 8, 2)


def test_build_request_carries_tensors_as_they_are() -> None:
    tensors = [
        Tensor("INPUT0", DATATYPES["BYTES"], [1, 2], [b"1", b"2"], {"content_type": "str"}),
        Tensor("N", DATATYPES["INT64"], [1], [7]),
        Tensor("F", DATATYPES["FP32"], [2], [0.5, 2.0]),
    ]
    request = build_request("m", tensors, ["OUTPUT0"], "req-1",
                            {"flag": True, "n": 3, "f": 0.5, "s": "x"})
    assert (request.model_name, request.id) == ("m", "req-1")
    first, second, third = request.inputs
    assert (first.name, first.datatype, list(first.shape)) == ("INPUT0", "BYTES", [1, 2])
    assert list(first.contents.bytes_contents) == [b"1", b"2"]
    assert first.parameters["content_type"].string_param == "str"
    assert (second.datatype, list(second.shape), list(second.contents.int64_contents)) == (
        "INT64", [1], [7])
    assert list(third.contents.fp32_contents) == [0.5, 2.0]
    assert [o.name for o in request.outputs] == ["OUTPUT0"]
    assert not request.raw_input_contents
    params = request.parameters
    assert params["flag"].WhichOneof("parameter_choice") == "bool_param"
    assert (params["flag"].bool_param, params["n"].int64_param, params["f"].double_param,
            params["s"].string_param) == (True, 3, 0.5, "x")


def test_fp16_sends_every_input_raw() -> None:
    tensors = [Tensor("H", DATATYPES["FP16"], [1], [1.5]),
               Tensor("S", DATATYPES["BYTES"], [1], [b"ab"])]
    request = build_request("m", tensors)
    assert list(request.raw_input_contents) == [struct.pack("<e", 1.5), b"\x02\x00\x00\x00ab"]
    assert not request.inputs[0].HasField("contents")


@pytest.mark.parametrize(
    ("datatype", "items", "values"),
    [
        ("BOOL", [True, False, 1, 0], [True, False, True, False]),
        ("INT8", [-128, 127.0], [-128, 127]),
        ("UINT64", [2**64 - 1], [2**64 - 1]),
        ("FP64", [1, 0.25], [1.0, 0.25]),
        ("BYTES", ["é", b"\xff"], ["é".encode(), b"\xff"]),
    ],
)
def test_coerce_values(datatype: str, items: list[object], values: list[object]) -> None:
    assert coerce_values("x", DATATYPES[datatype], items) == values


@pytest.mark.parametrize(
    ("datatype", "item"),
    [("INT8", 128), ("INT32", 1.5), ("INT64", True), ("BOOL", 2), ("FP32", "1"),
     ("FP64", None), ("BYTES", 3), ("UINT8", -1)],
)
def test_a_json_value_that_does_not_fit_names_the_input(datatype: str, item: object) -> None:
    with pytest.raises(UsageError) as info:
        coerce_values("x", DATATYPES[datatype], [0 if datatype != "BYTES" else "a", item])
    assert str(info.value).startswith(f"input x: value 1 {item!r} is not a valid {datatype} (")


def test_check_shape() -> None:
    assert check_shape("x", [2, 3], 6, "--shape") == [2, 3]
    assert check_shape("x", [], 1, "--shape") == []
    with pytest.raises(UsageError, match=r"^input x: 6 values do not fit --shape \[2, 4\]$"):
        check_shape("x", [2, 4], 6, "--shape")


def test_is_number() -> None:
    assert [is_number(t) for t in ("1", " -2.5", "1e3", "nan", "a", "", "1,2")] == [
        True, True, True, True, False, False, False]


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


def test_response_json_is_kserve_v2_json() -> None:
    response = pb.ModelInferResponse(model_name="m", model_version="2", id="req-1")
    response.outputs.add(name="S", datatype="BYTES", shape=[2])
    response.outputs.add(name="P", datatype="FP32", shape=[1, 2])
    response.outputs.add(name="B", datatype="BOOL", shape=[1])
    response.raw_output_contents.append(pack_raw(DATATYPES["BYTES"], [b"ok", b"\xffa"]))
    response.raw_output_contents.append(pack_raw(DATATYPES["FP32"], [0.1, 2.0]))
    response.raw_output_contents.append(pack_raw(DATATYPES["BOOL"], [True]))
    body = response_json(response)
    assert body == {
        "model_name": "m", "model_version": "2", "id": "req-1",
        "outputs": [
            {"name": "S", "datatype": "BYTES", "shape": [2], "data": ["ok", "\\xffa"]},
            {"name": "P", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 2.0]},
            {"name": "B", "datatype": "BOOL", "shape": [1], "data": [True]},
        ],
    }
    assert json.loads(json.dumps(body)) == body
    assert response_json(response, ["B"])["outputs"] == [body["outputs"][2]]


def test_response_json_reads_typed_contents_and_empty_fields() -> None:
    response = pb.ModelInferResponse(model_name="my-lr")
    predict = response.outputs.add(name="predict", datatype="INT64", shape=[2, 1])
    predict.contents.int64_contents.extend([1, 0])
    assert response_json(response) == {
        "model_name": "my-lr", "model_version": "", "id": "",
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [2, 1], "data": [1, 0]}],
    }
