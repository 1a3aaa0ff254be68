"""The agent's Triton repository: configs written, artifacts linked (never
copied), Triton-layout artifacts renamed; and, with the wheel installed, a real
tritonserver serving the simple-string model from it."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from adapters.triton import layout
from adapters.triton.layout import FORMATS, lay_out, remove, required_backend, set_name, supports
from agent.errors import InvalidModelId, LoadFailed
from agent.registry.spec import ModelSpec

TRITON_CONFIG = """\
# name: "in a comment"
platform: "onnxruntime_onnx"
name: "original"   # the artifact's own name
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output < name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] >
parameters { key: "note" value: { string_value: "} name: \\"x\\" {" } }
"""


def spec(model_type: str, model_id: str = "m-1") -> ModelSpec:
    return ModelSpec(model_id, f"file:///artifacts/{model_id}", "triton", model_type)


def config(folder: Path) -> str:
    return (folder / "config.pbtxt").read_text()


def points_at(link: Path, target: Path) -> bool:
    return link.is_symlink() and Path(os.readlink(link)) == target.absolute()


def triton_artifact(root: Path, config_text: str | None = TRITON_CONFIG) -> Path:
    root.mkdir()
    if config_text is not None:
        (root / "config.pbtxt").write_text(config_text)
    for version in ("1", "3"):
        (root / version).mkdir()
        (root / version / "model.onnx").write_bytes(b"onnx")
    (root / "labels.txt").write_text("cat\ndog\n")
    return root


def test_supports_needs_the_backend_except_for_triton_layout() -> None:
    assert required_backend("onnx") == "onnxruntime"
    assert required_backend("tensorrt") == "tensorrt"
    assert required_backend("simple-string") == "python"
    assert required_backend("triton") is None
    assert required_backend("sklearn") is None
    assert supports("simple-string", frozenset({"python"}))
    assert not supports("onnx", frozenset({"python"}))
    assert supports("triton", frozenset())
    assert not supports("sklearn", frozenset({"python", "onnxruntime"}))


def test_simple_string_is_the_builtin_python_model(tmp_path: Path) -> None:
    folder = lay_out(
        tmp_path, ModelSpec("ss", "builtin://simple-string", "triton", "simple-string"), None
    )

    assert folder == tmp_path / "ss"
    text = config(folder)
    assert text.startswith('name: "ss"\nbackend: "python"\nmax_batch_size: 0\n')
    assert text.count("data_type: TYPE_STRING dims: [ 16 ]") == 4
    for name in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1"):
        assert f'name: "{name}"' in text
    assert "instance_group [ { kind: KIND_CPU count: 1 } ]" in text
    assert points_at(folder / "1" / "model.py", layout.SIMPLE_STRING_MODEL)
    assert layout.SIMPLE_STRING_MODEL.is_file()


@pytest.mark.parametrize(
    ("model_type", "filename", "line"),
    [
        ("onnx", "model.onnx", 'backend: "onnxruntime"'),
        ("pytorch", "model.pt", 'backend: "pytorch"'),
        ("torchscript", "model.pt", 'backend: "pytorch"'),
        ("tensorrt", "model.plan", 'platform: "tensorrt_plan"'),
        ("python", "model.py", 'backend: "python"\nmax_batch_size: 0'),
    ],
)
def test_a_single_file_becomes_the_default_model_file(
    tmp_path: Path, model_type: str, filename: str, line: str
) -> None:
    artifact = tmp_path / "cache" / "blob"
    artifact.parent.mkdir()
    artifact.write_bytes(b"weights")

    folder = lay_out(tmp_path / "repo", spec(model_type), artifact)

    assert config(folder) == f'name: "m-1"\n{line}\n'
    assert points_at(folder / "1" / filename, artifact)
    assert [p.name for p in (folder / "1").iterdir()] == [filename]


def test_a_folder_s_entries_are_linked_into_version_1(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    (artifact / "weights").mkdir(parents=True)
    (artifact / "model.py").write_text("class TritonPythonModel: ...\n")
    (artifact / "helper.py").write_text("")

    folder = lay_out(tmp_path / "repo", spec("python"), artifact)

    assert config(folder) == 'name: "m-1"\nbackend: "python"\nmax_batch_size: 0\n'
    assert {p.name for p in (folder / "1").iterdir()} == {"model.py", "helper.py", "weights"}
    for name in ("model.py", "helper.py", "weights"):
        assert points_at(folder / "1" / name, artifact / name)


def test_a_versioned_folder_without_config_keeps_its_versions(tmp_path: Path) -> None:
    artifact = triton_artifact(tmp_path / "artifact", config_text=None)

    folder = lay_out(tmp_path / "repo", spec("onnx"), artifact)

    assert config(folder) == 'name: "m-1"\nbackend: "onnxruntime"\n'
    assert points_at(folder / "1", artifact / "1")
    assert points_at(folder / "3", artifact / "3")


@pytest.mark.parametrize("model_type", ["tensorflow", "savedmodel"])
def test_a_savedmodel_folder_is_linked_as_model_savedmodel(tmp_path: Path, model_type: str) -> None:
    artifact = tmp_path / "artifact"
    (artifact / "variables").mkdir(parents=True)
    (artifact / "saved_model.pb").write_bytes(b"pb")

    folder = lay_out(tmp_path / "repo", spec(model_type), artifact)

    assert config(folder) == 'name: "m-1"\nplatform: "tensorflow_savedmodel"\n'
    assert points_at(folder / "1" / "model.savedmodel", artifact)


def test_a_triton_layout_is_renamed_and_its_versions_linked(tmp_path: Path) -> None:
    artifact = triton_artifact(tmp_path / "artifact")
    (artifact / "notes").mkdir()  # not a version: linked beside them, Triton ignores it

    folder = lay_out(tmp_path / "repo", spec("triton", "my model"), artifact)

    expected = TRITON_CONFIG.replace('name: "original"', 'name: "my model"')
    assert config(folder) == expected
    assert {p.name for p in folder.iterdir()} == {"config.pbtxt", "1", "3", "labels.txt", "notes"}
    for name in ("1", "3", "labels.txt", "notes"):
        assert points_at(folder / name, artifact / name)
    assert not (folder / "config.pbtxt").is_symlink()
    assert "original" in (artifact / "config.pbtxt").read_text()  # the artifact is untouched


def test_a_triton_config_without_a_name_gets_one_first(tmp_path: Path) -> None:
    text = 'backend: "onnxruntime"\ninput [ { name: "X" } ]\n'
    artifact = triton_artifact(tmp_path / "artifact", text)

    folder = lay_out(tmp_path / "repo", spec("triton"), artifact)

    assert config(folder) == f'name: "m-1"\n{text}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name:'a'", 'name:"new"'),
        ('name : "a" "b"\n', 'name : "new"\n'),
        ('model { name: "a" }\n', 'name: "new"\nmodel { name: "a" }\n'),
        ('input < name: "a" >\nname: "b"', 'input < name: "a" >\nname: "new"'),
        ('filename: "name"\n', 'name: "new"\nfilename: "name"\n'),
    ],
)
def test_set_name_touches_only_the_top_level_name(text: str, expected: str) -> None:
    assert set_name(text, "new") == expected


def test_set_name_escapes_quotes() -> None:
    assert set_name('name: "a"', 'say "hi"') == 'name: "say \\"hi\\""'


def test_a_folder_with_its_own_config_keeps_it_renamed(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "config.pbtxt").write_text('name: "x"\nbackend: "python"\nmax_batch_size: 4\n')
    (artifact / "model.py").write_text("")

    folder = lay_out(tmp_path / "repo", spec("python"), artifact)

    assert config(folder) == 'name: "m-1"\nbackend: "python"\nmax_batch_size: 4\n'
    assert points_at(folder / "1" / "model.py", artifact / "model.py")
    assert not (folder / "1" / "config.pbtxt").exists()


def test_triton_layout_without_config_is_refused(tmp_path: Path) -> None:
    artifact = triton_artifact(tmp_path / "artifact", config_text=None)
    with pytest.raises(LoadFailed, match=r"'m-1'.*config\.pbtxt"):
        lay_out(tmp_path / "repo", spec("triton"), artifact)


def test_triton_layout_without_a_version_folder_is_refused(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    (artifact / "0").mkdir(parents=True)  # versions are positive
    (artifact / "config.pbtxt").write_text('backend: "python"\n')
    with pytest.raises(LoadFailed, match=r"'m-1'.*no version folder"):
        lay_out(tmp_path / "repo", spec("triton"), artifact)


def test_triton_layout_needs_a_folder(tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"onnx")
    with pytest.raises(LoadFailed, match="needs a folder"):
        lay_out(tmp_path / "repo", spec("triton"), artifact)


def test_an_unknown_type_lists_the_served_ones(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="'sklearn' is not served by triton") as caught:
        lay_out(tmp_path, spec("sklearn"), tmp_path)
    assert all(name in caught.value.message for name in FORMATS)


def test_a_model_without_an_artifact_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="needs an artifact"):
        lay_out(tmp_path, spec("onnx"), None)
    with pytest.raises(LoadFailed, match="does not exist"):
        lay_out(tmp_path, spec("onnx"), tmp_path / "gone.onnx")


@pytest.mark.parametrize("model_id", ["a/b", "..", "a\\b"])
def test_an_id_that_could_escape_the_repository_is_refused(tmp_path: Path, model_id: str) -> None:
    with pytest.raises(InvalidModelId):
        lay_out(tmp_path / "repo", spec("simple-string", model_id), None)
    with pytest.raises(InvalidModelId):
        remove(tmp_path / "repo", model_id)
    assert not (tmp_path / "repo").exists()


def test_laying_out_again_replaces_and_remove_keeps_the_artifact(tmp_path: Path) -> None:
    artifact = triton_artifact(tmp_path / "artifact")
    repo = tmp_path / "repo"
    lay_out(repo, spec("triton"), artifact)
    (repo / "m-1" / "stale").write_text("")

    folder = lay_out(repo, spec("onnx"), artifact / "1" / "model.onnx")

    assert {p.name for p in folder.iterdir()} == {"config.pbtxt", "1"}
    remove(repo, "m-1")
    assert not folder.exists()
    assert (artifact / "1" / "model.onnx").read_bytes() == b"onnx"
    remove(repo, "m-1")  # already gone: nothing to do


def test_a_real_tritonserver_serves_simple_string_from_the_layout(tmp_path: Path) -> None:
    """End to end through Triton's Python backend: the same request and answer
    as MLServer's simple-string, and an error response for a malformed one."""
    from adapters.triton.install import find_triton

    found = find_triton(None, None, tmp_path)  # ./scripts/test installs meshlet[triton]
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from tests.clients import check_sums, string_inputs
    from tests.conftest import wait_for

    repository = tmp_path / "repository"
    lay_out(repository, ModelSpec("ss", "builtin://simple-string", "triton", "simple-string"), None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "tritonserver.log").open("w")
    server = subprocess.Popen(
        [
            str(found.server),
            "--model-control-mode=explicit",
            f"--model-repository={repository}",
            f"--backend-directory={found.backends}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={port}",
            "--exit-timeout-secs=5",
        ],
        env={**os.environ, **found.env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:

        def live() -> bool:
            assert server.poll() is None, (tmp_path / "tritonserver.log").read_text()
            try:
                return bool(client.is_server_live())
            except InferenceServerException:
                return False

        wait_for(live, timeout_s=30, what="tritonserver live")
        client.load_model("ss")
        check_sums(client.infer("ss", string_inputs()))

        malformed = string_inputs()
        malformed[1].set_data_from_numpy(np.array([b"1", b"x2", *[b"3"] * 14], dtype=np.object_))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("ss", malformed)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input 'INPUT1': element 1 is not a decimal integer: b'x2'" in str(caught.value)
        client.unload_model("ss")  # its stub process exits with it
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_place_on_gpu_rewrites_the_instance_group(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    folder = lay_out(repo, ModelSpec("ss", "builtin://simple-string", "triton", "simple-string"),
                     None)
    layout.place_on_gpu(folder, 1)
    text = (folder / "config.pbtxt").read_text()
    assert "kind: KIND_GPU count: 1 gpus: [ 1 ]" in text and "KIND_CPU" not in text

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    folder = lay_out(repo, ModelSpec("o", str(onnx), "triton", "onnx"), onnx)
    layout.place_on_gpu(folder, 0)
    text = (folder / "config.pbtxt").read_text()
    assert text.rstrip().endswith("instance_group [ { kind: KIND_GPU count: 1 gpus: [ 0 ] } ]")
