"""Compressing an artifact's canonical stream into an open blob file.

The blob is one zstd frame with zstd's own checksum, so damage usually shows
as a decoder error before the SHA-256 check even runs. Large artifacts are
compressed by several zstd worker threads (the output stays one frame, and
the digest is over the uncompressed stream, so it does not depend on them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard as zstd

from agent.cache.errors import ArtifactTooLarge
from agent.cache.pack import Artifact, HashingWriter, write_stream


@dataclass(frozen=True, slots=True)
class Written:
    digest: str  # SHA-256 of the uncompressed stream
    size_bytes: int  # uncompressed
    compressed_bytes: int


class BlobSink:
    """Where the compressor writes: the blob file, stopping at ``limit`` bytes."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self._f = f
        self._limit = limit
        self.count = 0

    def write(self, data: bytes, /) -> int:
        self.count += len(data)
        if self.count > self._limit:
            raise ArtifactTooLarge(
                f"artifact compresses to more than the cache quota of {self._limit} bytes"
            )
        self._f.write(data)
        return len(data)


def compress_into(
    artifact: Artifact, f: BinaryIO, *, limit: int, level: int, threads: int
) -> Written:
    """Write the compressed artifact to ``f`` and fsync it."""
    sink = BlobSink(f, limit)
    cctx = zstd.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    size = artifact.size_bytes if artifact.kind == "file" else -1
    # No ``with``: on error, closing would write the frame end and mask the
    # real exception (e.g. ENOSPC) with a zstd "size is incorrect" error.
    zw = cctx.stream_writer(cast(BinaryIO, sink), size=size, closefd=False)
    hw = HashingWriter(zw)
    write_stream(artifact, hw)
    zw.close()  # ends the frame; closefd=False leaves ``f`` open
    f.flush()
    os.fsync(f.fileno())
    return Written(hw.sha.hexdigest(), hw.count, sink.count)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
