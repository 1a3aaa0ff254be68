"""s3:// pulls against a real moto server, run as its own process, with
authentication on (so a wrong secret is refused the way AWS refuses it)."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from agent.errors import LoadFailed
from agent.storage import ArtifactTooLarge, S3Options, S3Puller, StorageConfig
from tests.servers import moto_server

SINGLE = os.urandom(3000)
CONFIG_JSON = b'{"name": "m"}'
WEIGHTS = os.urandom(7000)
OTHER = b"other bucket's model"
WRONG_SECRET = "wR0ng-s3cret-Do-Not-Leak-9f8e7d"
FAST = S3Options(connect_timeout_s=2, read_timeout_s=10, max_retries=0)


@dataclass(frozen=True)
class Moto:
    endpoint: str
    access_key_id: str
    secret_access_key: str


def seed(endpoint: str) -> tuple[str, str]:
    """Buckets, objects and an IAM user with an access key, made while moto
    still accepts anything; returns the key."""
    anon = {"endpoint_url": endpoint, "region_name": "us-east-1",
            "aws_access_key_id": "seed", "aws_secret_access_key": "seed"}
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="puller")
    iam.put_user_policy(
        UserName="puller", PolicyName="all",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}),
    )
    key = iam.create_access_key(UserName="puller")["AccessKey"]
    s3 = boto3.client("s3", **anon)
    s3.create_bucket(Bucket="models")
    s3.create_bucket(Bucket="other-bucket")
    s3.put_object(Bucket="models", Key="single/model.bin", Body=SINGLE)
    s3.put_object(Bucket="models", Key="dir/config.json", Body=CONFIG_JSON)
    s3.put_object(Bucket="models", Key="dir/weights/w.bin", Body=WEIGHTS)
    s3.put_object(Bucket="models", Key="dir-sibling/x.bin", Body=b"not under dir/")
    s3.put_object(Bucket="other-bucket", Key="m/model.bin", Body=OTHER)
    for client in (iam, s3):
        client.close()
    # From now on every request must be signed with a real key.
    urllib.request.urlopen(urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"},
    )).close()
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        access_key_id, secret = seed(endpoint)
        yield Moto(endpoint, access_key_id, secret)


def write_config(root: Path, moto: Moto, **keys: dict[str, str]) -> StorageConfig:
    """One file per key, as a mounted Secret looks (with its ..data link)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "..data").mkdir()
    for name, overrides in keys.items():
        doc = {"type": "s3", "access_key_id": moto.access_key_id,
               "secret_access_key": moto.secret_access_key,
               "endpoint_url": moto.endpoint, "region": "us-east-1", "bucket": ""}
        doc.update(overrides)
        (root / name).write_text(json.dumps(doc))
    return StorageConfig.from_dir(root)


def fresh(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest


async def test_single_object(moto: Moto, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", moto, default={})
    dest = fresh(tmp_path)
    result = await S3Puller(config, FAST).pull("s3://models/single/model.bin", dest, 1 << 20)
    assert result.path == dest / "model.bin"
    assert result.path.read_bytes() == SINGLE
    assert (result.bytes_written, result.file_count, result.is_dir) == (len(SINGLE), 1, False)


@pytest.mark.parametrize("uri", ["s3://models/dir", "s3://models/dir/"])
async def test_prefix_becomes_a_directory(moto: Moto, tmp_path: Path, uri: str) -> None:
    config = write_config(tmp_path / "cfg", moto, default={})
    dest = fresh(tmp_path)
    result = await S3Puller(config, FAST).pull(uri, dest, 1 << 20)
    assert result.is_dir and result.path == dest
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "config.json", "weights/w.bin",
    ]
    assert (dest / "weights" / "w.bin").read_bytes() == WEIGHTS
    assert (result.bytes_written, result.file_count) == (len(CONFIG_JSON) + len(WEIGHTS), 2)


async def test_wrong_secret_fails_without_leaking_it(moto: Moto, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", moto, default={"secret_access_key": WRONG_SECRET})
    uri = "s3://models/single/model.bin"
    dest = fresh(tmp_path)
    with pytest.raises(LoadFailed) as info:
        await S3Puller(config, FAST).pull(uri, dest, 1 << 20)
    message = info.value.message
    assert uri in message
    assert "HTTP 403" in message and "SignatureDoesNotMatch" in message
    assert WRONG_SECRET not in message and WRONG_SECRET not in str(info.value)
    assert moto.secret_access_key not in message
    assert list(dest.iterdir()) == []


async def test_missing_object_names_the_uri(moto: Moto, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", moto, default={})
    uri = "s3://models/no/such/model.bin"
    with pytest.raises(LoadFailed) as info:
        await S3Puller(config, FAST).pull(uri, fresh(tmp_path), 1 << 20)
    assert f"could not pull {uri}" in info.value.message


async def test_missing_bucket(moto: Moto, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", moto, default={})
    uri = "s3://no-such-bucket/m.bin"
    with pytest.raises(LoadFailed) as info:
        await S3Puller(config, FAST).pull(uri, fresh(tmp_path), 1000)
    assert uri in info.value.message and "NoSuchBucket" in info.value.message


async def test_prefix_over_the_limit_leaves_nothing(moto: Moto, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", moto, default={})
    dest = fresh(tmp_path)
    with pytest.raises(ArtifactTooLarge, match="over the limit of 5000 bytes"):
        await S3Puller(config, FAST).pull("s3://models/dir", dest, 5000)
    assert list(dest.iterdir()) == []


async def test_bucket_match_wins_over_default(moto: Moto, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "cfg", moto,
        default={"secret_access_key": WRONG_SECRET},
        mine={"bucket": "other-bucket"},
    )
    puller = S3Puller(config, FAST)
    result = await puller.pull("s3://other-bucket/m/model.bin", fresh(tmp_path), 1000)
    assert result.path.read_bytes() == OTHER
    # The models bucket matches no key, so "default" (with its wrong secret) is used.
    with pytest.raises(LoadFailed, match="storage key 'default'"):
        await puller.pull("s3://models/single/model.bin", tmp_path / "dest2", 1 << 20)


async def test_default_s3_is_the_last_fallback(moto: Moto, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", moto, default_s3={})
    result = await S3Puller(config, FAST).pull(
        "s3://models/single/model.bin", fresh(tmp_path), 1 << 20
    )
    assert result.path.read_bytes() == SINGLE


async def test_explicit_storage_key(moto: Moto, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "cfg", moto,
        default={"secret_access_key": WRONG_SECRET}, chosen={},
    )
    puller = S3Puller(config, FAST)
    result = await puller.pull(
        "s3://models/single/model.bin", fresh(tmp_path), 1 << 20, storage_key="chosen"
    )
    assert result.path.read_bytes() == SINGLE
    with pytest.raises(LoadFailed, match="storage key 'absent' is not in the storage config"):
        await puller.pull("s3://models/single/model.bin", tmp_path / "d2", 1 << 20,
                          storage_key="absent")
