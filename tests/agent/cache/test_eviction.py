from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cache import ArtifactTooLarge, CacheFull, NodeCache
from agent.errors import CapacityExhausted, Code
from tests.agent.cache.conftest import blob_files

KIB = 1024


def _random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))  # incompressible: csize ~ size
    return path


def test_lru_eviction_respects_pins_and_quota(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", quota_bytes=350 * KIB)
    for name in "abc":
        cache.put(name, _random_file(tmp_path / name, 100 * KIB))
    assert cache.get("a") is not None  # a is now the most recent: LRU is b, c, a
    cache.pin("b")

    cache.put("d", _random_file(tmp_path / "d", 100 * KIB))
    assert cache.get("c") is None  # b was older but pinned
    assert all(cache.get(k) for k in "abd")
    stats = cache.stats()
    assert stats.used_bytes <= 350 * KIB and stats.evicted_total == 1
    assert len(blob_files(cache.root)) == 3

    # With everything pinned, nothing fits; nothing changes.
    cache.pin("a")
    cache.pin("d")
    before = cache.ls()
    with pytest.raises(CacheFull):
        cache.put("e", _random_file(tmp_path / "e", 100 * KIB))
    assert cache.ls() == before and len(blob_files(cache.root)) == 3
    assert list((cache.root / "tmp").iterdir()) == []

    cache.unpin("a")
    cache.put("e", tmp_path / "e")
    assert cache.get("a") is None and cache.get("e") is not None
    cache.close()


def test_evict_to_fit_frees_least_recent_first(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", quota_bytes=500 * KIB)
    infos = [cache.put(n, _random_file(tmp_path / n, 100 * KIB)) for n in "abcd"]
    evicted = cache.evict_to_fit(250 * KIB)
    assert evicted == [infos[0].digest, infos[1].digest]
    assert cache.stats().used_bytes + 250 * KIB <= 500 * KIB
    with pytest.raises(ArtifactTooLarge):
        cache.evict_to_fit(501 * KIB)
    cache.close()


def test_artifact_larger_than_quota_is_refused(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", quota_bytes=50 * KIB)
    with pytest.raises(ArtifactTooLarge) as e:
        cache.put("big", _random_file(tmp_path / "big", 100 * KIB))
    assert isinstance(e.value, CapacityExhausted)
    assert e.value.code == Code.RESOURCE_EXHAUSTED
    assert cache.get("big") is None and blob_files(cache.root) == []
    assert list((cache.root / "tmp").iterdir()) == []
    # Compressible content of the same raw size fits: the quota is on disk bytes.
    (tmp_path / "zeros").write_bytes(b"\0" * 100 * KIB)
    assert cache.put("zeros", tmp_path / "zeros").compressed_bytes < 50 * KIB
    cache.close()


def test_prune_removes_orphans_and_unreferenced(cache: NodeCache, tmp_path: Path) -> None:
    keep = cache.put("keep", _random_file(tmp_path / "keep", KIB))
    gone = cache.put("gone", _random_file(tmp_path / "gone", KIB))
    assert cache.forget("gone")
    orphan = cache.root / "blobs" / "ab" / ("ab" + "0" * 62 + ".zst")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"junk")
    stale = cache.root / "tmp" / "put-dead.tmp"
    stale.write_bytes(b"partial")

    result = cache.prune()
    assert (result.temps, result.orphan_files, result.unreferenced) == (1, 1, 1)
    assert not orphan.exists() and not stale.exists()
    assert not cache.blob_path(gone.digest).exists()
    assert blob_files(cache.root) == [cache.blob_path(keep.digest)]
