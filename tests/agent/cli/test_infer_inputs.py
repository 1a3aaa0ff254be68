"""Where `meshlet infer`'s inputs come from: --input rows (typed by the model's
metadata or by their values), --json request bodies, --npy files, and the
--shape / --datatype overrides."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy
import pytest

from agent.cli.errors import EXIT_ERROR, EXIT_USAGE, CliError, UsageError
from agent.cli.infer_inputs import (
    NO_INPUTS,
    collect_rows,
    parse_datatypes,
    parse_json_request,
    parse_shapes,
    read_inputs,
    read_npy,
    split_assignment,
    tensor_from_array,
)
from agent.cli.tensors import DATATYPES, Tensor
from agent.proto import grpc_service_pb2 as pb


def declared(*inputs: tuple[str, str, list[int]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    meta = pb.ModelMetadataResponse(name="m")
    for name, datatype, shape in inputs:
        meta.inputs.add(name=name, datatype=datatype, shape=shape)
    return list(meta.inputs)


def resolve(*input_args: str, model: list[Any] | None = None, shapes: tuple[str, ...] = (),
            datatypes: tuple[str, ...] = ()) -> list[Tensor]:
    inputs = read_inputs(input_args, None, [], shapes, datatypes)
    return inputs.resolve("m", model or [])


def summary(tensor: Tensor) -> tuple[str, str, list[int], list[Any]]:
    return tensor.name, tensor.datatype.name, tensor.shape, tensor.values


# --- flags --------------------------------------------------------------------


def test_split_assignment() -> None:
    assert split_assignment("INPUT0=1,2,3", "--input", "F") == ("INPUT0", "1,2,3")
    assert split_assignment(" x =a=b", "--input", "F") == ("x", "a=b")
    for bad in ("INPUT0", "=1,2", " =1"):
        with pytest.raises(UsageError, match=rf"^--input {bad!r} is not NAME=v1,v2,...$"):
            split_assignment(bad, "--input", "NAME=v1,v2,...")


def test_repeating_a_name_adds_rows() -> None:
    assert collect_rows(["x=1,2", "y=a", "x=3,4"]) == {
        "x": [["1", "2"], ["3", "4"]], "y": [["a"]]}


def test_parse_shapes() -> None:
    assert parse_shapes(["x=2,3", "y= 6 ", "s="]) == {"x": [2, 3], "y": [6], "s": []}
    for bad in ("x=-1,3", "x=2,a", "x=2,,3", "x=1.5"):
        with pytest.raises(UsageError, match=rf"^--shape {bad!r}: dimensions are whole numbers"):
            parse_shapes([bad])
    with pytest.raises(UsageError, match=r"^--shape x is given twice$"):
        parse_shapes(["x=1", "x=2"])


def test_parse_datatypes() -> None:
    assert parse_datatypes(["x=fp32", "y= BYTES"]) == {
        "x": DATATYPES["FP32"], "y": DATATYPES["BYTES"]}
    with pytest.raises(UsageError, match=r"^--datatype 'x=FP8': 'FP8' is not a datatype \(one "):
        parse_datatypes(["x=FP8"])
    with pytest.raises(UsageError, match=r"^--datatype x is given twice$"):
        parse_datatypes(["x=FP32", "x=FP64"])


# --- --input, model without declared inputs -------------------------------------


def test_rows_of_numbers_are_fp64_rows_by_values() -> None:
    [x] = resolve("x=1,2,3", "x=4,5,6.5")
    assert summary(x) == ("x", "FP64", [2, 3], [1.0, 2.0, 3.0, 4.0, 5.0, 6.5])


def test_one_row_is_a_batch_of_one() -> None:
    [x] = resolve("x=0.5,-1e3")
    assert summary(x) == ("x", "FP64", [1, 2], [0.5, -1000.0])


def test_values_that_are_not_all_numbers_are_bytes() -> None:
    [text, other] = resolve("text=hello,1", "other=a")
    assert summary(text) == ("text", "BYTES", [1, 2], [b"hello", b"1"])
    assert summary(other) == ("other", "BYTES", [1, 1], [b"a"])


def test_rows_of_different_lengths_are_a_usage_error() -> None:
    with pytest.raises(UsageError) as info:
        resolve("x=1,2,3", "x=4,5,6", "x=7,8")
    assert info.value.exit_code == EXIT_USAGE
    assert str(info.value) == (
        "input x: row 3 has 2 values but row 1 has 3; each --input x=... is one row")


def test_shape_and_datatype_override_the_values() -> None:
    [x] = resolve("x=1,2,3,4,5,6", shapes=("x=3,2",), datatypes=("x=INT32",))
    assert summary(x) == ("x", "INT32", [3, 2], [1, 2, 3, 4, 5, 6])
    [y] = resolve("y=1,2,3", "y=4,5,6", shapes=("y=6",))  # rows flattened on request
    assert summary(y) == ("y", "FP64", [6], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])


def test_a_shape_the_values_do_not_fill_names_the_input() -> None:
    with pytest.raises(UsageError, match=r"^input x: 6 values do not fit --shape \[2, 4\]$"):
        resolve("x=1,2,3", "x=4,5,6", shapes=("x=2,4",))


def test_a_value_that_does_not_fit_the_override_names_the_input() -> None:
    with pytest.raises(UsageError, match=r"^input x: value 1 '2.5' is not a valid INT64"):
        resolve("x=1,2.5", datatypes=("x=INT64",))


# --- --input, model that declares its inputs ------------------------------------


def test_declared_inputs_give_datatype_and_shape() -> None:
    model = declared(("INPUT0", "BYTES", [-1, 2]), ("N", "INT64", [-1]), ("F", "FP32", [2]))
    first, second, third = resolve("INPUT0=1,2", "N=7", "F=0.5,2", model=model)
    assert summary(first) == ("INPUT0", "BYTES", [1, 2], [b"1", b"2"])
    assert summary(second) == ("N", "INT64", [1], [7])
    assert summary(third) == ("F", "FP32", [2], [0.5, 2.0])


def test_rows_fill_a_declared_batch_dimension() -> None:
    model = declared(("INPUT0", "INT32", [-1, 3]))
    [tensor] = resolve("INPUT0=1,2,3", "INPUT0=4,5,6", model=model)
    assert summary(tensor) == ("INPUT0", "INT32", [2, 3], [1, 2, 3, 4, 5, 6])


def test_overrides_win_over_the_model() -> None:
    model = declared(("x", "FP32", [-1, 4]))
    [tensor] = resolve("x=1,2", model=model, shapes=("x=2",), datatypes=("x=UINT8",))
    assert summary(tensor) == ("x", "UINT8", [2], [1, 2])


def test_an_input_the_model_does_not_declare() -> None:
    with pytest.raises(UsageError, match=r"^model 'm' has no input 'X' \(inputs: INPUT0, B\)$"):
        resolve("X=1", model=declared(("INPUT0", "BYTES", [-1]), ("B", "BOOL", [1])))


def test_a_declared_datatype_meshlet_cannot_send() -> None:
    model = declared(("B", "BF16", [-1]))
    with pytest.raises(CliError, match="datatype 'BF16'") as info:
        resolve("B=1", model=model)
    assert info.value.exit_code == EXIT_ERROR
    [tensor] = resolve("B=1", model=model, datatypes=("B=FP32",))
    assert summary(tensor) == ("B", "FP32", [1], [1.0])


# --- --json ---------------------------------------------------------------------


def test_json_request_body() -> None:
    body = {
        "id": "req-7",
        "parameters": {"content_type": "np", "n": 2},
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6.5]]},
            {"name": "s", "datatype": "bytes", "shape": [1], "data": ["héllo"],
             "parameters": {"content_type": "str"}},
            {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, 0]},
        ],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    request = parse_json_request(json.dumps(body), "--json r.json")
    assert (request.request_id, request.parameters) == ("req-7", {"content_type": "np", "n": 2})
    assert request.outputs == ["predict", "predict_proba"]
    x, s, b = request.tensors
    assert summary(x) == ("x", "FP32", [2, 3], [1.0, 2.0, 3.0, 4.0, 5.0, 6.5])
    assert summary(s) == ("s", "BYTES", [1], ["héllo".encode()])
    assert s.parameters == {"content_type": "str"}
    assert summary(b) == ("b", "BOOL", [2], [True, False])


def test_json_body_with_overrides() -> None:
    body = '{"inputs": [{"name": "x", "datatype": "FP64", "shape": [6], "data": [1,2,3,4,5,6]}]}'
    request = parse_json_request(body, "--json -", {"x": [2, 3]}, {"x": DATATYPES["INT8"]})
    assert summary(request.tensors[0]) == ("x", "INT8", [2, 3], [1, 2, 3, 4, 5, 6])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", r"^--json f: not JSON \(Expecting property name"),
        ("[]", r'^--json f: expected \{"inputs": \[\{"name", "shape", "datatype", "data"\}'),
        ('{"inputs": []}', r'^--json f: expected \{"inputs"'),
        ('{"inputs": [{"datatype": "FP32"}]}',
         r'^--json f: inputs\[0\]: expected an object with a "name"$'),
        ('{"inputs": [{"name": "x", "shape": [1], "data": [1]}]}',
         r'^input x \(--json f: inputs\[0\]\): "datatype" is missing$'),
        ('{"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}]}',
         r"^input x \(--json f: inputs\[0\]\): 'FP8' is not a datatype"),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}]}',
         r'^input x \(--json f: inputs\[0\]\): "shape" must be a JSON array$'),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
         r"^input x \(--json f: inputs\[0\]\): shape \[-1\] is not a list of whole numbers"),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}',
         r'^input x \(--json f: inputs\[0\]\): "data" is missing$'),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2, 3]}]}',
         r"^input x: 3 values do not fit its shape \[2\]$"),
        ('{"inputs": [{"name": "x", "datatype": "INT8", "shape": [2], "data": [1, 300]}]}',
         r"^input x: value 1 300 is not a valid INT8"),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["1"]}]}',
         r"^input x: value 0 '1' is not a valid FP32 \(expected a number\)$"),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},'
         ' {"name": "x", "datatype": "FP32", "shape": [1], "data": [2]}]}',
         r"^input x is given twice in --json f$"),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
         ' "outputs": ["y"]}', r'^--json f: each of "outputs" must be \{"name": ...\}$'),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
         ' "parameters": {"p": [1]}}', r"^--json f: parameter 'p' must be a string"),
        ('{"id": 3, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
         r'^--json f: "id" must be a JSON string$'),
    ],
)
def test_a_bad_json_body_is_one_clear_usage_error(body: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_json_request(body, "--json f")
    assert "\n" not in str(info.value)


def test_json_from_a_file_and_from_stdin(tmp_path: Path) -> None:
    body = '{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}'
    path = tmp_path / "request.json"
    path.write_text(body)
    from_file = read_inputs([], str(path), [])
    from_stdin = read_inputs([], "-", [], stdin=io.StringIO(body))
    for inputs in (from_file, from_stdin):
        assert not inputs.needs_metadata
        assert [summary(t) for t in inputs.resolve("m", [])] == [
            ("x", "FP64", [1, 2], [1.0, 2.0])]
    missing = tmp_path / "missing.json"
    with pytest.raises(UsageError, match=rf"^--json {missing}: cannot read it \(\[Errno 2\]"):
        read_inputs([], str(missing), [])


# --- --npy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "datatype", "values"),
    [
        (numpy.array([[1, 2, 3], [4, 5, 6]], dtype=numpy.float32), "FP32",
         [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        (numpy.array([[0.5], [1.5]], dtype=">f8"), "FP64", [0.5, 1.5]),  # big-endian too
        (numpy.array([-1, 2], dtype=numpy.int8), "INT8", [-1, 2]),
        (numpy.array([2**64 - 1], dtype=numpy.uint64), "UINT64", [2**64 - 1]),
        (numpy.array([True, False]), "BOOL", [True, False]),
        (numpy.array([0.5], dtype=numpy.float16), "FP16", [0.5]),
        (numpy.array(["a", "héllo"]), "BYTES", [b"a", "héllo".encode()]),
        (numpy.array([b"a", b"bc"]), "BYTES", [b"a", b"bc"]),
    ],
)
def test_npy_gives_shape_datatype_and_values(tmp_path: Path, array: Any, datatype: str,
                                             values: list[Any]) -> None:
    path = tmp_path / "x.npy"
    numpy.save(path, array)
    tensor = read_npy("x", str(path))
    assert summary(tensor) == ("x", datatype, list(array.shape), values)


def test_npy_with_overrides() -> None:
    array = numpy.array([[1.0, 2.0], [3.0, 4.0]])
    tensor = tensor_from_array("x", array, "--npy a.npy", [4], DATATYPES["INT64"])
    assert summary(tensor) == ("x", "INT64", [4], [1, 2, 3, 4])
    with pytest.raises(UsageError, match=r"^input x: 4 values do not fit --shape \[3\]$"):
        tensor_from_array("x", array, "--npy a.npy", [3])
    with pytest.raises(UsageError, match=r"^input x: value 0 0.5 is not a valid INT64"):
        tensor_from_array("x", numpy.array([0.5]), "--npy a.npy", None, DATATYPES["INT64"])


def test_npy_files_that_cannot_be_sent(tmp_path: Path) -> None:
    objects = tmp_path / "objects.npy"
    numpy.save(objects, numpy.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match=rf"^input x: --npy {objects} is not a \.npy array \("):
        read_npy("x", str(objects))
    complex_path = tmp_path / "complex.npy"
    numpy.save(complex_path, numpy.array([1j]))
    with pytest.raises(UsageError, match=rf"^input x: --npy {complex_path} holds complex128, "):
        read_npy("x", str(complex_path))
    text = tmp_path / "text.npy"
    text.write_text("1,2,3\n")
    with pytest.raises(UsageError, match=rf"^input x: --npy {text} is not a \.npy array"):
        read_npy("x", str(text))
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(UsageError, match=rf"^input x: --npy {empty} is not a \.npy array"):
        read_npy("x", str(empty))
    archive = tmp_path / "arrays.npz"
    numpy.savez(archive, x=numpy.array([1]))
    with pytest.raises(UsageError, match=r"is an \.npz archive, not one \.npy array$"):
        read_npy("x", str(archive))
    with pytest.raises(UsageError, match=rf"^input x: cannot read --npy {tmp_path}/no\.npy \("):
        read_npy("x", str(tmp_path / "no.npy"))


# --- sources together -----------------------------------------------------------


def test_sources_mix_one_per_input(tmp_path: Path) -> None:
    numpy.save(tmp_path / "b.npy", numpy.array([[1, 2]], dtype=numpy.int32))
    body = '{"inputs": [{"name": "a", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],' \
           ' "outputs": [{"name": "y"}]}'
    inputs = read_inputs(["c=1,2"], "-", [f"b={tmp_path / 'b.npy'}"], ["b=2"], ["c=FP32"],
                         io.StringIO(body))
    assert inputs.needs_metadata
    assert inputs.outputs == ["y"]
    assert [summary(t) for t in inputs.resolve("m", [])] == [
        ("a", "BYTES", [1], [b"hi"]),
        ("b", "INT32", [2], [1, 2]),
        ("c", "FP32", [1, 2], [1.0, 2.0]),
    ]


def test_an_input_from_two_sources(tmp_path: Path) -> None:
    numpy.save(tmp_path / "x.npy", numpy.array([1.0]))
    npy = f"x={tmp_path / 'x.npy'}"
    with pytest.raises(UsageError, match=rf"^input x is given by both --npy {tmp_path}/x.npy "
                                         r"and --input$"):
        read_inputs(["x=1"], None, [npy])
    body = '{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}'
    with pytest.raises(UsageError, match=r"^input x is given by both --json - and --npy "):
        read_inputs([], "-", [npy], stdin=io.StringIO(body))


def test_no_inputs_and_overrides_of_nothing() -> None:
    with pytest.raises(UsageError) as info:
        read_inputs([], None, [])
    assert (str(info.value), info.value.exit_code) == (NO_INPUTS, EXIT_USAGE)
    with pytest.raises(UsageError, match=r"^--shape names input y, which no --input, --json or "
                                         r"--npy gives$"):
        read_inputs(["x=1"], None, [], ["y=1"])
    with pytest.raises(UsageError, match=r"^--datatype names input y, which no "):
        read_inputs(["x=1"], None, [], [], ["y=FP32"])
    with pytest.raises(UsageError, match=r"^--npy 'x' is not NAME=FILE$"):
        read_inputs([], None, ["x"])
