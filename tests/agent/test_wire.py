from __future__ import annotations

import pytest
import tritonclient.grpc.service_pb2 as triton_pb

from agent import wire
from agent.errors import InvalidRequest


def _request(name: str, **kw: object) -> bytes:
    req = triton_pb.ModelInferRequest(model_name=name, **kw)  # type: ignore[arg-type]
    req.raw_input_contents.append(b"\x01" * 300)
    return req.SerializeToString()


def test_reads_name_in_first_field() -> None:
    assert wire.read_model_name(_request("simple-string-7")) == "simple-string-7"


def test_reads_long_name_and_name_after_other_fields() -> None:
    long_name = "m" * 200  # length needs a two-byte varint
    assert wire.read_model_name(_request(long_name)) == long_name
    reordered = triton_pb.ModelInferRequest(id="x").SerializeToString() + _request("late")
    assert wire.read_model_name(reordered) == "late"


def test_missing_name_is_empty() -> None:
    assert wire.read_model_name(triton_pb.ModelInferRequest(id="x").SerializeToString()) == ""
    assert wire.read_model_name(b"") == ""


def test_replace_keeps_everything_else() -> None:
    original = triton_pb.ModelInferRequest(model_name="alias", id="req-1", model_version="2")
    original.raw_input_contents.append(b"payload")
    rewritten = wire.replace_model_name(original.SerializeToString(), "concrete-model")
    parsed = triton_pb.ModelInferRequest.FromString(rewritten)
    assert parsed.model_name == "concrete-model"
    assert (parsed.id, parsed.model_version, list(parsed.raw_input_contents)) == (
        "req-1", "2", [b"payload"]
    )
    without = triton_pb.ModelInferRequest(id="y").SerializeToString()
    assert triton_pb.ModelInferRequest.FromString(
        wire.replace_model_name(without, "m")
    ).model_name == "m"


@pytest.mark.parametrize("garbage", [b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0f"])
def test_malformed_is_invalid_request(garbage: bytes) -> None:
    with pytest.raises(InvalidRequest):
        wire.read_model_name(b"\x1a\x01x" + garbage)
