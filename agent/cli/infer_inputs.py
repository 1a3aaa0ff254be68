"""Where ``meshlet infer``'s input tensors come from.

Three sources, which mix as long as each input comes from one of them:

- ``--input NAME=v1,v2,...``: one row of values as text; the same name again
  adds a row. The model's metadata types and shapes an input it declares (a
  leading -1 dimension is the number of rows). A model that declares no inputs
  (a plain scikit-learn model in MLServer) gets what the command line says:
  FP64 when every value is a number, else BYTES, shape [rows, values per row].
- ``--json FILE`` (``-``: stdin): a KServe v2 JSON inference request body,
  ``{"inputs": [{"name", "datatype", "shape", "data"}], "outputs": [{"name"}]}``
  (optional ``id`` and ``parameters`` too); ``data`` may be flat or nested.
- ``--npy NAME=FILE``: a numpy ``.npy`` array, which gives the shape, the
  datatype and the values.

``--datatype NAME=TYPE`` and ``--shape NAME=D1,D2,...`` override what any of
them would give; the values must then fit. Every mistake is a ``UsageError``
naming the input or the flag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from agent.cli.errors import UsageError
from agent.cli.tensors import (
    DATATYPES,
    Datatype,
    Parameter,
    Tensor,
    check_shape,
    coerce_values,
    datatype,
    is_number,
    parse_values,
    resolve_shape,
)
from agent.proto import grpc_service_pb2 as pb

NO_INPUTS = "give the inputs with --input NAME=v1,v2,..., --json FILE or --npy NAME=FILE"
INT64_RANGE = range(-(2**63), 2**63)
_JSON_KINDS: dict[type, str] = {str: "string", list: "array", dict: "object"}
_MISSING = object()  # _field's "no default"

# numpy dtype (kind, item size) -> KServe datatype; strings are BYTES.
NUMPY_DATATYPES = {
    ("b", 1): "BOOL",
    ("i", 1): "INT8", ("i", 2): "INT16", ("i", 4): "INT32", ("i", 8): "INT64",
    ("u", 1): "UINT8", ("u", 2): "UINT16", ("u", 4): "UINT32", ("u", 8): "UINT64",
    ("f", 2): "FP16", ("f", 4): "FP32", ("f", 8): "FP64",
}


@dataclass
class JsonRequest:
    """What a KServe v2 JSON request body asks for, its tensors typed and shaped."""

    tensors: list[Tensor] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    request_id: str = ""
    parameters: dict[str, Parameter] = field(default_factory=dict)


@dataclass
class InferInputs:
    """Everything the command line says to send. ``tensors`` (from --json and
    --npy) are final; ``rows`` (from --input) wait for the model's metadata."""

    rows: dict[str, list[list[str]]]
    tensors: list[Tensor]
    shapes: dict[str, list[int]]
    datatypes: dict[str, Datatype]
    outputs: list[str] = field(default_factory=list)
    request_id: str = ""
    parameters: dict[str, Parameter] = field(default_factory=dict)

    @property
    def needs_metadata(self) -> bool:
        return bool(self.rows)

    def resolve(
        self, model_name: str, declared: Sequence[pb.ModelMetadataResponse.TensorMetadata]
    ) -> list[Tensor]:
        """Every input tensor, the --input rows typed and shaped by ``declared``
        (the model's metadata inputs) or, when it declares none, by their values."""
        by_name = {tensor.name: tensor for tensor in declared}
        tensors = list(self.tensors)
        for name, rows in self.rows.items():
            if by_name and name not in by_name:
                known = ", ".join(by_name)
                raise UsageError(f"model {model_name!r} has no input {name!r} (inputs: {known})")
            tensors.append(tensor_from_rows(
                name, rows, by_name.get(name), self.shapes.get(name), self.datatypes.get(name)
            ))
        return tensors


def read_inputs(
    input_args: Sequence[str],
    json_path: str | None,
    npy_args: Sequence[str],
    shape_args: Sequence[str] = (),
    datatype_args: Sequence[str] = (),
    stdin: TextIO | None = None,
) -> InferInputs:
    """The command line's inputs, read (files, stdin) and checked: each input
    given by one source, each override naming an input that some source gives."""
    shapes = parse_shapes(shape_args)
    datatypes = parse_datatypes(datatype_args)
    rows = collect_rows(input_args)
    request = JsonRequest()
    if json_path is not None:
        request = parse_json_request(read_text(json_path, stdin), f"--json {json_path}",
                                     shapes, datatypes)
    sources = {tensor.name: f"--json {json_path}" for tensor in request.tensors}
    tensors = list(request.tensors)
    for text in npy_args:
        name, path = split_assignment(text, "--npy", "NAME=FILE")
        _claim(sources, name, f"--npy {path}")
        tensors.append(read_npy(name, path, shapes.get(name), datatypes.get(name)))
    for name, given in rows.items():
        _claim(sources, name, "--input")
        check_rows(name, given, shapes.get(name), datatypes.get(name))
    for flag, overrides in (("--shape", shapes), ("--datatype", datatypes)):
        for name in overrides:
            if name not in sources:
                raise UsageError(f"{flag} names input {name}, which no --input, --json "
                                 "or --npy gives")
    if not sources:
        raise UsageError(NO_INPUTS)
    return InferInputs(rows, tensors, shapes, datatypes, request.outputs,
                       request.request_id, request.parameters)


