"""``ArtifactStore``: artifacts fetched through the node cache, in-process, with
a real HTTP server for http:// and real files."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.artifacts import ArtifactStore
from agent.cache.node import NodeCache
from agent.errors import CapacityExhausted, Code, InvalidStorageUri, LoadFailed, MeshletError
from agent.metrics import Metrics
from agent.registry.spec import ModelSpec
from agent.storage.http import HttpOptions
from agent.storage.pull import PullerSettings
from tests.servers import FileServer

FAST_HTTP = HttpOptions(connect_timeout_s=2, read_timeout_s=5, max_attempts=1)
CONTENT = os.urandom(100_000) + b"\0" * 100_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "model.bin").write_bytes(CONTENT)
    with FileServer(root) as s:
        yield s


def make_store(tmp_path: Path, quota: int = 10**9, roots: tuple[Path, ...] = ()
               ) -> tuple[ArtifactStore, Metrics]:
    metrics = Metrics(CollectorRegistry())
    cache = NodeCache(tmp_path / "cache", quota, owner="test")
    store = ArtifactStore(
        cache, tmp_path / "work", lambda: PullerSettings(http=FAST_HTTP), metrics, roots
    )
    store.prepare()
    return store, metrics


def spec(model_id: str, uri: str) -> ModelSpec:
    return ModelSpec(model_id, uri, model_type="sklearn")


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_http_artifact_is_pulled_once_for_concurrent_loads(
    tmp_path: Path, server: FileServer
) -> None:
    store, metrics = make_store(tmp_path)
    uri = server.url("model.bin")
    got = await asyncio.gather(*(store.fetch(spec(f"m{i}", uri)) for i in range(8)))
    assert server.gets == {"/model.bin": 1}
    assert {a.path for a in got} == {got[0].path}
    assert got[0].path.read_bytes() == CONTENT
    assert got[0].size_bytes == len(CONTENT)
    assert count(metrics, "meshlet_cache_lookups_total", result="miss") == 1
    for artifact in got[:-1]:
        await store.release(artifact)
    assert got[0].path.exists(), "still held by one model"
    assert store.cache.stats().pinned_blobs == 1
    await store.release(got[-1])
    assert not got[0].path.exists(), "the unpacked copy goes with its last user"
    assert store.cache.stats().pinned_blobs == 0
    # The blob stays: the next load unpacks it without asking the server.
    again = await store.fetch(spec("m0", uri))
    assert again.path.read_bytes() == CONTENT
    assert server.gets == {"/model.bin": 1}
    assert count(metrics, "meshlet_cache_lookups_total", result="hit") >= 1


async def test_cached_artifact_survives_storage_going_down(
    tmp_path: Path, server: FileServer
) -> None:
    store, _ = make_store(tmp_path)
    uri = server.url("model.bin")
    await store.release(await store.fetch(spec("m", uri)))
    store.cache.close()
    server.failing = True
    reopened, _ = make_store(tmp_path)  # as after an agent restart
    artifact = await reopened.fetch(spec("m", uri))
    assert artifact.path.read_bytes() == CONTENT


async def test_corrupt_blob_is_removed_counted_and_fetched_again(
    tmp_path: Path, server: FileServer
) -> None:
    store, metrics = make_store(tmp_path)
    uri = server.url("model.bin")
    first = await store.fetch(spec("m", uri))
    await store.release(first)
    blob = store.cache.blob_path(first.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    artifact = await store.fetch(spec("m", uri))
    assert artifact.path.read_bytes() == CONTENT
    assert server.gets == {"/model.bin": 2}
    assert count(metrics, "meshlet_cache_corrupt_blobs_total") == 1
    assert store.cache.stats().corrupt_total == 1


async def test_storage_errors_name_the_uri(tmp_path: Path, server: FileServer) -> None:
    store, metrics = make_store(tmp_path)
    with pytest.raises(LoadFailed) as raised:
        await store.fetch(spec("m", server.url("missing.bin")))
    assert raised.value.code == Code.FAILED_PRECONDITION
    assert server.url("missing.bin") in raised.value.message
    assert "404" in raised.value.message
    server.failing = True
    with pytest.raises(LoadFailed, match="503"):
        await store.fetch(spec("m", server.url("model.bin")))
    assert count(metrics, "meshlet_storage_pull_failures_total") == 2
    assert list((tmp_path / "work" / "staging").iterdir()) == []


async def test_artifact_over_the_quota_is_resource_exhausted(
    tmp_path: Path, server: FileServer
) -> None:
    store, _ = make_store(tmp_path, quota=50_000)
    with pytest.raises(CapacityExhausted) as raised:
        await store.fetch(spec("m", server.url("model.bin")))
    assert raised.value.code == Code.RESOURCE_EXHAUSTED
    local = tmp_path / "served" / "model.bin"
    with pytest.raises(CapacityExhausted):
        await store.fetch(spec("m", str(local)))
    assert store.cache.stats().blobs == 0
    assert list((tmp_path / "work" / "staging").iterdir()) == []


async def test_file_artifacts_are_cached_straight_from_their_place(tmp_path: Path) -> None:
    model = tmp_path / "models" / "m1"
    (model / "sub").mkdir(parents=True)
    (model / "model-settings.json").write_text("{}")
    (model / "sub" / "weights").write_bytes(CONTENT)
    store, _ = make_store(tmp_path)
    artifact = await store.fetch(spec("m", f"file://{model}"))
    assert (artifact.path / "sub" / "weights").read_bytes() == CONTENT
    assert artifact.path != model
    # The same content under another path is stored once.
    twin = tmp_path / "models" / "m2"
    twin.mkdir()
    (twin / "model-settings.json").write_text("{}")
    (twin / "sub").mkdir()
    (twin / "sub" / "weights").write_bytes(CONTENT)
    other = await store.fetch(spec("m2", str(twin)))
    assert other.digest == artifact.digest
    assert store.cache.stats().blobs == 1
    assert store.cache.stats().keys == 2


async def test_file_uri_outside_the_permitted_roots_is_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "models"
    allowed.mkdir()
    (tmp_path / "secret").write_text("no")
    store, _ = make_store(tmp_path, roots=(allowed,))
    for uri in (f"{allowed}/../secret", f"file://{tmp_path}/secret"):
        with pytest.raises(InvalidStorageUri, match="outside the permitted roots"):
            store.check_uri(uri)
        with pytest.raises(InvalidStorageUri):
            await store.fetch(spec("m", uri))


async def test_symlink_out_of_an_artifact_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "secret").write_text("no")
    (model / "leak").symlink_to(tmp_path / "secret")
    store, _ = make_store(tmp_path)
    with pytest.raises(MeshletError, match=r"points outside|is absolute") as raised:
        await store.fetch(spec("m", str(model)))
    assert raised.value.code == Code.INVALID_ARGUMENT
    assert store.cache.stats().blobs == 0


async def test_missing_file_is_failed_precondition(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path)
    with pytest.raises(LoadFailed, match="does not exist"):
        await store.fetch(spec("m", str(tmp_path / "nope")))


async def test_prepare_keeps_complete_copies_and_removes_leftovers(
    tmp_path: Path, server: FileServer
) -> None:
    store, _ = make_store(tmp_path)
    kept = await store.fetch(spec("m", server.url("model.bin")))  # never released: a crash
    unpacked = tmp_path / "work" / "unpacked"
    (unpacked / ".half-done.unpack-x").mkdir()
    (unpacked / "stale").mkdir()
    (unpacked / "stale" / ".meshlet-unpacked").write_text("0" * 64)
    staged = tmp_path / "work" / "staging" / "partial"
    staged.write_bytes(b"x")
    store.cache.close()
    restarted, _ = make_store(tmp_path)
    assert sorted(p.name for p in unpacked.iterdir()) == [kept.path.parent.name]
    assert not staged.exists()
    again = await restarted.fetch(spec("m", server.url("model.bin")))
    assert again.path == kept.path
    assert again.path.read_bytes() == CONTENT
