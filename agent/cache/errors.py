"""Errors of the node cache, placed in the tree of ``agent.errors``::

    MeshletError
    ├── InvalidRequest
    │   └── UnsafeArtifact         a symlink escaping the artifact, a tar member
    │                              escaping dest, a device file: refused
    ├── CapacityExhausted
    │   ├── ModelTooLarge
    │   │   └── ArtifactTooLarge   the compressed artifact exceeds the whole quota
    │   ├── CacheFull              everything that could be evicted is pinned
    │   └── CacheDiskFull          ENOSPC while writing a blob; nothing was kept
    └── BlobCorrupt                DATA_LOSS: digest mismatch or truncation;
                                   the blob is already deleted, fetch again
"""

from __future__ import annotations

from agent.errors import CapacityExhausted, Code, InvalidRequest, MeshletError, ModelTooLarge


class UnsafeArtifact(InvalidRequest):
    pass


class ArtifactTooLarge(ModelTooLarge):
    pass


class CacheFull(CapacityExhausted):
    pass


class CacheDiskFull(CapacityExhausted):
    pass


class BlobCorrupt(MeshletError):
    """The blob failed verification and has been removed from the cache; the
    caller should pull the artifact from storage again."""

    code = Code.DATA_LOSS

    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(f"cache blob {digest} is corrupt ({reason}); it was removed")
        self.digest = digest
        self.reason = reason
