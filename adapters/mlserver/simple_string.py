"""The benchmark model, "simple-string", as an MLServer runtime.

Same contract as Triton's ``simple_string`` example (and the model ModelMesh's
scale tests used): two BYTES inputs ``INPUT0`` and ``INPUT1`` of 16 decimal
integers (shape ``[16]`` or ``[1, 16]``); ``OUTPUT0`` is their element-wise
sum and ``OUTPUT1`` their difference, as decimal strings in the same shape.

It exists to measure per-request overhead, so ``predict`` stays small: it
reads the element lists MLServer's converters already built (``bytes`` from
gRPC whether the request used ``bytes_contents`` or ``raw_input_contents``,
``str`` from REST JSON) with no codecs, and builds the response directly.
Runs inside the MLServer process only.
"""

from __future__ import annotations

from typing import Any

from mlserver import MLModel
from mlserver.errors import InferenceError
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    RequestInput,
    ResponseOutput,
    TensorData,
)

ELEMENTS = 16
INPUT_NAMES = ("INPUT0", "INPUT1")
OUTPUT_NAMES = ("OUTPUT0", "OUTPUT1")
_SHAPES = ([ELEMENTS], [1, ELEMENTS])


def _tensor_metadata(names: tuple[str, ...]) -> list[MetadataTensor]:
    return [MetadataTensor(name=name, datatype="BYTES", shape=[ELEMENTS]) for name in names]


# Read-only descriptions shared by every loaded copy: with thousands of copies
# in one process, one list each would be memory spent for nothing.
_INPUTS_METADATA = _tensor_metadata(INPUT_NAMES)
_OUTPUTS_METADATA = _tensor_metadata(OUTPUT_NAMES)


class SimpleStringModel(MLModel):
    """Element-wise sum and difference of two BYTES tensors of decimal integers."""

    async def load(self) -> bool:
        # Described here rather than in model-settings.json: one definition for
        # every copy, nothing extra to parse per load.
        self._settings.inputs = _INPUTS_METADATA
        self._settings.outputs = _OUTPUTS_METADATA
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        first, second = _find_inputs(payload.inputs)
        shape = _check_shape(first)
        if list(second.shape) != shape:
            _check_shape(second)
            raise InferenceError(
                f"input 'INPUT1': shape {list(second.shape)} differs from "
                f"input 'INPUT0' shape {shape}"
            )
        a = _integers(first)
        b = _integers(second)
        sums = [b"%d" % (x + y) for x, y in zip(a, b, strict=True)]
        differences = [b"%d" % (x - y) for x, y in zip(a, b, strict=True)]
        # Validated construction on purpose: pydantic v2 validates in Rust, and
        # measured faster here (~5 us) than model_construct (~12 us, Python).
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                ResponseOutput(name=OUTPUT_NAMES[0], shape=shape, datatype="BYTES", data=sums),
                ResponseOutput(
                    name=OUTPUT_NAMES[1], shape=shape, datatype="BYTES", data=differences
                ),
            ],
        )


def _find_inputs(inputs: list[RequestInput]) -> tuple[RequestInput, RequestInput]:
    found: dict[str, RequestInput] = {}
    for tensor in inputs:
        if tensor.name in INPUT_NAMES:
            found[tensor.name] = tensor
    for name in INPUT_NAMES:
        if name not in found:
            raise InferenceError(f"input '{name}': missing (the model takes INPUT0 and INPUT1)")
    return found[INPUT_NAMES[0]], found[INPUT_NAMES[1]]


def _check_shape(tensor: RequestInput) -> list[int]:
    # Requests built by MLServer's gRPC converter skip pydantic validation, so
    # the datatype may be any string; compare its value either way.
    datatype = getattr(tensor.datatype, "value", tensor.datatype)
    if datatype != "BYTES":
        raise InferenceError(f"input '{tensor.name}': expected datatype BYTES, got {datatype}")
    shape = list(tensor.shape)
    if shape not in _SHAPES:
        raise InferenceError(
            f"input '{tensor.name}': expected shape [{ELEMENTS}] or [1, {ELEMENTS}], got {shape}"
        )
    return shape


def _integers(tensor: RequestInput) -> list[int]:
    data: Any = tensor.data
    elements = data.root if isinstance(data, TensorData) else data
    if not isinstance(elements, list) or len(elements) != ELEMENTS:
        count = len(elements) if isinstance(elements, list) else "no list of"
        raise InferenceError(
            f"input '{tensor.name}': shape {list(tensor.shape)} needs {ELEMENTS} elements, "
            f"got {count}"
        )
    try:
        # bytes from gRPC, str from REST JSON; int() parses both. Any other
        # element is left out here, which the length check below catches.
        values = [int(e) for e in elements if isinstance(e, (bytes, str))]
    except ValueError:
        values = []
    if len(values) == ELEMENTS:
        return values
    for index, element in enumerate(elements):
        try:
            if not isinstance(element, (bytes, str)):
                raise TypeError
            int(element)
        except (TypeError, ValueError):
            raise InferenceError(
                f"input '{tensor.name}': element {index} is not a decimal integer: {element!r:.40}"
            ) from None
    raise AssertionError("unreachable: every element parsed")
