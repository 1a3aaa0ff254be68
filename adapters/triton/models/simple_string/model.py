"""The benchmark model, "simple-string", as a Triton Python-backend model.

Same contract, same answers and same error messages as the MLServer one
(``adapters/mlserver/simple_string.py``): two BYTES inputs ``INPUT0`` and
``INPUT1`` of 16 decimal integers (shape ``[16]`` or ``[1, 16]``); ``OUTPUT0``
is their element-wise sum and ``OUTPUT1`` their difference, as decimal strings
in the same shape. The config ``layout.py`` writes declares dims ``[16]`` and
``max_batch_size: 0``, so Triton itself refuses other shapes, other datatypes
and missing inputs before ``execute``; the checks here cover what it cannot
(an element that is no integer) and any config written by hand.

A malformed request gets an INVALID_ARG error response, never an exception:
one bad request in a batch must not fail the others.

Arithmetic is on Python ints, as in the MLServer model, so any size of
integer gets the same answer there and here; int64 numpy arrays
(``a.astype(np.int64)``) would overflow silently and, at 16 elements, measured
no faster (about 6.5 us per request either way, numpy 1.26).

Runs inside Triton's Python-backend stub, which provides
``triton_python_backend_utils``; nothing else imports this file. It is not a
package module: ``layout.py`` links it as ``1/model.py`` of each model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

ELEMENTS = 16
INPUT_NAMES = ("INPUT0", "INPUT1")
OUTPUT_NAMES = ("OUTPUT0", "OUTPUT1")
_SHAPES = ((ELEMENTS,), (1, ELEMENTS))


class Malformed(ValueError):
    """A request this model cannot answer; the message names the input."""


class TritonPythonModel:
    """Element-wise sum and difference of two BYTES tensors of decimal integers."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                outputs = _sum_and_difference(request)
            except Malformed as err:
                error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses


def _sum_and_difference(request: Any) -> list[Any]:
    first, second = (_input(request, name) for name in INPUT_NAMES)
    if second.shape != first.shape:
        raise Malformed(
            f"input 'INPUT1': shape {list(second.shape)} differs from "
            f"input 'INPUT0' shape {list(first.shape)}"
        )
    a = _integers(INPUT_NAMES[0], first)
    b = _integers(INPUT_NAMES[1], second)
    sums = np.array([b"%d" % (x + y) for x, y in zip(a, b, strict=True)], dtype=np.object_)
    differences = np.array([b"%d" % (x - y) for x, y in zip(a, b, strict=True)], dtype=np.object_)
    return [
        pb_utils.Tensor(OUTPUT_NAMES[0], sums.reshape(first.shape)),
        pb_utils.Tensor(OUTPUT_NAMES[1], differences.reshape(first.shape)),
    ]


def _input(request: Any, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise Malformed(f"input '{name}': missing (the model takes INPUT0 and INPUT1)")
    array: np.ndarray = tensor.as_numpy()
    if array.dtype != np.object_:
        raise Malformed(f"input '{name}': expected datatype BYTES, got {array.dtype}")
    if array.shape not in _SHAPES:
        raise Malformed(
            f"input '{name}': expected shape [{ELEMENTS}] or [1, {ELEMENTS}], "
            f"got {list(array.shape)}"
        )
    return array


def _integers(name: str, array: np.ndarray) -> list[int]:
    elements = array.reshape(-1).tolist()
    try:
        # int() parses bytes of decimal digits, as MLServer's model does.
        return [int(e) for e in elements]
    except (TypeError, ValueError):
        pass
    for index, element in enumerate(elements):
        try:
            int(element)
        except (TypeError, ValueError):
            raise Malformed(
                f"input '{name}': element {index} is not a decimal integer: {element!r:.40}"
            ) from None
    raise AssertionError("unreachable: every element parsed")