def _claim(sources: dict[str, str], name: str, source: str) -> None:
    if name in sources:
        raise UsageError(f"input {name} is given by both {sources[name]} and {source}")
    sources[name] = source


# --- flags ------------------------------------------------------------------


def split_assignment(text: str, flag: str, form: str) -> tuple[str, str]:
    """``"x=1,2"`` -> ``("x", "1,2")``; the name is stripped and must not be empty."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"{flag} {text!r} is not {form}")
    return name.strip(), value


def collect_rows(input_args: Sequence[str]) -> dict[str, list[list[str]]]:
    """``["x=1,2", "y=a", "x=3,4"]`` -> ``{"x": [["1", "2"], ["3", "4"]], "y": [["a"]]}``."""
    rows: dict[str, list[list[str]]] = {}
    for text in input_args:
        name, values = split_assignment(text, "--input", "NAME=v1,v2,...")
        rows.setdefault(name, []).append(values.split(","))
    return rows


def parse_shapes(shape_args: Sequence[str]) -> dict[str, list[int]]:
    """``["x=2,3"]`` -> ``{"x": [2, 3]}``: whole dimensions, each input once."""
    shapes: dict[str, list[int]] = {}
    for text in shape_args:
        name, dims = split_assignment(text, "--shape", "NAME=D1,D2,...")
        if name in shapes:
            raise UsageError(f"--shape {name} is given twice")
        shapes[name] = _dimensions(dims, f"--shape {text!r}")
    return shapes


def _dimensions(text: str, what: str) -> list[int]:
    """``"2,3"`` -> ``[2, 3]``; ``""`` is a scalar's shape, ``[]``."""
    dims = [dim.strip() for dim in text.split(",")] if text.strip() else []
    if not all(dim.isascii() and dim.isdigit() for dim in dims):
        raise UsageError(f"{what}: dimensions are whole numbers >= 0, comma-separated "
                         "(NAME=2,3)")
    return [int(dim) for dim in dims]


def parse_datatypes(datatype_args: Sequence[str]) -> dict[str, Datatype]:
    """``["x=fp32"]`` -> ``{"x": DATATYPES["FP32"]}``: each input once."""
    datatypes: dict[str, Datatype] = {}
    for text in datatype_args:
        name, value = split_assignment(text, "--datatype", "NAME=DATATYPE")
        if name in datatypes:
            raise UsageError(f"--datatype {name} is given twice")
        datatypes[name] = _known_datatype(value.strip().upper(), f"--datatype {text!r}")
    return datatypes


def _known_datatype(name: str, what: str) -> Datatype:
    if name not in DATATYPES:
        raise UsageError(f"{what}: {name!r} is not a datatype (one of {', '.join(DATATYPES)})")
    return DATATYPES[name]


# --- --input rows -----------------------------------------------------------


def tensor_from_rows(
    name: str,
    rows: Sequence[Sequence[str]],
    declared: pb.ModelMetadataResponse.TensorMetadata | None,
    shape: Sequence[int] | None = None,
    dtype: Datatype | None = None,
) -> Tensor:
    """The tensor of one input's ``--input`` rows. Datatype: ``dtype``, else the
    model's, else FP64 when every value is a number and BYTES when not. Shape:
    ``shape``, else the model's made concrete, else [rows, values per row]."""
    width = _row_width(name, rows)
    texts = [text for row in rows for text in row]
    if dtype is None and declared is not None:
        dtype = datatype(declared.datatype, f"input {name}")
    if dtype is None:
        dtype = DATATYPES["FP64" if all(is_number(t) for t in texts) else "BYTES"]
    values = parse_values(name, dtype, texts)
    if shape is not None:
        resolved = check_shape(name, shape, len(values), "--shape")
    elif declared is not None:
        resolved = resolve_shape(name, declared.shape, len(values), len(rows))
    else:
        resolved = [len(rows), width]
    return Tensor(name, dtype, resolved, values)


def check_rows(name: str, rows: Sequence[Sequence[str]], shape: Sequence[int] | None = None,
               dtype: Datatype | None = None) -> None:
    """What can be checked of one input's rows before the model's metadata is
    known (so that nothing is sent): equal lengths, and the overrides' fit."""
    width = _row_width(name, rows)
    if dtype is not None:
        parse_values(name, dtype, [text for row in rows for text in row])
    if shape is not None:
        check_shape(name, shape, width * len(rows), "--shape")


def _row_width(name: str, rows: Sequence[Sequence[str]]) -> int:
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise UsageError(f"input {name}: row {number} has {len(row)} values but row 1 "
                             f"has {width}; each --input {name}=... is one row")
    return width


# --- --json -----------------------------------------------------------------


def read_text(path: str, stdin: TextIO | None) -> str:
    if path == "-":
        if stdin is None:
            raise UsageError("--json -: no standard input")
        return stdin.read()
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--json {path}: cannot read it ({err})") from None


