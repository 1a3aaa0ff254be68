from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard as zstd

from agent.cache import BlobCorrupt, CacheDiskFull, NodeCache, UnsafeArtifact, compress
from agent.errors import Code
from tests.agent.cache.conftest import blob_files, make_tree
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[3]


def _artifact(tmp_path: Path, kind: str) -> Path:
    if kind == "dir":
        return make_tree(tmp_path / "src")
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(200_000) + b"z" * 800_000)
    return f


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_flipped_byte_is_detected_and_the_blob_removed(
    cache: NodeCache, tmp_path: Path, kind: str
) -> None:
    info = cache.put("m", _artifact(tmp_path, kind))
    blob = cache.blob_path(info.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    with pytest.raises(BlobCorrupt) as e:
        cache.unpack("m", tmp_path / "dest")
    assert e.value.code == Code.DATA_LOSS and e.value.digest == info.digest
    assert not blob.exists() and cache.get("m") is None
    assert cache.stats().corrupt_total == 1
    assert not (tmp_path / "dest").exists()  # nothing half-written is left
    assert [p.name for p in tmp_path.iterdir() if ".unpack-" in p.name] == []
    # Fetched again, it works.
    cache.put("m", tmp_path / ("src" if kind == "dir" else "model.bin"))
    cache.unpack("m", tmp_path / "dest")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_truncated_blob_is_detected(cache: NodeCache, tmp_path: Path, kind: str) -> None:
    info = cache.put("m", _artifact(tmp_path, kind))
    blob = cache.blob_path(info.digest)
    os.truncate(blob, blob.stat().st_size // 2)
    with pytest.raises(BlobCorrupt):
        cache.unpack(info.digest, tmp_path / "dest")
    assert not blob.exists() and cache.stats().corrupt_total == 1


def test_valid_zstd_with_wrong_content_fails_the_digest(cache: NodeCache, tmp_path: Path) -> None:
    info = cache.put("m", _artifact(tmp_path, "file"))
    blob = cache.blob_path(info.digest)
    blob.write_bytes(zstd.ZstdCompressor(write_checksum=True).compress(b"other content"))
    with pytest.raises(BlobCorrupt, match="digest mismatch"):
        cache.unpack("m", tmp_path / "dest")
    assert cache.get("m") is None


def test_missing_blob_file_is_a_miss(cache: NodeCache, tmp_path: Path) -> None:
    info = cache.put("m", _artifact(tmp_path, "file"))
    cache.blob_path(info.digest).unlink()
    assert cache.get("m") is None
    assert cache.stats().blobs == 0


def test_enospc_during_put_leaves_no_temp_and_index_unchanged(
    cache: NodeCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.put("before", _artifact(tmp_path, "dir"))
    before, blobs = cache.ls(), blob_files(cache.root)
    real_write = compress.BlobSink.write
    calls = []

    def full_disk(self: compress.BlobSink, data: bytes, /) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(compress.BlobSink, "write", full_disk)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4 << 20))
    with pytest.raises(CacheDiskFull, match="no space left") as e:
        cache.put("big", big)
    assert e.value.code == Code.RESOURCE_EXHAUSTED
    assert len(calls) > 1
    assert list((cache.root / "tmp").iterdir()) == []
    assert cache.ls() == before and blob_files(cache.root) == blobs
    monkeypatch.undo()
    assert cache.put("big", big).size_bytes == 4 << 20


@pytest.mark.parametrize(
    "target", ["../outside.txt", "/etc/passwd", "sub/../../outside.txt", "hop/../.."]
)
def test_symlink_escaping_the_artifact_is_refused(
    cache: NodeCache, tmp_path: Path, target: str
) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    src = make_tree(tmp_path / "src")
    (src / "hop").symlink_to("sub/deeper")  # inside; used by the last case
    (src / "evil").symlink_to(target)
    with pytest.raises(UnsafeArtifact, match="evil"):
        cache.put("m", src)
    assert blob_files(cache.root) == [] and cache.get("m") is None
    assert list((cache.root / "tmp").iterdir()) == []


def _tar(*members: tuple[str, bytes | None, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link.startswith("sym:"):
                info.type, info.linkname = tarfile.SYMTYPE, link[4:]
            elif link.startswith("hard:"):
                info.type, info.linkname = tarfile.LNKTYPE, link[5:]
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [("ok.txt", b"fine", ""), ("../evil.txt", b"pwned", "")],
        [("/tmp/evil-abs.txt", b"pwned", "")],
        [("a/../../evil.txt", b"pwned", "")],
        [("lnk", None, "sym:.."), ("lnk/evil.txt", b"pwned", "")],
        [("lnk", None, "sym:../../.."), ("ok", b"x", "")],
        [("lnk", None, "sym:/etc"), ("ok", b"x", "")],
        [("hl", None, "hard:../evil.txt")],
    ],
    ids=[
        "dotdot",
        "absolute",
        "nested-dotdot",
        "write-through-link",
        "link-out",
        "abs-link",
        "hardlink",
    ],
)
def test_malicious_tar_blob_never_writes_outside_dest(
    cache: NodeCache, tmp_path: Path, members: list[tuple[str, bytes | None, str]]
) -> None:
    stream = _tar(*members)
    digest = hashlib.sha256(stream).hexdigest()
    blob = cache.blob_path(digest)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(zstd.ZstdCompressor().compress(stream))
    with sqlite3.connect(cache.root / "index.sqlite3") as db:
        db.execute("INSERT INTO blobs VALUES (?, 'dir', 'x', ?, ?, 1)", (digest, len(stream), 1))
        db.execute("INSERT INTO keys VALUES ('bad', ?, 'x')", (digest,))
    dest = tmp_path / "a" / "b" / "dest"
    dest.parent.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*") if cache.root not in p.parents)

    with pytest.raises(UnsafeArtifact):
        cache.unpack("bad", dest)
    after = sorted(p for p in tmp_path.rglob("*") if cache.root not in p.parents)
    assert after == before  # no dest, no evil file anywhere, no work dir left
    assert cache.stats().corrupt_total == 0  # the digest was right: not damage


_CHILD = """
import sys
from pathlib import Path
from agent.cache import NodeCache, compress

real = compress.BlobSink.write
def write(self, data):
    n = real(self, data)
    if self.count > (1 << 20):
        sys.stdin.read()  # hold here, mid-write, until killed
    return n
compress.BlobSink.write = write
NodeCache(Path(sys.argv[1]), 1 << 30).put("big", Path(sys.argv[2]))
"""


def test_sigkill_mid_put_leaves_nothing_a_read_accepts(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(16 << 20) + bytes(16 << 20))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), str(src)], stdin=subprocess.PIPE, env=env
    )
    try:

        def temp_written() -> bool:
            assert child.poll() is None, "the child exited before it was killed"
            temps = list((root / "tmp").glob("put-*")) if (root / "tmp").exists() else []
            return any(t.stat().st_size > (1 << 20) for t in temps)

        wait_for(temp_written, timeout_s=60, what="a temp blob over 1 MiB")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stdin is not None
        child.stdin.close()

    assert len(list((root / "tmp").iterdir())) == 1  # the dead writer's temp
    cache = NodeCache(root, 1 << 30)
    assert list((root / "tmp").iterdir()) == []  # swept: its writer is dead
    assert cache.get("big") is None and blob_files(root) == []
    with pytest.raises(Exception, match="nothing cached"):
        cache.unpack("big", tmp_path / "dest")
    info = cache.put("big", src)
    assert cache.unpack("big", tmp_path / "dest").read_bytes() == src.read_bytes()
    assert info.size_bytes == 32 << 20
    cache.close()


def test_temp_of_a_live_writer_is_not_swept(cache: NodeCache) -> None:
    temp = cache.root / "tmp" / "put-live.tmp"
    with open(temp, "wb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        other = NodeCache(cache.root, cache.quota_bytes, owner="other")
        assert temp.exists() and other.prune().temps == 0
        other.close()
    assert cache.prune().temps == 1
