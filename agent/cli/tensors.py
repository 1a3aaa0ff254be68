"""KServe v2 tensors for ``meshlet infer``: typed values in, requests out,
responses back as text lines or KServe v2 JSON.

A ``Tensor`` is a name, a datatype, a concrete shape and its values flat in
row-major order (Python ints, floats, bools or bytes). Values arrive as text
(``--input``) or as JSON / numpy values (``--json``, ``--npy``); each is
checked against its datatype, naming the input when it does not fit. Outputs
are read from ``contents`` or ``raw_output_contents`` (BYTES raw: a 4-byte
little-endian length before each element; numbers: little-endian packed).
Where the inputs come from is ``agent.cli.infer_inputs``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.cli.errors import CliError, UsageError
from agent.proto import grpc_service_pb2 as pb

# A request or tensor parameter as KServe v2 JSON carries it.
Parameter = bool | int | float | str


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError("expected true, false, 1 or 0")


def _parse_int(text: str) -> int:
    return int(text.strip())


def _parse_float(text: str) -> float:
    return float(text.strip())


def _parse_bytes(text: str) -> bytes:
    return text.encode("utf-8")


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("expected true or false")


def _coerce_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError("expected an integer")


def _coerce_float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError("expected a number")


def _coerce_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise ValueError("expected a string")


@dataclass(frozen=True)
class Datatype:
    """How one KServe datatype travels: its ``contents`` field and struct code,
    and how a value of it is read from text and from JSON / numpy values."""

    name: str
    field: str  # InferTensorContents field; "" when only raw contents can carry it
    code: str  # struct format character; "" for BYTES
    parse: Callable[[str], Any]
    coerce: Callable[[Any], Any]


DATATYPES = {
    d.name: d
    for d in (
        Datatype("BOOL", "bool_contents", "?", _parse_bool, _coerce_bool),
        Datatype("INT8", "int_contents", "b", _parse_int, _coerce_int),
        Datatype("INT16", "int_contents", "h", _parse_int, _coerce_int),
        Datatype("INT32", "int_contents", "i", _parse_int, _coerce_int),
        Datatype("INT64", "int64_contents", "q", _parse_int, _coerce_int),
        Datatype("UINT8", "uint_contents", "B", _parse_int, _coerce_int),
        Datatype("UINT16", "uint_contents", "H", _parse_int, _coerce_int),
        Datatype("UINT32", "uint_contents", "I", _parse_int, _coerce_int),
        Datatype("UINT64", "uint64_contents", "Q", _parse_int, _coerce_int),
        Datatype("FP16", "", "e", _parse_float, _coerce_float),
        Datatype("FP32", "fp32_contents", "f", _parse_float, _coerce_float),
        Datatype("FP64", "fp64_contents", "d", _parse_float, _coerce_float),
        Datatype("BYTES", "bytes_contents", "", _parse_bytes, _coerce_bytes),
    )
}


def datatype(name: str, what: str) -> Datatype:
    try:
        return DATATYPES[name]
    except KeyError:
        raise CliError(f"{what} has datatype {name!r}, which meshlet infer cannot handle") from None


@dataclass
class Tensor:
    """One tensor: values flat in row-major order, as many as the shape holds."""

    name: str
    datatype: Datatype
    shape: list[int]
    values: list[Any]
    parameters: dict[str, Parameter] = field(default_factory=dict)


# --- values -----------------------------------------------------------------


def parse_values(name: str, dtype: Datatype, texts: Sequence[str]) -> list[Any]:
    """Each text as a value of ``dtype``; one that does not fit names the input."""
    return _convert(name, dtype, texts, dtype.parse)


def coerce_values(name: str, dtype: Datatype, items: Iterable[Any]) -> list[Any]:
    """Each JSON or numpy value as a value of ``dtype`` (an INT takes 2 or 2.0,
    not 2.5 or true; BYTES takes text); one that does not fit names the input."""
    return _convert(name, dtype, items, dtype.coerce)


def _convert(name: str, dtype: Datatype, items: Iterable[Any],
             convert: Callable[[Any], Any]) -> list[Any]:
    values = []
    for index, item in enumerate(items):
        try:
            value = convert(item)
            if dtype.code:
                struct.pack("<" + dtype.code, value)  # range check: INT8 200 fails here
        except (ValueError, OverflowError, struct.error) as err:
            raise UsageError(
                f"input {name}: value {index} {item!r} is not a valid {dtype.name} ({err})"
            ) from None
        values.append(value)
    return values


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- shapes -----------------------------------------------------------------


def format_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def check_shape(name: str, shape: Sequence[int], count: int, what: str) -> list[int]:
    """``shape`` itself when it holds ``count`` values, else a usage error."""
    if math.prod(shape) != count:
        raise UsageError(f"input {name}: {count} values do not fit {what} {format_shape(shape)}")
    return list(shape)


def resolve_shape(name: str, declared: Sequence[int], count: int, rows: int = 1) -> list[int]:
    """The model's declared shape with each -1 made concrete for ``count`` values
    given as ``rows`` equal rows.

    A leading -1 of a shape with more dimensions is the batch: the number of
    rows. Of the other -1 dimensions, the last takes what is left and any
    before it are one. More than one row into a concrete leading dimension
    must match it.
    """
    if not declared:
        return [count]
    shape = list(declared)
    if len(shape) > 1 and shape[0] < 0:
        shape[0] = rows
    elif len(shape) > 1 and rows > 1 and shape[0] != rows:
        raise UsageError(
            f"input {name}: {rows} rows do not fit the model's shape {format_shape(declared)}"
        )
    free = [i for i, dim in enumerate(shape) if dim < 0]
    for i in free[:-1]:
        shape[i] = 1
    known = math.prod(dim for i, dim in enumerate(shape) if not free or i != free[-1])
    if free and known > 0 and count % known == 0:
        shape[free[-1]] = count // known
        return shape
    if not free and known == count:
        return shape
    raise UsageError(
        f"input {name}: {count} values do not fit the model's shape {format_shape(declared)}"
    )


# --- requests ---------------------------------------------------------------


def pack_raw(dtype: Datatype, values: Sequence[Any]) -> bytes:
    if not dtype.code:
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    return struct.pack(f"<{len(values)}{dtype.code}", *values)


def _set_parameters(target: Any, parameters: Mapping[str, Parameter]) -> None:
    """Into a protobuf ``map<string, InferParameter>``; bool before int, as
    ``True`` is an int to Python."""
    for key, value in parameters.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = value


def build_request(
    model_name: str,
    tensors: Sequence[Tensor],
    outputs: Sequence[str] = (),
    request_id: str = "",
    parameters: Mapping[str, Parameter] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying ``tensors`` as they are.

    Values go in the typed ``contents`` fields; only when some input has no such
    field (FP16) do all inputs go as raw bytes, since the two cannot be mixed.
    """
    request = pb.ModelInferRequest(model_name=model_name, id=request_id)
    _set_parameters(request.parameters, parameters or {})
    raw = any(not tensor.datatype.field for tensor in tensors)
    for tensor in tensors:
        dtype = tensor.datatype
        message = request.inputs.add(name=tensor.name, datatype=dtype.name, shape=tensor.shape)
        _set_parameters(message.parameters, tensor.parameters)
        if raw:
            request.raw_input_contents.append(pack_raw(dtype, tensor.values))
        else:
            getattr(message.contents, dtype.field).extend(tensor.values)
    for name in outputs:
        request.outputs.add(name=name)
    return request


