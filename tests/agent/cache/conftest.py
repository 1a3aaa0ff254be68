from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cache import NodeCache


def make_tree(root: Path, seed: int = 0) -> Path:
    """A small model directory: nested files, an empty dir, an executable,
    a relative symlink that stays inside."""
    rng = __import__("random").Random(seed)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "model.bin").write_bytes(rng.randbytes(300_000) + b"\0" * 300_000)
    (root / "config.json").write_text('{"name": "m"}')
    (root / "sub" / "weights.txt").write_text("w" * 10_000)
    run = root / "sub" / "deeper" / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "sub" / "link-to-config").symlink_to("../config.json")
    return root


def tree_contents(root: Path) -> dict[str, object]:
    """Everything that should survive a round trip, minus the unpack marker."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == ".meshlet-unpacked":
                continue
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = (p.read_bytes(), bool(p.stat().st_mode & 0o100))
    return out


def blob_files(root: Path) -> list[Path]:
    return sorted((root / "blobs").glob("*/*"))


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[NodeCache]:
    c = NodeCache(tmp_path / "cache", quota_bytes=64 << 20, owner="test")
    yield c
    c.close()
