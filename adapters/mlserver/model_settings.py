"""What MLServer is told about each model: its ``model-settings.json``.

The adapter writes ``<repository>/<model id>/model-settings.json`` for every
load; ``DirectModelRepository`` reads it back by name inside MLServer. The
model type picks MLServer's runtime class; the storage URI becomes
``parameters.uri``: the local path of the artifact the agent fetched through
the node cache. Also here: the package a model type needs (checked at
registration), and the size a model is predicted to take before its first load
(the agent replaces it with a measurement afterwards).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from agent.errors import LoadFailed
from agent.registry.spec import ModelSpec, validate_model_id

SETTINGS_FILENAME = "model-settings.json"

# model type -> MLServer runtime class. None: the artifact folder carries its
# own model-settings.json ("mlserver", for any runtime MLServer can load).
IMPLEMENTATIONS: dict[str, str | None] = {
    "simple-string": "adapters.mlserver.simple_string.SimpleStringModel",
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
    "mlflow": "mlserver_mlflow.MLflowRuntime",
    "mlserver": None,
}


def missing_package(model_type: str) -> str | None:
    """The pip package MLServer needs for ``model_type`` that is not installed
    in this environment (the one MLServer runs in), e.g. ``mlserver-xgboost``;
    None when nothing is missing or the type is not MLServer's. Looked up with
    ``importlib.util.find_spec``: nothing is imported, least of all mlserver
    (which cannot share a process with tritonclient). Not remembered (a lookup
    takes ~50 us): a package installed while the agent runs counts at once."""
    implementation = IMPLEMENTATIONS.get(model_type)
    if implementation is None:
        return None
    module = implementation.partition(".")[0]
    return module.replace("_", "-") if importlib.util.find_spec(module) is None else None


BUILTIN_SIZE_BYTES = 16 * 1024  # a builtin model is code only
MIN_PREDICTED_BYTES = 1024 * 1024
DISK_SIZE_FACTOR = 1.25  # ModelMesh's guess; measured sizes replace it


def model_settings(spec: ModelSpec, path: Path | None) -> dict[str, Any]:
    """The content of the model's ``model-settings.json`` for its artifact at
    ``path`` (None: builtin); raises ``LoadFailed`` for a type MLServer does not
    serve here or an unusable artifact."""
    if spec.model_type not in IMPLEMENTATIONS:
        served = ", ".join(sorted(IMPLEMENTATIONS))
        raise LoadFailed(
            f"model {spec.model_id!r}: model type {spec.model_type!r} is not served by "
            f"mlserver (served: {served})"
        )
    implementation = IMPLEMENTATIONS[spec.model_type]
    if implementation is None:
        return _artifact_settings(spec, path)
    settings: dict[str, Any] = {"name": spec.model_id, "implementation": implementation}
    if path is not None:
        settings["parameters"] = {"uri": str(path)}
    return settings


def _artifact_settings(spec: ModelSpec, path: Path | None) -> dict[str, Any]:
    if path is None:
        raise LoadFailed(
            f"model {spec.model_id!r}: type 'mlserver' needs a local artifact folder, "
            f"got {spec.uri!r}"
        )
    own_path = path / SETTINGS_FILENAME
    try:
        settings = json.loads(own_path.read_text())
        if not isinstance(settings, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise LoadFailed(f"model {spec.model_id!r}: cannot read {own_path}: {err}") from None
    settings["name"] = spec.model_id
    parameters = settings.get("parameters")
    parameters = dict(parameters) if isinstance(parameters, dict) else {}
    uri = parameters.get("uri")
    if not uri:
        parameters["uri"] = str(path)
    elif urlsplit(uri).scheme in ("", "file"):
        # MLServer resolves a relative uri against the folder of the settings
        # file it read, which is ours, not the artifact's. An absolute one would
        # point outside the fetched artifact: refused.
        relative = unquote(urlsplit(uri).path)
        if relative.startswith("/") or ".." in Path(relative).parts:
            raise LoadFailed(
                f"model {spec.model_id!r}: {SETTINGS_FILENAME} names uri {uri!r}, outside "
                "the artifact; use a path relative to the artifact folder"
            )
        parameters["uri"] = str(path / relative)
    settings["parameters"] = parameters
    return settings


def write_model_settings(repository: Path, spec: ModelSpec, artifact: Path | None) -> Path:
    """Write the model's settings under ``repository``; return its folder."""
    content = json.dumps(model_settings(spec, artifact))
    folder = settings_folder(repository, spec.model_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SETTINGS_FILENAME).write_text(content)
    return folder


def settings_folder(repository: Path, model_id: str) -> Path:
    """The model's folder; raises ``InvalidModelId`` for an id that could
    name a path outside ``repository``."""
    return repository / validate_model_id(model_id)


def predict_size(spec: ModelSpec, artifact_bytes: int) -> int:
    """Bytes the model is expected to take once loaded, before it ever was:
    the size hint, else the artifact's size x 1.25 (ModelMesh's guess)."""
    if spec.size_hint > 0:
        return spec.size_hint
    if spec.model_type == "simple-string" or spec.is_builtin:
        return BUILTIN_SIZE_BYTES
    return max(MIN_PREDICTED_BYTES, int(artifact_bytes * DISK_SIZE_FACTOR))
