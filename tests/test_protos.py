"""Checks on agent/proto: the generated modules are fresh, and the messages stay
wire-compatible with Triton's KServe v2 protocol and KServe ModelMesh's API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from agent.proto import grpc_service_pb2, grpc_service_pb2_grpc, model_mesh_pb2, model_mesh_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "agent" / "proto"
GEN_SCRIPT = ROOT / "scripts" / "gen-protos"
GENERATED = [
    f"{name}{suffix}"
    for name in ("grpc_service", "model_mesh", "meshlet")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
]


# ---------------------------------------------------------------------------
# Generated code is up to date
# ---------------------------------------------------------------------------


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    env = dict(os.environ)
    # Generate with the interpreter running the tests (it has grpcio-tools).
    env.setdefault("MESHLET_VENV", sys.prefix)
    result = subprocess.run(
        [str(GEN_SCRIPT), "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"scripts/gen-protos failed:\n{result.stderr}"
    stale = []
    for name in GENERATED:
        fresh = (tmp_path / name).read_bytes()
        checked_in = PROTO_DIR / name
        if not checked_in.exists() or checked_in.read_bytes() != fresh:
            stale.append(name)
    assert not stale, (
        f"agent/proto/{{{', '.join(stale)}}} out of date with the .proto files; "
        "run scripts/gen-protos and commit the result"
    )


def test_generated_modules_import_as_a_package() -> None:
    # The generator rewrites `import X_pb2` to `from . import X_pb2`.
    assert grpc_service_pb2_grpc.grpc__service__pb2 is grpc_service_pb2
    assert model_mesh_pb2_grpc.model__mesh__pb2 is model_mesh_pb2


# ---------------------------------------------------------------------------
# KServe v2 / Triton compatibility
# ---------------------------------------------------------------------------

# tritonclient's service_pb2 declares the same `inference.*` symbols as ours, so
# the two cannot share the default descriptor pool (importing both in one
# process fails with "duplicate symbol"). Its descriptors are therefore dumped
# by a child process and rebuilt here in a private pool.
_DUMP_TRITON = """
import sys
from google.protobuf import descriptor_pb2
import tritonclient.grpc.service_pb2 as service_pb2

out = descriptor_pb2.FileDescriptorSet()
seen = set()

def add(fd):
    if fd.name in seen:
        return
    seen.add(fd.name)
    for dep in fd.dependencies:
        add(dep)
    fd.CopyToProto(out.file.add())