# --- responses --------------------------------------------------------------


def unpack_raw(dtype: Datatype, raw: bytes, what: str) -> list[Any]:
    if dtype.code:
        size = struct.calcsize("<" + dtype.code)
        if len(raw) % size:
            raise CliError(f"{what}: {len(raw)} raw bytes are not a whole number of {dtype.name}")
        return list(struct.unpack(f"<{len(raw) // size}{dtype.code}", raw))
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise CliError(f"{what}: raw BYTES end inside a length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise CliError(f"{what}: raw BYTES element runs past the end")
        values.append(raw[offset : offset + length])
        offset += length
    return values


def read_outputs(response: pb.ModelInferResponse, names: Collection[str] = ()) -> list[Tensor]:
    """The output tensors (of those in ``names``, if any), from typed or raw
    contents. Filtered here too: not every runtime honours requested outputs."""
    tensors = []
    for index, output in enumerate(response.outputs):
        if names and output.name not in names:
            continue
        what = f"output {output.name}"
        dtype = datatype(output.datatype, what)
        if index < len(response.raw_output_contents):
            values = unpack_raw(dtype, response.raw_output_contents[index], what)
        elif dtype.field:
            values = list(getattr(output.contents, dtype.field))
        else:
            values = []
        tensors.append(Tensor(output.name, dtype, list(output.shape), values))
    return tensors


def _shortest(value: float, code: str) -> str:
    """The shortest decimal that reads back as the same float of that width."""
    if not math.isfinite(value):
        return str(value)
    for digits in range(1, 18):
        text = f"{value:.{digits}g}"
        if struct.unpack("<" + code, struct.pack("<" + code, float(text)))[0] == value:
            return text
    return repr(value)


def format_value(dtype: Datatype, value: Any) -> str:
    if dtype.name == "BYTES":
        try:
            return str(value.decode("utf-8"))
        except UnicodeDecodeError:
            return repr(value)
    if dtype.name == "BOOL":
        return "true" if value else "false"
    if dtype.code in ("e", "f"):
        return _shortest(value, dtype.code)
    return repr(value) if dtype.code == "d" else str(value)


def format_output(name: str, dtype: Datatype, shape: Sequence[int], values: Sequence[Any]) -> str:
    """``OUTPUT0 (BYTES, shape [1, 16]): 2, 4, ...``"""
    return f"{name} ({dtype.name}, shape {format_shape(shape)}): " + ", ".join(
        format_value(dtype, v) for v in values
    )


def format_response(response: pb.ModelInferResponse, names: Collection[str] = ()) -> list[str]:
    """One line per output tensor (of those in ``names``, if any)."""
    return [
        format_output(tensor.name, tensor.datatype, tensor.shape, tensor.values)
        for tensor in read_outputs(response, names)
    ]


def json_value(dtype: Datatype, value: Any) -> Any:
    """A value as KServe v2 JSON carries it: BYTES as text (bytes that are not
    UTF-8 as backslash escapes), FP16/FP32 as their shortest decimal."""
    if dtype.name == "BYTES":
        return value.decode("utf-8", "backslashreplace")
    if dtype.code in ("e", "f") and math.isfinite(value):
        return float(_shortest(value, dtype.code))
    return value


def response_json(
    response: pb.ModelInferResponse, names: Collection[str] = ()
) -> dict[str, Any]:
    """The response as a KServe v2 JSON inference response body, data flat."""
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": [
            {
                "name": tensor.name,
                "datatype": tensor.datatype.name,
                "shape": tensor.shape,
                "data": [json_value(tensor.datatype, v) for v in tensor.values],
            }
            for tensor in read_outputs(response, names)
        ],
    }
