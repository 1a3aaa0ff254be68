"""``meshlet cache ls|stats|prune`` on a real cache directory, no agent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cache.node import NodeCache
from agent.cli.main import main as cli


def fill(root: Path, tmp_path: Path) -> NodeCache:
    cache = NodeCache(root, 10**9, owner="agent-a")
    for name in ("kept", "idle"):
        src = tmp_path / f"{name}.bin"
        src.write_bytes(os.urandom(50_000))
        info = cache.put(f"file:///{name}.bin", src)
        if name == "kept":
            cache.pin(info)  # a loaded model uses it
    return cache


def test_ls_stats_and_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cache"
    fill(root, tmp_path).close()
    assert cli(["cache", "ls", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "file:///kept.bin" in out and "file:///idle.bin" in out
    assert out.rstrip().endswith("2 entries")

    assert cli(["cache", "stats", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "blobs:      2 (1 pinned by loaded models)" in out

    (root / "blobs" / "ff").mkdir(exist_ok=True)
    (root / "blobs" / "ff" / f"{'f' * 64}.zst").write_bytes(b"orphan")
    assert cli(["cache", "prune", "--max-bytes", "0", "--cache-dir", str(root)]) == 0
    captured = capsys.readouterr()
    assert "0 dead temp files, 1 orphan blob file, 0 rows of missing blobs" in captured.out
    assert "evicted 1 least-recently-used blob;" in captured.out
    assert "pinned by models loaded now" in captured.err
    cache = NodeCache(root, 10**9, owner="other")
    assert [i.key for i in cache.ls()] == ["file:///kept.bin"]
    cache.close()


def test_missing_cache_dir_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    assert cli(["cache", "stats", "--cache-dir", str(tmp_path / "nope")]) == 1
    assert "no node cache at" in capsys.readouterr().err
