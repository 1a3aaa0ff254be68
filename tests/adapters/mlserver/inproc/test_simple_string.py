"""SimpleStringModel.predict on MLServer's own types, and through MLServer's
gRPC converters for both ways a client sends BYTES: ``bytes_contents`` and
``raw_input_contents`` (what tritonclient sends). Runs in a child pytest
(see ../test_inproc.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mlserver.errors import MLServerError
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from adapters.mlserver.simple_string import SimpleStringModel

A = list(range(-3, 13))
B = [7] * 15 + [-100]
SUMS = [str(x + y) for x, y in zip(A, B, strict=True)]
DIFFERENCES = [str(x - y) for x, y in zip(A, B, strict=True)]


@pytest.fixture
async def model() -> SimpleStringModel:
    model = SimpleStringModel(ModelSettings(name="ss", implementation=SimpleStringModel))
    assert await model.load()
    return model


def tensor(name: str, values: list[Any], shape: list[int] | None = None, datatype: str = "BYTES"):
    return RequestInput(name=name, shape=shape or [len(values)], datatype=datatype, data=values)


def request(*inputs: RequestInput) -> InferenceRequest:
    return InferenceRequest(inputs=list(inputs))


def good_inputs(shape: list[int] | None = None) -> list[RequestInput]:
    return [
        tensor("INPUT0", [str(v).encode() for v in A], shape),
        tensor("INPUT1", [str(v).encode() for v in B], shape),
    ]


def outputs(response: InferenceResponse) -> dict[str, tuple[list[int], list[str]]]:
    return {
        out.name: (list(out.shape), [v.decode() for v in out.data])  # type: ignore[union-attr]
        for out in response.outputs
    }


async def test_sum_and_difference(model: SimpleStringModel) -> None:
    response = await model.predict(request(*good_inputs()))
    assert response.model_name == "ss"
    assert outputs(response) == {"OUTPUT0": ([16], SUMS), "OUTPUT1": ([16], DIFFERENCES)}


async def test_shape_1x16_and_str_elements(model: SimpleStringModel) -> None:
    # REST JSON carries BYTES elements as str; inputs may come in any order.
    response = await model.predict(
        request(
            tensor("INPUT1", [str(v) for v in B], [1, 16]),
            tensor("INPUT0", [str(v) for v in A], [1, 16]),
        )
    )
    assert outputs(response) == {"OUTPUT0": ([1, 16], SUMS), "OUTPUT1": ([1, 16], DIFFERENCES)}


def grpc_request(raw: bool) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="ss")
    for name, values in (("INPUT0", A), ("INPUT1", B)):
        elements = [str(v).encode() for v in values]
        message.inputs.add(name=name, datatype="BYTES", shape=[16])
        if raw:
            # As tritonclient's InferInput.set_data_from_numpy does it.
            array = np.array(elements, dtype=np.object_)
            message.raw_input_contents.append(serialize_byte_tensor(array).item())
        else:
            message.inputs[-1].contents.bytes_contents.extend(elements)
    return message


# MLServer 1.7.1's converters call pydantic's deprecated ``construct``; not ours to fix.
@pytest.mark.filterwarnings("ignore:The `construct` method is deprecated")
@pytest.mark.parametrize("raw", [False, True], ids=["bytes_contents", "raw_input_contents"])
async def test_through_mlserver_grpc_converters(model: SimpleStringModel, raw: bool) -> None:
    message = grpc_request(raw)
    response = await model.predict(ModelInferRequestConverter.to_types(message))
    answer = ModelInferResponseConverter.from_types(response, use_raw=raw)
    got = {}
    for index, out in enumerate(answer.outputs):
        if raw:
            values = deserialize_bytes_tensor(answer.raw_output_contents[index])
        else:
            values = out.contents.bytes_contents
        got[out.name] = (list(out.shape), out.datatype, [bytes(v).decode() for v in values])
    assert got == {
        "OUTPUT0": ([16], "BYTES", SUMS),
        "OUTPUT1": ([16], "BYTES", DIFFERENCES),
    }


GOOD0 = [b"1"] * 16

MALFORMED = {
    "missing input": (request(tensor("INPUT0", GOOD0)), "INPUT1", "missing"),
    "wrong datatype": (
        request(tensor("INPUT0", list(range(16)), datatype="INT32"), tensor("INPUT1", GOOD0)),
        "INPUT0",
        "expected datatype BYTES, got INT32",
    ),
    "wrong shape": (
        request(tensor("INPUT0", GOOD0), tensor("INPUT1", GOOD0[:15])),
        "INPUT1",
        "got [15]",
    ),
    "2-d shape": (
        request(tensor("INPUT0", GOOD0, [2, 8]), tensor("INPUT1", GOOD0, [2, 8])),
        "INPUT0",
        "got [2, 8]",
    ),
    "not a decimal integer": (
        request(tensor("INPUT0", GOOD0), tensor("INPUT1", [b"1", b"2", b"3", b"x1", *GOOD0[4:]])),
        "INPUT1",
        "element 3 is not a decimal integer: b'x1'",
    ),
    "element count differs from shape": (
        request(tensor("INPUT0", GOOD0[:15], [16]), tensor("INPUT1", GOOD0)),
        "INPUT0",
        "needs 16 elements, got 15",
    ),
    "shapes differ": (
        request(tensor("INPUT0", GOOD0, [16]), tensor("INPUT1", GOOD0, [1, 16])),
        "INPUT1",
        "differs",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_input_is_a_400_naming_the_input(
    model: SimpleStringModel, case: str
) -> None:
    bad, name, fragment = MALFORMED[case]
    with pytest.raises(MLServerError) as raised:
        await model.predict(bad)
    assert raised.value.status_code == 400  # MLServer maps it to INVALID_ARGUMENT
    assert f"input '{name}'" in str(raised.value)
    assert fragment in str(raised.value)


async def test_metadata_describes_the_tensors(model: SimpleStringModel) -> None:
    metadata = await model.metadata()
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs or []] == [
        ("INPUT0", "BYTES", [16]),
        ("INPUT1", "BYTES", [16]),
    ]
    assert [t.name for t in metadata.outputs or []] == ["OUTPUT0", "OUTPUT1"]
