"""What a registered model is: its id and the spec needed to load it.

Ids become file and directory names (runtime repositories, the node cache), so
``validate_model_id`` is strict: no path separators, no ``..``, no NUL, no
control characters, at most 256 bytes of UTF-8.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.errors import InvalidModelId, InvalidSpec, InvalidStorageUri

MAX_ID_BYTES = 256

# Schemes a model URI may use. "builtin" names a model shipped inside meshlet
# (the demo simple-string model: no artifact); the others are fetched by the
# pullers in ``agent.storage`` into the node cache. Plain absolute paths are
# accepted too (as "file").
SUPPORTED_SCHEMES = frozenset({"builtin", "file", "http", "https", "s3"})

RUNTIMES = frozenset({"mlserver", "triton"})


def validate_model_id(model_id: str, what: str = "model id") -> str:
    """Return ``model_id`` if it is safe as a file name, else raise InvalidModelId."""
    if not model_id:
        raise InvalidModelId(f"{what} is empty")
    if len(model_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidModelId(f"{what} is longer than {MAX_ID_BYTES} bytes")
    if "/" in model_id or "\\" in model_id:
        raise InvalidModelId(f"{what} {model_id!r} contains a path separator")
    if model_id in (".", "..") or ".." in model_id:
        raise InvalidModelId(f"{what} {model_id!r} contains '..'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in model_id):
        raise InvalidModelId(f"{what} {model_id!r} contains NUL or a control character")
    return model_id


def validate_uri(uri: str) -> str:
    """Return ``uri`` if a puller serves its scheme, else raise InvalidStorageUri."""
    if not uri:
        raise InvalidStorageUri("storage uri is empty")
    if "\x00" in uri:
        raise InvalidStorageUri("storage uri contains NUL")
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "" and uri.startswith("/"):
        return uri
    if scheme not in SUPPORTED_SCHEMES:
        supported = ", ".join(sorted(SUPPORTED_SCHEMES))
        raise InvalidStorageUri(
            f"storage uri {uri!r}: scheme {scheme or '(none)'!r} is not supported "
            f"(supported: {supported}, or an absolute path)"
        )
    return uri


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything needed to load one model. Equal specs mean "same model"."""

    model_id: str
    uri: str
    runtime: str = "mlserver"
    model_type: str = ""
    size_hint: int = 0  # bytes; 0 = unknown, the runtime predicts
    labels: dict[str, str] = field(default_factory=dict)
    storage_key: str = ""  # s3: the storage-config key; "" = chosen by bucket/default
    gpu: bool = False  # placed on a GPU (by NVML free memory), on a runtime that can

    @property
    def is_builtin(self) -> bool:
        """A model shipped inside meshlet: nothing to fetch."""
        return urlsplit(self.uri).scheme.lower() == "builtin"

    def validated(self) -> ModelSpec:
        validate_model_id(self.model_id)
        validate_uri(self.uri)
        if self.runtime not in RUNTIMES:
            raise InvalidSpec(
                f"runtime {self.runtime!r} is unknown (known: {', '.join(sorted(RUNTIMES))})"
            )
        if not self.model_type:
            raise InvalidSpec("model type is empty")
        if "\x00" in self.storage_key or "/" in self.storage_key:
            raise InvalidSpec(f"storage key {self.storage_key!r} is not a key name")
        if self.size_hint < 0:
            raise InvalidSpec(f"size hint {self.size_hint} is negative")
        return self

    def labels_json(self) -> str:
        return json.dumps(self.labels, sort_keys=True, separators=(",", ":"))