add(service_pb2.DESCRIPTOR)
sys.stdout.buffer.write(out.SerializeToString())
"""

OUR_INFERENCE_RPCS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
}


@pytest.fixture(scope="module")
def triton_pool() -> descriptor_pool.DescriptorPool:
    result = subprocess.run(
        [sys.executable, "-c", _DUMP_TRITON],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    files = descriptor_pb2.FileDescriptorSet.FromString(result.stdout)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:  # dependencies come first
        pool.AddSerializedFile(file_proto.SerializeToString())
    return pool


def _type_name(field: FieldDescriptor) -> str | None:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return None


def _oneof_name(field: FieldDescriptor) -> str | None:
    return field.containing_oneof.name if field.containing_oneof is not None else None


def _compare_enum(ours: EnumDescriptor, theirs: EnumDescriptor, problems: list[str]) -> None:
    for value in ours.values:
        other = theirs.values_by_name.get(value.name)
        if other is None:
            problems.append(f"{ours.full_name}.{value.name}: not in Triton's enum")
        elif value.number != other.number:
            problems.append(
                f"{ours.full_name}.{value.name}: number {value.number} != {other.number}"
            )


def _compare_message(ours: Descriptor, theirs: Descriptor, problems: list[str]) -> None:
    if ours.GetOptions().map_entry != theirs.GetOptions().map_entry:
        problems.append(f"{ours.full_name}: map entry in one but not the other")
    for field in ours.fields:
        where = field.full_name
        other = theirs.fields_by_name.get(field.name)
        if other is None:
            problems.append(f"{where}: no such field in Triton's {theirs.full_name}")
            continue
        checks = {
            "number": (field.number, other.number),
            "type": (field.type, other.type),
            "repeated": (field.is_repeated, other.is_repeated),
            "type name": (_type_name(field), _type_name(other)),
            "oneof": (_oneof_name(field), _oneof_name(other)),
        }
        for what, (mine, triton) in checks.items():
            if mine != triton:
                problems.append(f"{where}: {what} {mine!r} != Triton's {triton!r}")
    for nested in ours.nested_types:
        other_nested = theirs.nested_types_by_name.get(nested.name)
        if other_nested is None:
            problems.append(f"{nested.full_name}: no such nested message in Triton")
        else:
            _compare_message(nested, other_nested, problems)
    for enum in ours.enum_types:
        other_enum = theirs.enum_types_by_name.get(enum.name)
        if other_enum is None:
            problems.append(f"{enum.full_name}: no such nested enum in Triton")
        else:
            _compare_enum(enum, other_enum, problems)


def test_inference_package_name() -> None:
    assert grpc_service_pb2.DESCRIPTOR.package == "inference"
    assert set(grpc_service_pb2.DESCRIPTOR.services_by_name) == {"GRPCInferenceService"}


@pytest.mark.parametrize("name", sorted(grpc_service_pb2.DESCRIPTOR.message_types_by_name))
def test_inference_message_matches_triton(
    name: str, triton_pool: descriptor_pool.DescriptorPool
) -> None:
    ours = grpc_service_pb2.DESCRIPTOR.message_types_by_name[name]
    theirs = triton_pool.FindMessageTypeByName(ours.full_name)
    problems: list[str] = []
    _compare_message(ours, theirs, problems)
    assert not problems, "\n".join(problems)


def test_inference_enums_match_triton(triton_pool: descriptor_pool.DescriptorPool) -> None:
    problems: list[str] = []
    for enum in grpc_service_pb2.DESCRIPTOR.enum_types_by_name.values():
        _compare_enum(enum, triton_pool.FindEnumTypeByName(enum.full_name), problems)
    assert not problems, "\n".join(problems)


def test_inference_service_matches_triton(triton_pool: descriptor_pool.DescriptorPool) -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pool.FindServiceByName("inference.GRPCInferenceService")
    assert {m.name for m in ours.methods} == OUR_INFERENCE_RPCS
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name, method.name
        assert method.output_type.full_name == other.output_type.full_name, method.name
        assert method.client_streaming == other.client_streaming, method.name
        assert method.server_streaming == other.server_streaming, method.name


def test_infer_request_bytes_decode_with_triton(
    triton_pool: descriptor_pool.DescriptorPool,
) -> None:
    request = grpc_service_pb2.ModelInferRequest(model_name="m", id="42")
    request.parameters["priority"].int64_param = 3
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, 2.5])
    request.outputs.add(name="y").parameters["binary_data"].bool_param = True
    request.raw_input_contents.append(b"\x00\x01")

    triton_cls = message_factory.GetMessageClass(
        triton_pool.FindMessageTypeByName("inference.ModelInferRequest")
    )
    # Built at run time from a private pool, so there are no stubs for it.
    decoded: Any = triton_cls.FromString(request.SerializeToString())
    assert decoded.model_name == "m"
    assert decoded.id == "42"
    assert decoded.parameters["priority"].int64_param == 3
    assert decoded.inputs[0].shape == [1, 2]
    assert list(decoded.inputs[0].contents.fp32_contents) == [1.5, 2.5]
    assert decoded.outputs[0].parameters["binary_data"].bool_param is True
    assert decoded.raw_input_contents == [b"\x00\x01"]
    assert decoded.SerializeToString(deterministic=True) == request.SerializeToString(
        deterministic=True
    )


# ---------------------------------------------------------------------------
# KServe ModelMesh compatibility
# ---------------------------------------------------------------------------

# message -> field -> (number, type). Types are scalar names, or the full name of
# a message/enum; "repeated " prefixes repeated fields.
MODEL_MESH_FIELDS: dict[str, dict[str, tuple[int, str]]] = {
    "RegisterModelRequest": {
        "modelId": (1, "string"),
        "modelInfo": (2, "mmesh.ModelInfo"),
        "loadNow": (3, "bool"),
        "sync": (4, "bool"),
        "lastUsedTime": (5, "uint64"),
    },
    "ModelInfo": {
        "type": (1, "string"),
        "path": (2, "string"),
        "key": (3, "string"),
    },
    "ModelStatusInfo": {
        "status": (1, "mmesh.ModelStatusInfo.ModelStatus"),
        "errors": (2, "repeated string"),
        "modelCopyInfos": (3, "repeated mmesh.ModelStatusInfo.ModelCopyInfo"),
    },
    "ModelStatusInfo.ModelCopyInfo": {
        "location": (1, "string"),
        "copyStatus": (2, "mmesh.ModelStatusInfo.ModelStatus"),
        "time": (3, "uint64"),
    },
    "UnregisterModelRequest": {"modelId": (1, "string")},
    "UnregisterModelResponse": {},
    "GetStatusRequest": {"modelId": (1, "string")},
    "EnsureLoadedRequest": {
        "modelId": (1, "string"),
        "lastUsedTime": (2, "uint64"),
        "sync": (4, "bool"),
    },
    "VModelStatusInfo": {
        "status": (1, "mmesh.VModelStatusInfo.VModelStatus"),
        "activeModelId": (2, "string"),
        "targetModelId": (3, "string"),
        "activeModelStatus": (4, "mmesh.ModelStatusInfo"),
        "targetModelStatus": (5, "mmesh.ModelStatusInfo"),
        "owner": (6, "string"),
    },
    "DeleteVModelRequest": {
        "vModelId": (1, "string"),
        "owner": (2, "string"),
    },
    "DeleteVModelResponse": {},
    "SetVModelRequest": {
        "vModelId": (1, "string"),
        "owner": (10, "string"),
        "targetModelId": (2, "string"),
        "updateOnly": (3, "bool"),
        "modelInfo": (4, "mmesh.ModelInfo"),
        "autoDeleteTargetModel": (5, "bool"),
        "loadNow": (6, "bool"),
        "force": (7, "bool"),
        "sync": (8, "bool"),
        "expectedTargetModelId": (9, "string"),
    },
    "GetVModelStatusRequest": {
        "vModelId": (1, "string"),
        "owner": (2, "string"),
    },
}

MODEL_MESH_ENUMS: dict[str, dict[str, int]] = {
    "ModelStatusInfo.ModelStatus": {
        "NOT_FOUND": 0,
        "NOT_LOADED": 1,
        "LOADING": 2,
        "LOADED": 3,
        "LOADING_FAILED": 4,
        "UNKNOWN": 5,
    },
    "VModelStatusInfo.VModelStatus": {
        "NOT_FOUND": 0,
        "DEFINED": 1,
        "TRANSITIONING": 2,
        "TRANSITION_FAILED": 3,
        "UNKNOWN": 5,
    },
}

MODEL_MESH_RPCS: dict[str, tuple[str, str]] = {
    "registerModel": ("RegisterModelRequest", "ModelStatusInfo"),
    "unregisterModel": ("UnregisterModelRequest", "UnregisterModelResponse"),
    "getModelStatus": ("GetStatusRequest", "ModelStatusInfo"),
    "ensureLoaded": ("EnsureLoadedRequest", "ModelStatusInfo"),
    "setVModel": ("SetVModelRequest", "VModelStatusInfo"),
    "deleteVModel": ("DeleteVModelRequest", "DeleteVModelResponse"),
    "getVModelStatus": ("GetVModelStatusRequest", "VModelStatusInfo"),
}

_SCALAR_NAMES = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def _describe(field: FieldDescriptor) -> str:
    base = _type_name(field) or _SCALAR_NAMES.get(field.type, f"type#{field.type}")
    return f"repeated {base}" if field.is_repeated else base


def _mesh_message(path: str) -> Descriptor:
    return model_mesh_pb2.DESCRIPTOR.pool.FindMessageTypeByName(f"mmesh.{path}")


def test_model_mesh_package_name() -> None:
    assert model_mesh_pb2.DESCRIPTOR.package == "mmesh"


@pytest.mark.parametrize("path", sorted(MODEL_MESH_FIELDS))
def test_model_mesh_fields(path: str) -> None:
    message = _mesh_message(path)
    actual = {f.name: (f.number, _describe(f)) for f in message.fields}
    assert actual == MODEL_MESH_FIELDS[path]
    assert all(f.containing_oneof is None for f in message.fields)


def test_model_mesh_messages_all_covered() -> None:
    def walk(message: Descriptor, prefix: str) -> list[str]:
        path = f"{prefix}{message.name}"
        found = [path]
        for nested in message.nested_types:
            found += walk(nested, f"{path}.")
        return found

    declared = []
    for message in model_mesh_pb2.DESCRIPTOR.message_types_by_name.values():
        declared += walk(message, "")
    assert sorted(declared) == sorted(MODEL_MESH_FIELDS)


@pytest.mark.parametrize("path", sorted(MODEL_MESH_ENUMS))
def test_model_mesh_enums(path: str) -> None:
    enum = model_mesh_pb2.DESCRIPTOR.pool.FindEnumTypeByName(f"mmesh.{path}")
    assert {v.name: v.number for v in enum.values} == MODEL_MESH_ENUMS[path]


def test_ensure_loaded_reserves_field_3() -> None:
    proto = descriptor_pb2.DescriptorProto()
    _mesh_message("EnsureLoadedRequest").CopyToProto(proto)
    assert [(r.start, r.end) for r in proto.reserved_range] == [(3, 4)]  # end is exclusive


def test_model_mesh_service() -> None:
    service = model_mesh_pb2.DESCRIPTOR.services_by_name["ModelMesh"]
    actual = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    expected = {
        name: (f"mmesh.{request}", f"mmesh.{response}")
        for name, (request, response) in MODEL_MESH_RPCS.items()
    }
    assert actual == expected
    assert not any(m.client_streaming or m.server_streaming for m in service.methods)


def test_register_model_request_round_trip() -> None:
    request = model_mesh_pb2.RegisterModelRequest(
        modelId="iris-1",
        modelInfo=model_mesh_pb2.ModelInfo(type="sklearn", path="s3://models/iris", key="k"),
        loadNow=True,
        sync=True,
        lastUsedTime=1_700_000_000_000,
    )
    encoded = request.SerializeToString()
    decoded = model_mesh_pb2.RegisterModelRequest.FromString(encoded)
    assert decoded == request
    assert decoded.modelInfo.path == "s3://models/iris"
    assert decoded.lastUsedTime == 1_700_000_000_000


def test_register_model_request_wire_bytes() -> None:
    # Hand-encoded: field 1 (modelId, length-delimited) then field 3 (loadNow, varint).
    request = model_mesh_pb2.RegisterModelRequest(modelId="m", loadNow=True)
    assert request.SerializeToString() == b"\x0a\x01m\x18\x01"
    # SetVModelRequest.owner is field 10: tag (10 << 3) | 2 = 0x52.
    vmodel = model_mesh_pb2.SetVModelRequest(owner="o")
    assert vmodel.SerializeToString() == b"\x52\x01o"
