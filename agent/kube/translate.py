"""Resource objects -> registry entries: one pure function per kind.

Each takes the object as the API server sends it (a dict) and a storage-key
lookup, and returns an ``Entry`` (the vmodel the resource is, and the concrete
model it points at), an ``Invalid`` naming the field that is wrong, or None
when the object is not meshlet's to serve (an InferenceService not in
ModelMesh mode). Nothing here does I/O or raises on bad input.

As in ModelMesh-serving, the vmodel is named after the resource
(``metadata.name``: what clients put in ``model_name`` or ``mm-vmodel-id``) and
the concrete model id is derived from the spec: ``<name>__<hash>`` for a
``Model``, ``<name>__ksp-<hash>`` for a ``Predictor`` and ``<name>__isvc-<hash>``
for an ``InferenceService`` (ModelMesh's own forms), where ``<hash>`` is 10 hex
digits of the SHA-1 of the registry spec. A changed spec is a new model.

Storage given as a key and a bucket-relative path becomes a spec exactly as a
ModelMesh ``ModelInfo`` would (``agent.api.mmesh.spec_from_model_info``: a
``{"storage_key": K, "bucket": B}`` key with a relative path makes
``s3://B/path``); the bucket is ``parameters.bucket`` if given, else the
``bucket`` of the key's file in the storage-config directory.

Model formats map to meshlet's runtimes by what each serves
(``adapters.base.runtimes_serving``): sklearn, xgboost, lightgbm, mlflow ->
mlserver; onnx, pytorch, tensorflow, tensorrt, triton, python -> triton; a
format both serve (simple-string) goes to mlserver unless a runtime is named.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, NoReturn

from adapters.base import runtimes_serving, served_types
from agent.api.mmesh import spec_from_model_info
from agent.errors import MeshletError
from agent.proto import model_mesh_pb2 as mm
from agent.registry.spec import MAX_ID_BYTES, RUNTIMES, ModelSpec, validate_model_id, validate_uri
from agent.registry.store import model_value

Obj = Mapping[str, Any]
Buckets = Callable[[str], "str | None"]
"""``buckets(storage_key)``: the bucket that key's storage-config entry names, or None."""

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
SECRET_KEY = "serving.kserve.io/secretKey"
DEFAULT_STORAGE_KEY = "default"  # ModelMesh's key when none is named

# InferenceService predictors written before ``model.modelFormat``: the framework
# is the key (``spec.predictor.sklearn.storageUri``).
LEGACY_FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "mlflow", "onnx", "pytorch",
                     "tensorflow", "triton")


@dataclass(frozen=True, slots=True)
class Entry:
    """What a valid resource asks of the registry."""

    vmodel_id: str  # the resource's name
    spec: ModelSpec  # the concrete model, its id derived from the spec


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a resource cannot be served, naming the field."""

    field: str  # "spec.storage.uri"
    message: str
    reason: str = "InvalidSpec"  # or NoSupportingRuntime, RuntimeNotRecognized

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


Result = Entry | Invalid | None
Translator = Callable[[Obj, Buckets], Result]


class _Bad(Exception):
    def __init__(self, field: str, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(message)
        self.invalid = Invalid(field, message, reason)


def _bad(field: str, message: str, reason: str = "InvalidSpec") -> NoReturn:
    raise _Bad(field, message, reason)


# --- the three kinds ------------------------------------------------------------


def model_entry(obj: Obj, buckets: Buckets) -> Result:
    """meshlet's ``Model`` (``models.meshlet.io/v1alpha1``)."""
    try:
        name = _name(obj)
        spec = _mapping(obj.get("spec"), "spec", required=True)
        fmt_field = _mapping(spec.get("modelFormat"), "spec.modelFormat", required=True)
        fmt = _format(fmt_field.get("name"), "spec.modelFormat.name")
        runtime = _runtime(fmt, _text(spec.get("runtime"), "spec.runtime"),
                           "spec.modelFormat.name", "spec.runtime")
        storage = _mapping(spec.get("storage"), "spec.storage", required=True)
        uri = _text(storage.get("uri"), "spec.storage.uri")
        key = _text(storage.get("key"), "spec.storage.key")
        path = _text(storage.get("path"), "spec.storage.path")
        parameters = _strings(storage.get("parameters"), "spec.storage.parameters")
        if uri and path:
            _bad("spec.storage", "give uri, or key and path; not both")
        if uri:
            location = _Location(uri, key, "", "spec.storage.uri")
        elif path:
            location = _located(path, key, parameters.get("bucket", ""), buckets, "spec.storage")
        else:
            _bad("spec.storage", "needs uri, or key and path")
        return _entry(
            name, "", fmt, runtime, location,
            size_hint=_size(spec.get("sizeHint"), "spec.sizeHint"),
            labels=_strings(spec.get("labels"), "spec.labels"),
            gpu=_flag(spec.get("gpu"), "spec.gpu"),
        )
    except _Bad as bad:
        return bad.invalid


