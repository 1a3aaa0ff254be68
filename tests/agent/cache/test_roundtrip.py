from __future__ import annotations

import os
import shutil
from pathlib import Path

from agent.cache import MARKER, NodeCache, digest_of
from agent.cache.node import marker_text
from tests.agent.cache.conftest import blob_files, make_tree, tree_contents


def test_file_round_trip(cache: NodeCache, tmp_path: Path) -> None:
    src = tmp_path / "model.pkl"
    src.write_bytes(os.urandom(100_000) + b"x" * 500_000)
    info = cache.put("s3://b/model.pkl#v1", src)
    assert info.kind == "file" and info.size_bytes == 600_000
    assert 100_000 < info.compressed_bytes < 200_000
    assert cache.blob_path(info.digest).exists()

    out = cache.unpack("s3://b/model.pkl#v1", tmp_path / "dest")
    assert out == tmp_path / "dest" / "model.pkl"
    assert out.read_bytes() == src.read_bytes()
    assert (tmp_path / "dest" / MARKER).read_text() == marker_text(info.digest)


def test_directory_round_trip(cache: NodeCache, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    info = cache.put("file:///models/m", src)
    assert info.kind == "dir"
    got = cache.get("file:///models/m")
    assert got is not None and got.digest == info.digest

    out = cache.unpack(info.digest, tmp_path / "dest")
    assert out == tmp_path / "dest"
    assert tree_contents(out) == tree_contents(src)
    assert os.readlink(out / "sub" / "link-to-config") == "../config.json"


def test_get_of_unknown_key_is_none(cache: NodeCache) -> None:
    assert cache.get("nope") is None


def test_identical_artifacts_are_stored_once(cache: NodeCache, tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b, symlinks=True)
    ia = cache.put("model-a", a)
    ib = cache.put("model-b", b)
    assert ia.digest == ib.digest
    assert len(blob_files(cache.root)) == 1
    stats = cache.stats()
    assert (stats.blobs, stats.keys) == (1, 2)
    assert [i.key for i in cache.ls()] == ["model-a", "model-b"]
    # Both keys unpack; the file name of a file artifact is the key's own.
    f1, f2 = tmp_path / "one.bin", tmp_path / "two.bin"
    f1.write_bytes(b"same" * 1000)
    f2.write_bytes(b"same" * 1000)
    assert cache.put("f1", f1).digest == cache.put("f2", f2).digest
    assert cache.unpack("f2", tmp_path / "d2").name == "two.bin"


def test_digest_is_stable_across_repack(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    first = digest_of(a)
    assert digest_of(a) == first
    # Same content, different mtimes, permission bits and creation order.
    b = tmp_path / "b"
    for rel in sorted((p.relative_to(a) for p in a.rglob("*")), key=str, reverse=True):
        src, dst = a / rel, b / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.is_dir():
            dst.mkdir(exist_ok=True)
        else:
            shutil.copyfile(src, dst)
            dst.chmod(0o700 if os.access(src, os.X_OK) else 0o600)
            os.utime(dst, (1_000_000, 1_000_000))
    assert digest_of(b) == first
    (b / "config.json").write_text('{"name": "n"}')
    assert digest_of(b) != first


def test_unpack_is_skipped_when_dest_holds_a_verified_copy(
    cache: NodeCache, tmp_path: Path
) -> None:
    info = cache.put("m", make_tree(tmp_path / "src"))
    dest = tmp_path / "dest"
    cache.unpack("m", dest)
    inode = (dest / "model.bin").stat().st_ino
    cache.unpack("m", dest)
    assert (dest / "model.bin").stat().st_ino == inode  # not rewritten

    # A marker naming another digest, or none, means unpack again, replacing
    # whatever stale content was there.
    (dest / "stale.txt").write_text("old")
    (dest / MARKER).write_text("0" * 64)
    cache.unpack("m", dest)
    assert not (dest / "stale.txt").exists()
    assert (dest / MARKER).read_text() == marker_text(info.digest)
    assert (dest / "model.bin").stat().st_ino != inode


def test_pins_are_counted_and_cleared_for_the_same_owner(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    one = NodeCache(root, 1 << 20, owner="agent-1")
    two = NodeCache(root, 1 << 20, owner="agent-2")
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    info = one.put("k", f)
    assert one.pin("k") == 1 and one.pin(info.digest) == 2 and two.pin("k") == 3
    assert one.unpin("k") == 2
    assert two.stats().pinned_blobs == 1
    # agent-1 restarts: its pins go, agent-2's stay.
    one.close()
    one = NodeCache(root, 1 << 20, owner="agent-1")
    got = one.get("k")
    assert got is not None and got.pins == 1
    # The second agent reads what the first wrote.
    assert two.unpack("k", tmp_path / "d").read_bytes() == b"abc"
    one.close()
    two.close()


def test_copy_from_an_earlier_boot_is_unpacked_again(tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights" * 1000)
    cache = NodeCache(tmp_path / "cache", 10**9, owner="t")
    info = cache.put("k", src)
    dest = tmp_path / "dest"
    cache.unpack(info, dest)
    (dest / "model.bin").write_bytes(b"")  # lost in a power cut: never fsynced
    (dest / MARKER).write_text(f"{info.digest} another-boot")
    assert cache.unpack(info, dest).read_bytes() == b"weights" * 1000
    assert (dest / MARKER).read_text() == marker_text(info.digest)
