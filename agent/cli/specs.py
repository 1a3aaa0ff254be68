"""Model specs as the CLI takes them, from flags or a YAML file, and as the
ModelMesh ``ModelInfo`` that carries them (``type``, ``path`` = URI, ``key`` =
JSON of runtime, size hint and labels; see ``agent.api.mmesh``).

A file is checked whole before anything is sent, with the agent's own rules
(``agent.registry.spec``), so what passes here is what the agent accepts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from agent.cli.args import parse_size
from agent.cli.errors import UsageError
from agent.errors import MeshletError
from agent.proto import model_mesh_pb2 as mm
from agent.registry.spec import RUNTIMES, ModelSpec, validate_model_id, validate_uri

FIELDS = ("id", "uri", "type", "runtime", "size_hint", "labels", "storage_key", "gpu")
REQUIRED = ("id", "uri", "type")
MAX_LISTED = 20  # problems shown before "... and N more"


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def model_info(spec: ModelSpec) -> mm.ModelInfo:
    key: dict[str, object] = {
        "runtime": spec.runtime, "size_hint": spec.size_hint, "labels": spec.labels
    }
    if spec.storage_key:
        key["storage_key"] = spec.storage_key
    if spec.gpu:
        key["gpu"] = True
    return mm.ModelInfo(type=spec.model_type, path=spec.uri, key=json.dumps(key))


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"label {text!r}: expected KEY=VALUE")
    return key.strip(), value


def _string(entry: dict[Any, Any], field: str, default: str | None = None) -> str:
    value = entry.get(field, default)
    if value is None:
        raise FieldError(field, "is required")
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type(value).__name__} {value!r} "
                                "(quote it in YAML)")
    return value


def _flag(entry: dict[Any, Any], field: str) -> bool:
    value = entry.get(field, False)
    if not isinstance(value, bool):
        raise FieldError(field, f"must be true or false, got {value!r}")
    return value


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError("labels", f"must be a mapping of key: value, got {type(value).__name__}")
    labels = {}
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool):
            raise FieldError("labels", f"value of {key!r} must be a scalar, got "
                                       f"{type(item).__name__}")
        labels[str(key)] = str(item).lower() if isinstance(item, bool) else str(item)
    return labels


def _size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FieldError("size_hint", f"must be bytes or a size like 512Mi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise FieldError("size_hint", f"{value} is negative")
        return value
    try:
        return parse_size(value)
    except ValueError as err:
        raise FieldError("size_hint", str(err)) from None


def spec_from_entry(entry: Any) -> ModelSpec:
    """One YAML entry as a validated spec; a problem raises FieldError naming its field."""
    if not isinstance(entry, dict):
        raise FieldError("", f"must be a mapping with {', '.join(REQUIRED)}, "
                             f"got {type(entry).__name__}")
    for key in entry:
        if key not in FIELDS:
            raise FieldError(str(key), f"is not a field (fields: {', '.join(FIELDS)})")
    return checked_spec(
        model_id=_string(entry, "id"),
        uri=_string(entry, "uri"),
        model_type=_string(entry, "type"),
        runtime=_string(entry, "runtime", "mlserver"),
        size_hint=_size(entry.get("size_hint")),
        labels=_labels(entry.get("labels")),
        storage_key=_string(entry, "storage_key", ""),
        gpu=_flag(entry, "gpu"),
    )


def checked_spec(
    model_id: str, uri: str, model_type: str, runtime: str = "mlserver",
    size_hint: int = 0, labels: dict[str, str] | None = None, storage_key: str = "",
    gpu: bool = False,
) -> ModelSpec:
    """A spec the agent will accept, or FieldError naming the field that it would not."""
    checks = (
        ("id", lambda: validate_model_id(model_id)),
        ("uri", lambda: validate_uri(uri)),
    )
    for field, check in checks:
        try:
            check()
        except MeshletError as err:
            raise FieldError(field, err.message) from None
    if runtime not in RUNTIMES:
        raise FieldError("runtime", f"{runtime!r} is not one of {', '.join(sorted(RUNTIMES))}")
    if not model_type:
        raise FieldError("type", "is empty")
    spec = ModelSpec(
        model_id, uri, runtime, model_type, size_hint, dict(labels or {}), storage_key, gpu
    )
    try:
        return spec.validated()
    except MeshletError as err:  # a rule added to the agent that the checks above miss
        raise FieldError("", err.message) from None


def _entries(document: Any, source: str) -> tuple[str, list[Any]]:
    if isinstance(document, dict) and set(document) == {"models"}:
        document = document["models"]
        prefix = "models"
    else:
        prefix = ""
    if not isinstance(document, list):
        raise UsageError(f"{source}: expected a list of models or a mapping "
                         "{models: [...]}, got " + type(document).__name__)
    return prefix, document


def load_model_file(path: str) -> list[ModelSpec]:
    """Every entry of the file as a spec, or one UsageError listing every problem."""
    source = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        document = yaml.load(text, Loader=loader)
    except OSError as err:
        raise UsageError(f"cannot read {source}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{source} is not valid YAML: {err}") from None
    prefix, entries = _entries(document, source)
    specs, problems = _specs(prefix, entries)
    if problems:
        raise UsageError(_problem_report(source, problems))
    if not specs:
        raise UsageError(f"{source} lists no models")
    return specs


def _specs(prefix: str, entries: Iterable[Any]) -> tuple[list[ModelSpec], list[str]]:
    specs: list[ModelSpec] = []
    problems: list[str] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"{prefix}[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            where += f" (id {entry['id']!r})"
        try:
            spec = spec_from_entry(entry)
        except FieldError as err:
            field = f"{err.field}: " if err.field else ""
            problems.append(f"{where}: {field}{err.message}")
            continue
        if spec.model_id in first_index:
            problems.append(f"{where}: id: duplicate of {prefix}[{first_index[spec.model_id]}]")
            continue
        first_index[spec.model_id] = index
        specs.append(spec)
    return specs, problems


def _problem_report(source: str, problems: list[str]) -> str:
    noun = "entry is" if len(problems) == 1 else "entries are"
    lines = [f"{source}: {len(problems)} {noun} invalid; nothing was registered"]
    lines += [f"  {problem}" for problem in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)
