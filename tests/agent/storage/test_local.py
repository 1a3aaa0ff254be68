"""file:// and plain-path pulls: real files on the local disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import InvalidStorageUri, LoadFailed
from agent.storage import ArtifactTooLarge, FilePuller, UnsafeArtifact, pull_into
from agent.storage.pull import PullerSettings


def make_tree(root: Path) -> Path:
    model = root / "model"
    (model / "weights").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "weights" / "w.bin").write_bytes(os.urandom(5000))
    return model


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def test_file_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src" / "model.bin"
    src.parent.mkdir()
    src.write_bytes(b"x" * 1234)
    dest = tmp_path / "dest"
    result = await pull_into(f"file://{src}", dest, 10_000)
    assert result.path == dest / "model.bin"
    assert not result.is_dir
    assert (result.bytes_written, result.file_count) == (1234, 1)
    assert result.path.read_bytes() == src.read_bytes()


async def test_plain_path_directory_round_trip(tmp_path: Path) -> None:
    model = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    result = await pull_into(str(model), dest, 1_000_000)
    assert result.is_dir and result.path == dest
    assert tree(dest) == tree(model)
    assert result.file_count == 2
    assert result.bytes_written == 5000 + len('{"a": 1}')


async def test_dotdot_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    puller = FilePuller([root])
    dest = tmp_path / "dest"
    with pytest.raises(InvalidStorageUri, match="outside the permitted roots"):
        await puller.pull(f"file://{root}/../secret.txt", dest, 1000)
    assert not dest.exists()


async def test_dotdot_inside_the_root_is_allowed(tmp_path: Path) -> None:
    model = make_tree(tmp_path / "models")
    settings = PullerSettings(allowed_roots=[tmp_path / "models"])
    result = await pull_into(
        f"{model}/weights/../config.json", tmp_path / "dest", 1000, settings=settings
    )
    assert result.path.read_text() == '{"a": 1}'


async def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"o")
    (root / "link.bin").symlink_to(outside)
    with pytest.raises(InvalidStorageUri):
        await FilePuller([root]).pull(str(root / "link.bin"), tmp_path / "dest", 1000)


async def test_symlink_escaping_the_artifact_is_refused(tmp_path: Path) -> None:
    model = make_tree(tmp_path / "src")
    (tmp_path / "passwd").write_text("root:x:0:0")
    (model / "weights" / "evil").symlink_to(tmp_path / "passwd")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArtifact, match="symlink weights/evil points outside"):
        await pull_into(str(model), dest, 1_000_000)
    assert list(dest.iterdir()) == []


async def test_symlinks_inside_the_artifact_are_kept(tmp_path: Path) -> None:
    model = make_tree(tmp_path / "src")
    (model / "alias.json").symlink_to("config.json")
    (model / "w2").symlink_to("weights")
    dest = tmp_path / "dest"
    result = await pull_into(str(model), dest, 1_000_000)
    assert (dest / "alias.json").read_text() == '{"a": 1}'
    assert not (dest / "alias.json").is_symlink()
    assert (dest / "w2").is_symlink() and os.readlink(dest / "w2") == "weights"
    assert (dest / "w2" / "w.bin").read_bytes() == (model / "weights" / "w.bin").read_bytes()
    assert result.file_count == 3


async def test_directory_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    model = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArtifactTooLarge, match="over the limit of 100 bytes"):
        await pull_into(str(model), dest, 100)
    assert list(dest.iterdir()) == []


async def test_missing_path_and_remote_host(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="does not exist"):
        await pull_into(str(tmp_path / "nope"), tmp_path / "dest", 100)
    with pytest.raises(InvalidStorageUri, match="names host"):
        await pull_into("file://elsewhere/models/m", tmp_path / "dest", 100)
    with pytest.raises(InvalidStorageUri, match="absolute"):
        await pull_into("relative/model", tmp_path / "dest", 100)
