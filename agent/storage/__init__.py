"""Storage pullers: fetch a model artifact named by a URI into a local directory.

One ``Puller`` per scheme (``file``/plain paths, ``http(s)``, ``s3``), picked
by ``pull_into`` from ``PULLERS``. The node cache calls these on a miss.
"""

from agent.storage.base import Puller, PullResult, display_uri
from agent.storage.config import StorageConfig, StorageCredentials
from agent.storage.errors import ArtifactTooLarge, DiskFull, UnsafeArtifact
from agent.storage.http import HttpOptions, HttpPuller
from agent.storage.local import FilePuller
from agent.storage.pull import PULLERS, PullerSettings, pull_into, puller_for
from agent.storage.s3 import S3Options, S3Puller

__all__ = [
    "PULLERS",
    "ArtifactTooLarge",
    "DiskFull",
    "FilePuller",
    "HttpOptions",
    "HttpPuller",
    "PullResult",
    "Puller",
    "PullerSettings",
    "S3Options",
    "S3Puller",
    "StorageConfig",
    "StorageCredentials",
    "UnsafeArtifact",
    "display_uri",
    "pull_into",
    "puller_for",
]