def predictor_entry(obj: Obj, buckets: Buckets) -> Result:
    """ModelMesh-serving's ``Predictor`` (``serving.kserve.io/v1alpha1``), with its
    deprecated ``spec.path`` and ``spec.storage.s3`` forms."""
    try:
        name = _name(obj)
        spec = _mapping(obj.get("spec"), "spec", required=True)
        model_type = _mapping(spec.get("modelType"), "spec.modelType", required=True)
        fmt = _format(model_type.get("name"), "spec.modelType.name")
        runtime_ref = _mapping(spec.get("runtime"), "spec.runtime")
        runtime = _runtime(fmt, _serving_runtime(runtime_ref.get("name"), "spec.runtime.name"),
                           "spec.modelType.name", "spec.runtime.name")
        storage = _mapping(spec.get("storage"), "spec.storage")
        s3 = _mapping(storage.get("s3"), "spec.storage.s3")
        path = _text(storage.get("path"), "spec.storage.path") or _text(
            spec.get("path"), "spec.path")
        if not path:
            _bad("spec.storage.path", "required (or the deprecated spec.path)")
        key = _text(storage.get("key"), "spec.storage.key") or _text(
            s3.get("secretKey"), "spec.storage.s3.secretKey")
        parameters = _strings(storage.get("parameters"), "spec.storage.parameters")
        bucket = parameters.get("bucket") or _text(s3.get("bucket"), "spec.storage.s3.bucket")
        location = _located(path, key, bucket, buckets, "spec.storage")
        return _entry(name, "ksp", fmt, runtime, location,
                      gpu=_gpu_request(spec.get("gpu"), "spec.gpu"))
    except _Bad as bad:
        return bad.invalid


def inference_service_entry(obj: Obj, buckets: Buckets) -> Result:
    """KServe's ``InferenceService`` (``serving.kserve.io/v1beta1``) in ModelMesh
    mode (annotation ``serving.kserve.io/deploymentMode: ModelMesh``); None
    for any other, which KServe itself serves."""
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(annotations, Mapping) or annotations.get(DEPLOYMENT_MODE) != "ModelMesh":
        return None
    try:
        name = _name(obj)
        spec = _mapping(obj.get("spec"), "spec", required=True)
        predictor = _mapping(spec.get("predictor"), "spec.predictor", required=True)
        if predictor.get("model") is not None:
            base = "spec.predictor.model"
            model = _mapping(predictor.get("model"), base)
            model_format = _mapping(model.get("modelFormat"), f"{base}.modelFormat",
                                    required=True)
            fmt = _format(model_format.get("name"), f"{base}.modelFormat.name")
            fmt_field = f"{base}.modelFormat.name"
        else:
            legacy = [k for k in LEGACY_FRAMEWORKS if k in predictor]
            if not legacy:
                _bad("spec.predictor.model.modelFormat.name", "required: it names the model "
                     "format (sklearn, onnx, ...)")
            fmt = legacy[0]
            base = fmt_field = f"spec.predictor.{fmt}"
            model = _mapping(predictor.get(fmt), base)
        runtime = _runtime(fmt, _serving_runtime(model.get("runtime"), f"{base}.runtime"),
                           fmt_field, f"{base}.runtime")
        uri = _text(model.get("storageUri"), f"{base}.storageUri")
        storage = _mapping(model.get("storage"), f"{base}.storage")
        path = _text(storage.get("path"), f"{base}.storage.path")
        key = _text(storage.get("key"), f"{base}.storage.key") or _text(
            annotations.get(SECRET_KEY), f"metadata.annotations[{SECRET_KEY}]")
        parameters = _strings(storage.get("parameters"), f"{base}.storage.parameters")
        if uri and path:
            _bad(f"{base}.storageUri", "cannot be given together with storage.path")
        if uri:
            bucket = parameters.get("bucket", "")
            if bucket and uri.startswith("s3://"):  # parameters.bucket overrides, as in ModelMesh
                uri = f"s3://{bucket}/{uri[5:].partition('/')[2]}"
            location = _Location(uri, key, "", f"{base}.storageUri")
        elif path:
            location = _located(path, key, parameters.get("bucket", ""), buckets,
                                f"{base}.storage")
        else:
            _bad(f"{base}.storageUri", "required: storageUri, or storage.path (with "
                 "storage.key)")
        return _entry(name, "isvc", fmt, runtime, location)
    except _Bad as bad:
        return bad.invalid


