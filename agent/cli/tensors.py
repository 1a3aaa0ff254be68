"""KServe v2 tensors for ``meshlet infer``: text values in, text values out.

Inputs arrive as ``NAME=v1,v2,...`` and are typed by the model's metadata;
outputs are read from ``contents`` or ``raw_output_contents`` (BYTES raw: a
4-byte little-endian length before each element; numbers: little-endian
packed) and printed one tensor a line.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from agent.cli.errors import CliError, UsageError
from agent.proto import grpc_service_pb2 as pb


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


@dataclass(frozen=True)
class Datatype:
    """How one KServe datatype travels: its ``contents`` field and struct code."""

    name: str
    field: str  # InferTensorContents field; "" when only raw contents can carry it
    code: str  # struct format character; "" for BYTES
    parse: Callable[[str], Any]


DATATYPES = {
    d.name: d
    for d in (
        Datatype("BOOL", "bool_contents", "?", _parse_bool),
        Datatype("INT8", "int_contents", "b", _parse_int),
        Datatype("INT16", "int_contents", "h", _parse_int),
        Datatype("INT32", "int_contents", "i", _parse_int),
        Datatype("INT64", "int64_contents", "q", _parse_int),
        Datatype("UINT8", "uint_contents", "B", _parse_int),
        Datatype("UINT16", "uint_contents", "H", _parse_int),
        Datatype("UINT32", "uint_contents", "I", _parse_int),
        Datatype("UINT64", "uint64_contents", "Q", _parse_int),
        Datatype("FP16", "", "e", _parse_float),
        Datatype("FP32", "fp32_contents", "f", _parse_float),
        Datatype("FP64", "fp64_contents", "d", _parse_float),
        Datatype("BYTES", "bytes_contents", "", _parse_bytes),
    )
}


def datatype(name: str, what: str) -> Datatype:
    try:
        return DATATYPES[name]
    except KeyError:
        raise CliError(f"{what} has datatype {name!r}, which meshlet infer cannot handle") from None


# --- inputs -----------------------------------------------------------------


def parse_input_arg(text: str) -> tuple[str, list[str]]:
    """``"INPUT0=1,2,3"`` -> ``("INPUT0", ["1", "2", "3"])``."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"{text!r} is not NAME=v1,v2,...")
    return name.strip(), values.split(",")


def parse_values(name: str, dtype: Datatype, texts: Sequence[str]) -> list[Any]:
    """Each text as a value of ``dtype``; one that does not fit names the input."""
    values = []
    for index, text in enumerate(texts):
        try:
            value = dtype.parse(text)
            if dtype.code:
                struct.pack("<" + dtype.code, value)  # range check: INT8 200 fails here
        except (ValueError, OverflowError, struct.error) as err:
            raise UsageError(
                f"input {name}: value {index} {text!r} is not a valid {dtype.name} ({err})"
            ) from None
        values.append(value)
    return values


def resolve_shape(name: str, declared: Sequence[int], count: int) -> list[int]:
    """The model's declared shape with each -1 made concrete for ``count`` values.

    A leading -1 of a shape with more dimensions is the batch: one. Of the other
    -1 dimensions, the last takes what is left and any before it are one.
    """
    if not declared:
        return [count]
    shape = list(declared)
    if len(shape) > 1 and shape[0] < 0:
        shape[0] = 1
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
        f"input {name}: {count} values do not fit the model's shape {list(declared)}"
    )


def pack_raw(dtype: Datatype, values: Sequence[Any]) -> bytes:
    if not dtype.code:
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    return struct.pack(f"<{len(values)}{dtype.code}", *values)


def build_request(
    model_name: str,
    metadata: pb.ModelMetadataResponse,
    inputs: Sequence[tuple[str, Sequence[str]]],
    outputs: Sequence[str] = (),
) -> pb.ModelInferRequest:
    """A ModelInferRequest typed and shaped by the model's metadata.

    Values go in the typed ``contents`` fields; only when some input has no such
    field (FP16) do all inputs go as raw bytes, since the two cannot be mixed.
    """
    declared = {tensor.name: tensor for tensor in metadata.inputs}
    seen: set[str] = set()
    typed = []
    for name, texts in inputs:
        if name in seen:
            raise UsageError(f"input {name} is given twice")
        seen.add(name)
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise UsageError(f"model {model_name!r} has no input {name!r} (inputs: {known})")
        meta = declared[name]
        dtype = datatype(meta.datatype, f"input {name}")
        values = parse_values(name, dtype, texts)
        typed.append((name, dtype, resolve_shape(name, meta.shape, len(values)), values))

    request = pb.ModelInferRequest(model_name=model_name)
    raw = any(not dtype.field for _, dtype, _, _ in typed)
    for name, dtype, shape, values in typed:
        tensor = request.inputs.add(name=name, datatype=dtype.name, shape=shape)
        if raw:
            request.raw_input_contents.append(pack_raw(dtype, values))
        else:
            getattr(tensor.contents, dtype.field).extend(values)
    for name in outputs:
        request.outputs.add(name=name)
    return request


# --- outputs ----------------------------------------------------------------


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
    dims = ", ".join(str(dim) for dim in shape)
    return f"{name} ({dtype.name}, shape [{dims}]): " + ", ".join(
        format_value(dtype, v) for v in values
    )


def format_response(response: pb.ModelInferResponse, names: Collection[str] = ()) -> list[str]:
    """One line per output tensor (of those in ``names``, if any), from typed or
    raw contents. Filtered here too: not every runtime honours requested outputs."""
    lines = []
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
        lines.append(format_output(output.name, dtype, output.shape, values))
    return lines
