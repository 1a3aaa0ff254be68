"""The node cache: artifacts stored once per node as content-addressed zstd
blobs, with an SQLite index, a byte quota and LRU eviction (see ``node``)."""

from agent.cache.errors import (
    ArtifactTooLarge,
    BlobCorrupt,
    CacheDiskFull,
    CacheFull,
    UnsafeArtifact,
)
from agent.cache.index import BlobInfo
from agent.cache.node import MARKER, CacheStats, NodeCache, PruneResult
from agent.cache.pack import digest_of

__all__ = [
    "MARKER",
    "ArtifactTooLarge",
    "BlobCorrupt",
    "BlobInfo",
    "CacheDiskFull",
    "CacheFull",
    "CacheStats",
    "NodeCache",
    "PruneResult",
    "UnsafeArtifact",
    "digest_of",
]