def parse_json_request(
    text: str,
    source: str,
    shapes: Mapping[str, Sequence[int]] | None = None,
    datatypes: Mapping[str, Datatype] | None = None,
) -> JsonRequest:
    """A KServe v2 JSON inference request body as typed tensors; ``shapes`` and
    ``datatypes`` override the body's. ``source`` names it in errors."""
    shapes, datatypes = shapes or {}, datatypes or {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{source}: not JSON ({err})") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) \
            or not body["inputs"]:
        raise UsageError(f'{source}: expected {{"inputs": [{{"name", "shape", "datatype", '
                         '"data"}, ...]}')
    request = JsonRequest(
        request_id=_field(body, "id", str, source, ""),
        parameters=_parameters(body, source),
        outputs=[_output_name(item, source) for item in _field(body, "outputs", list, source, [])],
    )
    seen: set[str] = set()
    for index, item in enumerate(body["inputs"]):
        tensor = _json_tensor(item, f"{source}: inputs[{index}]", shapes, datatypes)
        if tensor.name in seen:
            raise UsageError(f"input {tensor.name} is given twice in {source}")
        seen.add(tensor.name)
        request.tensors.append(tensor)
    return request


def _json_tensor(item: Any, where: str, shapes: Mapping[str, Sequence[int]],
                 datatypes: Mapping[str, Datatype]) -> Tensor:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise UsageError(f"{where}: expected an object with a \"name\"")
    name = item["name"]
    what = f"input {name} ({where})"
    dtype = datatypes.get(name)
    if dtype is None:
        dtype = _known_datatype(_field(item, "datatype", str, what).upper(), what)
    given_shape = _field(item, "shape", list, what)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in given_shape):
        raise UsageError(f"{what}: shape {given_shape} is not a list of whole numbers >= 0")
    data = _field(item, "data", list, what)
    values = coerce_values(name, dtype, _flatten(data))
    if name in shapes:
        shape = check_shape(name, shapes[name], len(values), "--shape")
    else:
        shape = check_shape(name, given_shape, len(values), "its shape")
    return Tensor(name, dtype, shape, values, _parameters(item, what))


def _field(item: dict[str, Any], key: str, kind: type, what: str,
           default: Any = _MISSING) -> Any:
    """``item[key]``, which must be a JSON ``kind``; ``default`` when absent,
    an error when absent without one."""
    if key not in item:
        if default is _MISSING:
            raise UsageError(f"{what}: \"{key}\" is missing")
        return default
    if not isinstance(item[key], kind):
        raise UsageError(f"{what}: \"{key}\" must be a JSON {_JSON_KINDS[kind]}")
    return item[key]


def _output_name(item: Any, source: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise UsageError(f'{source}: each of "outputs" must be {{"name": ...}}')
    return str(item["name"])


def _parameters(item: dict[str, Any], what: str) -> dict[str, Parameter]:
    parameters = _field(item, "parameters", dict, what, {})
    for key, value in parameters.items():
        if not isinstance(value, bool | int | float | str) or (
            isinstance(value, int) and value not in INT64_RANGE
        ):
            raise UsageError(f"{what}: parameter {key!r} must be a string, a boolean or "
                             "a number (integers within INT64)")
    return dict(parameters)


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists (row-major) to one flat list."""
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


# --- --npy ------------------------------------------------------------------


def read_npy(name: str, path: str, shape: Sequence[int] | None = None,
             dtype: Datatype | None = None) -> Tensor:
    """The tensor in a numpy ``.npy`` file (never unpickled: no object arrays)."""
    import numpy  # here, not at the top: only --npy pays for importing it

    try:
        array = numpy.load(path, allow_pickle=False)
    except OSError as err:
        raise UsageError(f"input {name}: cannot read --npy {path} ({err})") from None
    except (ValueError, EOFError) as err:
        raise UsageError(f"input {name}: --npy {path} is not a .npy array ({err})") from None
    if not isinstance(array, numpy.ndarray):
        array.close()
        raise UsageError(f"input {name}: --npy {path} is an .npz archive, not one .npy array")
    return tensor_from_array(name, array, f"--npy {path}", shape, dtype)


def tensor_from_array(name: str, array: Any, source: str, shape: Sequence[int] | None = None,
                      dtype: Datatype | None = None) -> Tensor:
    """A numpy array as a tensor: its shape and datatype unless overridden."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind in ("U", "S"):
        natural = DATATYPES["BYTES"]
    elif (kind, size) in NUMPY_DATATYPES:
        natural = DATATYPES[NUMPY_DATATYPES[kind, size]]
    else:
        raise UsageError(f"input {name}: {source} holds {array.dtype}, which has no KServe "
                         "datatype (use bool, int, uint, float or str arrays)")
    values = array.reshape(-1).tolist()
    if kind == "U":
        values = [value.encode("utf-8") for value in values]
    if dtype is not None and dtype is not natural:
        values = coerce_values(name, dtype, values)
    if shape is None:
        resolved = list(array.shape)
    else:
        resolved = check_shape(name, shape, len(values), "--shape")
    return Tensor(name, dtype or natural, resolved, values)
