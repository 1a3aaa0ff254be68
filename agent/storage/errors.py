"""Errors the storage pullers add to ``agent.errors``.

Each is a subclass of an existing class, so the gRPC mapping stays in one table::

    LoadFailed                 FAILED_PRECONDITION
    └── UnsafeArtifact         the artifact links or names a path outside itself
    CapacityExhausted          RESOURCE_EXHAUSTED
    ├── ArtifactTooLarge       the artifact is over the pull's byte limit
    └── DiskFull               the node's disk filled up during a pull (ENOSPC)
"""

from __future__ import annotations

from agent.errors import CapacityExhausted, LoadFailed


class UnsafeArtifact(LoadFailed):
    """A symlink or object key inside the artifact points outside it."""


class ArtifactTooLarge(CapacityExhausted):
    """The artifact is larger than the byte limit given to the pull."""


class DiskFull(CapacityExhausted):
    """Writing the artifact failed with ENOSPC/EDQUOT; the partial files were removed."""
