"""Choosing a puller, the storage config, and the failure paths every puller
shares (full disk, secrets kept out of messages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import Code, InvalidStorageUri, LoadFailed
from agent.storage import (
    ArtifactTooLarge,
    DiskFull,
    FilePuller,
    HttpPuller,
    S3Puller,
    StorageConfig,
    UnsafeArtifact,
    display_uri,
    pull_into,
    puller_for,
)
from agent.storage import local as local_module
from agent.storage.base import safe_relpath
from agent.storage.s3 import store_answer
from tests.agent.storage.disk import filling_disk


@pytest.mark.parametrize(
    ("uri", "cls"),
    [
        ("/mnt/models/m", FilePuller),
        ("file:///mnt/models/m", FilePuller),
        ("http://host/m.bin", HttpPuller),
        ("HTTPS://host/m.bin", HttpPuller),
        ("s3://bucket/m", S3Puller),
    ],
)
def test_puller_is_picked_by_scheme(uri: str, cls: type) -> None:
    assert type(puller_for(uri)) is cls


async def test_unknown_scheme_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidStorageUri, match="scheme 'gs' is not served") as info:
        await pull_into("gs://bucket/m", tmp_path / "dest", 100)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_error_codes() -> None:
    assert UnsafeArtifact("x").code is Code.FAILED_PRECONDITION
    assert ArtifactTooLarge("x").code is Code.RESOURCE_EXHAUSTED
    assert DiskFull("x").code is Code.RESOURCE_EXHAUSTED


def test_display_uri_hides_passwords_and_signatures() -> None:
    shown = display_uri("https://me:pw@h/m.bin?X-Amz-Signature=s1g&X-Amz-Credential=c&v=2")
    assert "pw" not in shown and "s1g" not in shown and "=c&" not in shown
    assert shown.startswith("https://me:***@h/m.bin?") and "v=2" in shown


@pytest.mark.parametrize("name", ["../x", "a/../../x", "", "/", "a\\b"])
def test_remote_names_cannot_leave_the_destination(name: str) -> None:
    with pytest.raises(UnsafeArtifact):
        safe_relpath("s3://b/p", name)


def test_store_answer_scrubs_the_secret() -> None:
    exc = RuntimeError(
        "Error performing GET http://h/b/k - Server returned non-2xx status code: 403 Forbidden: "
        "<Error><Code>AccessDenied</Code><Message>key TOPSECRET refused</Message></Error>"
        "\n\nDebug source: TOPSECRET"
    )
    answer = store_answer(exc, "TOPSECRET")
    assert answer == "RuntimeError: HTTP 403 Forbidden: AccessDenied (key *** refused)"


def test_storage_config_reads_a_mounted_secret(tmp_path: Path) -> None:
    (tmp_path / "..data").mkdir()
    (tmp_path / ".hidden").write_text("{}")
    (tmp_path / "broken").write_text("{not json SECRET")
    (tmp_path / "list").write_text("[]")
    (tmp_path / "default").write_text(json.dumps({
        "type": "s3", "access_key_id": "AK", "secret_access_key": "SK-secret",
        "endpoint_url": "http://minio:9000", "bucket": "models", "region": "eu-west-1",
    }))
    (tmp_path / "gcs").write_text(json.dumps({"type": "gcs", "bucket": "g"}))
    config = StorageConfig.from_dir(tmp_path)
    assert sorted(config.entries) == ["default", "gcs"]
    creds = config.select("anything")
    assert (creds.key, creds.endpoint_url, creds.region) == ("default", "http://minio:9000",
                                                             "eu-west-1")
    assert "SK-secret" not in repr(creds) and "SK-secret" not in repr(config)
    # A key of another type is never used for s3.
    with pytest.raises(LoadFailed, match="has type 'gcs'"):
        config.select("g", storage_key="gcs")


def test_no_matching_key(tmp_path: Path) -> None:
    (tmp_path / "other").write_text(json.dumps({"type": "s3", "bucket": "b2"}))
    with pytest.raises(LoadFailed, match="no storage config key for bucket 'b1'"):
        StorageConfig.from_dir(tmp_path).select("b1")
    assert StorageConfig.from_dir(tmp_path / "missing").entries == {}


async def test_full_disk_during_a_file_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 100)
    (src / "b.bin").write_bytes(b"b" * (3 << 20))
    opened: list[Path] = []
    monkeypatch.setattr(local_module, "open_new",
                        filling_disk(local_module.open_new, 1 << 20, opened))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("the caller's")
    with pytest.raises(DiskFull, match="no space left on device") as info:
        await pull_into(str(src), dest, 10 << 20)
    assert info.value.code is Code.RESOURCE_EXHAUSTED
    assert [p.name for p in opened] == ["a.bin", "b.bin"]
    # What the pull wrote is gone; what was there before stays.
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
