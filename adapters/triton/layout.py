"""The agent's own Triton model repository: one folder per loaded model.

``lay_out`` writes ``<repository>/<model id>/config.pbtxt`` and the version
folder(s) for a model, from the artifact the agent unpacked from the node
cache. Decisions:

* Symlinks, never copies: an artifact may be gigabytes, and it stays in place
  until the model is unloaded (the adapter contract). Only ``config.pbtxt`` is
  written, because Triton requires its ``name`` to equal the folder name, the
  model id, whatever the artifact's config says.
* Generated configs are minimal (name, backend or platform, and
  ``max_batch_size: 0`` for Python models, whose backend cannot guess it);
  Triton's auto-complete fills in the rest where the backend can (ONNX,
  TensorRT, TF SavedModel). Formats it cannot complete (PyTorch, Python models
  without ``auto_complete_config``) need the artifact's own ``config.pbtxt``.
* An artifact folder with its own ``config.pbtxt`` is taken in Triton's layout
  whatever its type: its config is copied with the top-level ``name`` forced
  and its other entries linked (version folders, label files); if it has no
  version folder, its files become version 1. Type ``triton`` requires a
  version folder.
* A single file becomes ``1/<the format's default file name>``; a folder's
  entries are linked into ``1/``, except a SavedModel folder itself (it holds
  ``saved_model.pb``), linked as ``1/model.savedmodel``, and a folder that
  already has version folders, whose entries are linked beside the config.
* Laying out a model again replaces its folder: the adapter unloads it first.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.errors import LoadFailed
from agent.registry.spec import ModelSpec, validate_model_id

CONFIG_FILENAME = "config.pbtxt"
SIMPLE_STRING_MODEL = Path(__file__).resolve().parent / "models" / "simple_string" / "model.py"


@dataclass(frozen=True)
class Format:
    """How Triton serves one model type."""

    backend: str | None  # the backend folder it needs; None: named by the artifact's config
    config: str  # the generated config's line naming the backend or platform
    filename: str = ""  # Triton's default model file name in a version folder
    builtin: bool = False  # shipped with meshlet: no artifact


_PYTHON = 'backend: "python"\nmax_batch_size: 0'
_ONNX = Format("onnxruntime", 'backend: "onnxruntime"', "model.onnx")
_PYTORCH = Format("pytorch", 'backend: "pytorch"', "model.pt")
_TENSORFLOW = Format("tensorflow", 'platform: "tensorflow_savedmodel"', "model.savedmodel")

FORMATS: dict[str, Format] = {
    "simple-string": Format("python", _PYTHON, "model.py", builtin=True),
    "python": Format("python", _PYTHON, "model.py"),
    "onnx": _ONNX,
    "pytorch": _PYTORCH,
    "torchscript": _PYTORCH,
    "tensorrt": Format("tensorrt", 'platform: "tensorrt_plan"', "model.plan"),
    "tensorflow": _TENSORFLOW,
    "savedmodel": _TENSORFLOW,
    "triton": Format(None, ""),
}

_SIMPLE_STRING_TENSORS = """\
input [
  { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
_CPU_GROUP = "kind: KIND_CPU count: 1"  # the generated instance group, as written above


def required_backend(model_type: str) -> str | None:
    """The backend folder ``model_type`` needs; None for ``triton`` (its
    config names it) and for types Triton does not serve here."""
    fmt = FORMATS.get(model_type)
    return fmt.backend if fmt is not None else None


def supports(model_type: str, available: frozenset[str]) -> bool:
    """Whether a Triton with backends ``available`` can serve ``model_type``.
    Type ``triton`` always passes: an unavailable backend is Triton's to report."""
    fmt = FORMATS.get(model_type)
    if fmt is None:
        return False
    return fmt.backend is None or fmt.backend in available


def lay_out(repository: Path, spec: ModelSpec, artifact: Path | None) -> Path:
    """Write the model's folder under ``repository`` from ``artifact`` (a
    file, a folder, or None for a builtin model); return the folder. Raises
    ``LoadFailed`` for a type not served here or an unusable artifact, and
    ``InvalidModelId`` for an id that could name a path outside ``repository``."""
    fmt = FORMATS.get(spec.model_type)
    if fmt is None:
        served = ", ".join(sorted(FORMATS))
        raise LoadFailed(
            f"model {spec.model_id!r}: model type {spec.model_type!r} is not served by "
            f"triton (served: {served})"
        )
    folder = repository / validate_model_id(spec.model_id)
    remove(repository, spec.model_id)
    if fmt.builtin:
        _write(folder, spec.model_id, f"{fmt.config}\n{_SIMPLE_STRING_TENSORS}")
        _link(folder / "1" / fmt.filename, SIMPLE_STRING_MODEL)
        return folder
    if artifact is None:
        raise LoadFailed(
            f"model {spec.model_id!r}: type {spec.model_type!r} needs an artifact, got {spec.uri!r}"
        )
    if not artifact.exists():
        raise LoadFailed(f"model {spec.model_id!r}: its artifact {artifact} does not exist")
    if artifact.is_dir() and ((artifact / CONFIG_FILENAME).is_file() or fmt.backend is None):
        _lay_out_triton(folder, spec, artifact, need_version=fmt.backend is None)
    elif fmt.backend is None:
        raise LoadFailed(
            f"model {spec.model_id!r}: type 'triton' needs a folder in Triton's layout "
            f"({CONFIG_FILENAME} and version folders), got the file {artifact}"
        )
    else:
        _write(folder, spec.model_id, fmt.config)
        if not artifact.is_dir() or (
            fmt.filename == "model.savedmodel" and (artifact / "saved_model.pb").exists()
        ):
            _link(folder / "1" / fmt.filename, artifact)
        elif any(_is_version(entry) for entry in artifact.iterdir()):
            _link_entries(folder, artifact)  # versioned already, only the config was missing
        else:
            _link_entries(folder / "1", artifact)
    return folder


def place_on_gpu(folder: Path, index: int) -> None:
    """Make the model in ``folder`` run one instance on GPU ``index`` (CUDA's
    numbering; the server runs with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that it
    is NVML's too). A config with its own ``instance_group`` keeps it, except
    the generated CPU one, which is replaced."""
    config = folder / CONFIG_FILENAME
    text = config.read_text(encoding="utf-8")
    gpu_group = f"kind: KIND_GPU count: 1 gpus: [ {index} ]"
    if _CPU_GROUP in text:
        text = text.replace(_CPU_GROUP, gpu_group)
    elif "instance_group" not in text:
        text += f"\ninstance_group [ {{ {gpu_group} }} ]\n"
    config.write_text(text, encoding="utf-8")


def remove(repository: Path, model_id: str) -> None:
    """Delete the model's folder (the links only, never what they point at)."""
    folder = repository / validate_model_id(model_id)
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def _lay_out_triton(folder: Path, spec: ModelSpec, artifact: Path, need_version: bool) -> None:
    config = artifact / CONFIG_FILENAME
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, ValueError) as err:
        raise LoadFailed(
            f"model {spec.model_id!r}: type {spec.model_type!r} needs {config}: {err}"
        ) from None
    versions = [e for e in artifact.iterdir() if _is_version(e)]
    if need_version and not versions:
        raise LoadFailed(
            f"model {spec.model_id!r}: {artifact} has no version folder (a folder named "
            "by a positive number, such as 1/, holding the model files)"
        )
    _write(folder, spec.model_id, set_name(text, spec.model_id), named=True)
    if versions:
        _link_entries(folder, artifact, skip=CONFIG_FILENAME)
    else:
        _link_entries(folder / "1", artifact, skip=CONFIG_FILENAME)


def _is_version(entry: Path) -> bool:
    return entry.name.isascii() and entry.name.isdigit() and int(entry.name) > 0 and entry.is_dir()


def _write(folder: Path, model_id: str, config: str, named: bool = False) -> None:
    folder.mkdir(parents=True)
    text = config if named else f"name: {_quote(model_id)}\n{config}\n"
    (folder / CONFIG_FILENAME).write_text(text, encoding="utf-8")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.absolute())