# --- ids ------------------------------------------------------------------------


def model_id_for(name: str, tag: str, spec: ModelSpec) -> str:
    """``<name>__[<tag>-]<10 hex digits of the spec's SHA-1>``, the name cut so the
    id stays within ``MAX_ID_BYTES``."""
    canonical = json.dumps(model_value(spec), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha1(canonical.encode(), usedforsecurity=False).hexdigest()[:10]
    suffix = f"__{tag}-{digest}" if tag else f"__{digest}"
    return name[: MAX_ID_BYTES - len(suffix)] + suffix


def vmodel_of(model_id: str) -> str:
    """The resource name a derived model id starts with (``model_id_for``'s inverse)."""
    return model_id.rpartition("__")[0]


# --- pieces ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Location:
    path: str  # a URI, an absolute path, or a path relative to ``bucket``
    storage_key: str
    bucket: str
    field: str  # where ``path`` came from, for errors


def _located(path: str, key: str, bucket: str, buckets: Buckets, field: str) -> _Location:
    """ModelMesh's key + path (+ bucket): the bucket named, else the key's own."""
    if "://" in path or path.startswith("/"):
        return _Location(path, key, "", f"{field}.path")
    if not bucket:
        bucket = buckets(key or DEFAULT_STORAGE_KEY) or ""
    if not bucket:
        which = f"storage key {key!r}" if key else f"no storage key (so {DEFAULT_STORAGE_KEY!r})"
        _bad(f"{field}.key", f"{which} names no bucket: it is not in the storage config or "
             f"has no \"bucket\"; set {field}.parameters.bucket, or give a URI")
    return _Location(path, key, bucket, f"{field}.path")


def _entry(
    name: str, tag: str, fmt: str, runtime: str, location: _Location, *, size_hint: int = 0,
    labels: Mapping[str, str] | None = None, gpu: bool = False,
) -> Entry:
    key: dict[str, Any] = {"runtime": runtime, "size_hint": size_hint,
                           "labels": dict(labels or {}), "gpu": gpu}
    if location.storage_key:
        if "/" in location.storage_key or "\x00" in location.storage_key:
            _bad(location.field.rpartition(".")[0] + ".key",
                 f"{location.storage_key!r} is not a storage key name")
        key["storage_key"] = location.storage_key
    if location.bucket:
        key["bucket"] = location.bucket
    info = mm.ModelInfo(type=fmt, path=location.path, key=json.dumps(key))
    try:
        spec = spec_from_model_info("", info)
        validate_uri(spec.uri)
    except MeshletError as err:
        _bad(location.field, err.message)
    spec = replace(spec, model_id=model_id_for(name, tag, spec))
    try:
        return Entry(name, spec.validated())
    except MeshletError as err:  # a backstop: every field was checked above
        _bad("spec", err.message)


def _name(obj: Obj) -> str:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        _bad("metadata.name", "required")
    try:
        return validate_model_id(name, "name")
    except MeshletError as err:
        _bad("metadata.name", err.message)


def _mapping(value: object, field: str, required: bool = False) -> Mapping[str, Any]:
    if value is None:
        if required:
            _bad(field, "required")
        return {}
    if not isinstance(value, Mapping):
        _bad(field, f"must be an object, not {_json(value)}")
    return value


def _text(value: object, field: str) -> str:
    """An optional string field ("" when absent)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        _bad(field, f"must be a string, not {_json(value)}")
    return value.strip()


def _format(value: object, field: str) -> str:
    fmt = _text(value, field).lower()
    if not fmt:
        _bad(field, "required: it names the model format (sklearn, onnx, ...)")
    return fmt


def _strings(value: object, field: str) -> dict[str, str]:
    """A map of strings (numbers and booleans are written as JSON would)."""
    items = _mapping(value, field)
    out: dict[str, str] = {}
    for key, item in items.items():
        if isinstance(item, str):
            out[str(key)] = item
        elif isinstance(item, bool | int | float):
            out[str(key)] = json.dumps(item)
        else:
            _bad(f"{field}.{key}", f"must be a string, not {_json(item)}")
    return out


def _flag(value: object, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        _bad(field, f"must be true or false, not {_json(value)}")
    return value


def _gpu_request(value: object, field: str) -> bool:
    """ModelMesh's ``gpu: required | preferred``. meshlet places a model on a GPU
    or not at all, so "preferred" (use one if there is room) serves on CPU."""
    request = _text(value, field)
    if request not in ("", "required", "preferred"):
        _bad(field, f"must be required or preferred, not {request!r}")
    return request == "required"


def _size(value: object, field: str) -> int:
    """Bytes: an integer, or a Kubernetes quantity ("64Mi", "1G"), rounded up."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        _bad(field, f"must be a number of bytes or a quantity such as 64Mi, not {_json(value)}")
    if isinstance(value, int):
        number = Decimal(value)
    else:
        from kubernetes.utils import parse_quantity

        try:
            number = parse_quantity(value.strip())
        except ValueError:
            _bad(field, f"{value!r} is not a quantity (such as 64Mi, 1G or 1048576)")
    if number < 0:
        _bad(field, f"{value!r} is negative")
    return math.ceil(number)


def _runtime(fmt: str, asked: str, fmt_field: str, runtime_field: str) -> str:
    """The meshlet runtime for a model format: the one asked for, if it serves
    it; else the one that does (mlserver first)."""
    serving = runtimes_serving(fmt)
    if not serving:
        kinds = "; ".join(f"{k}: {', '.join(sorted(served_types(k)))}" for k in sorted(RUNTIMES))
        _bad(fmt_field, f"model format {fmt!r} is served by no meshlet runtime ({kinds})",
             "NoSupportingRuntime")
    if asked:
        if asked not in RUNTIMES:
            _bad(runtime_field, f"runtime {asked!r} is not a meshlet runtime (known: "
                 f"{', '.join(sorted(RUNTIMES))})", "RuntimeNotRecognized")
        if asked not in serving:
            _bad(runtime_field, f"runtime {asked!r} does not serve model format {fmt!r}; "
                 f"{' or '.join(serving)} does", "NoSupportingRuntime")
        return asked
    return "mlserver" if "mlserver" in serving else serving[0]


def _serving_runtime(value: object, field: str) -> str:
    """A ModelMesh ServingRuntime name ("triton-2.x", "mlserver-1.x") as the
    meshlet runtime that stands in for it; "" when none is named."""
    name = _text(value, field)
    if not name:
        return ""
    for runtime in sorted(RUNTIMES):
        if runtime in name.lower():
            return runtime
    _bad(field, f"ServingRuntime {name!r} is not one meshlet stands in for (a name with "
         f"{' or '.join(sorted(RUNTIMES))} in it)", "RuntimeNotRecognized")


def _json(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
