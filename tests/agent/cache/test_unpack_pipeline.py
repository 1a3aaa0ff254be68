"""The unpack pipeline: a ring of decompression buffers hashed on a second
thread. Tiny buffers make every read cross buffer boundaries and wrap the ring."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
import threading
from pathlib import Path

import pytest
import zstandard as zstd

from agent.cache import BlobCorrupt, NodeCache
from agent.cache.pack import Kind, scan, write_stream
from agent.cache.unpack import VerifyingReader, extract
from tests.agent.cache.conftest import make_tree, tree_contents


def _reader(data: bytes, bufsize: int, buffers: int = 2) -> VerifyingReader:
    zr = zstd.ZstdDecompressor().stream_reader(io.BytesIO(zstd.ZstdCompressor().compress(data)))
    return VerifyingReader(zr, buffers=buffers, bufsize=bufsize)


@pytest.mark.parametrize("bufsize", [1, 7, 4096])
def test_reader_returns_every_byte_in_order_and_hashes_all_of_it(bufsize: int) -> None:
    rng = random.Random(bufsize)
    data = rng.randbytes(3_000 if bufsize == 1 else 30_000)
    reader = _reader(data, bufsize)
    got = bytearray()
    with reader:
        while reader.tell() < len(data) - 100:
            op = rng.choice(["read", "view", "seek"])
            n = rng.randint(0, min(700, len(data) - reader.tell()))
            if op == "read":
                got += reader.read(n)
            elif op == "view":
                got += reader.readview(n)
            else:
                start = reader.tell()
                assert reader.seek(start + n) == start + n
                got += data[start : start + n]  # skipped: not returned, still hashed
            assert reader.tell() == len(got)
        with pytest.raises(tarfile.StreamError, match="backwards"):
            reader.seek(reader.tell() - 1)
        got += reader.read()
        assert reader.read(10) == b"" and not reader.readview(10)
        assert bytes(got) == data
        assert reader.hexdigest() == hashlib.sha256(data).hexdigest()
        assert reader.count == len(data)


def test_digest_covers_what_was_not_read_only_after_drain() -> None:
    data = os.urandom(10_000)
    reader = _reader(data, 64)
    with reader:
        reader.read(100)
        partial = reader.hexdigest()
        reader.drain()
        assert reader.hexdigest() == hashlib.sha256(data).hexdigest() != partial


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_extract_across_many_small_buffers(tmp_path: Path, kind: Kind) -> None:
    src = make_tree(tmp_path / "src") if kind == "dir" else tmp_path / "model.bin"
    if kind == "file":
        src.write_bytes(os.urandom(50_000) + b"x" * 50_000)
    stream = io.BytesIO()
    write_stream(scan(src), stream)
    reader = _reader(stream.getvalue(), bufsize=1000, buffers=3)
    dest = tmp_path / "dest"
    dest.mkdir()
    with reader:
        digest = extract(reader, kind, src.name, dest)
    assert digest == hashlib.sha256(stream.getvalue()).hexdigest()
    if kind == "dir":
        assert tree_contents(dest) == tree_contents(src)
    else:
        assert (dest / src.name).read_bytes() == src.read_bytes()


def _big_tree(root: Path) -> Path:
    make_tree(root)
    # Larger than the whole ring (4 x 1 MiB): buffers are reused mid-member.
    (root / "weights.bin").write_bytes(os.urandom(3 << 20) + bytes(3 << 20))
    return root


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_artifact_larger_than_the_ring_round_trips(
    cache: NodeCache, tmp_path: Path, kind: str
) -> None:
    src = _big_tree(tmp_path / "src")
    if kind == "file":
        src = src / "weights.bin"
    cache.put("m", src)
    out = cache.unpack("m", tmp_path / "dest")
    if kind == "dir":
        assert tree_contents(out) == tree_contents(src)
    else:
        assert out.read_bytes() == src.read_bytes()
    assert _unpack_threads() == []


def _unpack_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cache-unpack-sha256"]


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_damage_near_the_end_of_a_large_blob_is_caught_and_no_thread_is_left(
    cache: NodeCache, tmp_path: Path, kind: str
) -> None:
    src = _big_tree(tmp_path / "src")
    if kind == "file":
        src = src / "weights.bin"
    info = cache.put("m", src)
    blob = cache.blob_path(info.digest)
    data = bytearray(blob.read_bytes())
    data[-len(data) // 20] ^= 0x40
    blob.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupt):
        cache.unpack("m", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert _unpack_threads() == []