def _link_entries(into: Path, source: Path, skip: str = "") -> None:
    into.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != skip:
            _link(into / entry.name, entry)


# Protocol-buffer text format, as far as finding top-level fields needs: string
# literals and comments (which may hold anything), nesting, and names.
_TOKENS = re.compile(
    r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|\#[^\n]*|[{\[<]|[}\]>]|\w+|\s+|.""",
    re.DOTALL,
)


def set_name(config: str, name: str) -> str:
    """``config`` (text format) with its top-level ``name`` set to ``name``,
    added first if absent; a ``name`` nested in any block is left alone."""
    tokens = [m.group() for m in _TOKENS.finditer(config)]
    depth = 0
    found = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in "{[<":
            depth += 1
        elif token in "}]>":
            depth -= 1
        elif depth == 0 and token == "name":
            colon = _next_significant(tokens, i + 1)
            value = _next_significant(tokens, colon + 1)
            if colon < len(tokens) and tokens[colon] == ":" and _is_string(tokens, value):
                end = value
                while _is_string(tokens, _next_significant(tokens, end + 1)):
                    end = _next_significant(tokens, end + 1)  # "a" "b" is one string
                tokens[value : end + 1] = [_quote(name)]
                found = True
        i += 1
    text = "".join(tokens)
    return text if found else f"name: {_quote(name)}\n{text}"


def _next_significant(tokens: list[str], i: int) -> int:
    while i < len(tokens) and (tokens[i].isspace() or tokens[i].startswith("#")):
        i += 1
    return i


def _is_string(tokens: list[str], i: int) -> bool:
    return i < len(tokens) and len(tokens[i]) >= 2 and tokens[i][0] in "\"'"


def _quote(value: str) -> str:
    # Model ids have no control characters (validate_model_id); UTF-8 is
    # allowed as is in text-format strings.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
