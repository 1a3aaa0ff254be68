"""Pick a puller by URI scheme, from a name -> class table, and pull."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from agent.errors import InvalidStorageUri
from agent.storage.base import Puller, PullResult, display_uri
from agent.storage.config import StorageConfig
from agent.storage.http import HttpOptions, HttpPuller
from agent.storage.local import FilePuller
from agent.storage.s3 import S3Options, S3Puller

#: scheme -> puller class; "" is a plain absolute path.
PULLERS: Mapping[str, type[Puller]] = {
    "": FilePuller,
    "file": FilePuller,
    "http": HttpPuller,
    "https": HttpPuller,
    "s3": S3Puller,
}


@dataclass(frozen=True, slots=True)
class PullerSettings:
    """What the pullers are built from."""

    allowed_roots: Sequence[str | os.PathLike[str]] = ()
    """Directories file URIs must resolve inside; empty = anywhere."""
    storage_config: StorageConfig = field(default_factory=StorageConfig)
    """Credentials for s3:// (ModelMesh storage-config format)."""
    http: HttpOptions = field(default_factory=HttpOptions)
    s3: S3Options = field(default_factory=S3Options)


def scheme_of(uri: str) -> str:
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "" and not uri.startswith("/"):
        raise InvalidStorageUri(f"storage uri {display_uri(uri)!r} is neither a url nor an "
                                "absolute path")
    return scheme


def puller_for(uri: str, settings: PullerSettings | None = None) -> Puller:
    """A puller for ``uri``'s scheme; ``InvalidStorageUri`` when none serves it."""
    settings = settings or PullerSettings()
    scheme = scheme_of(uri)
    cls = PULLERS.get(scheme)
    if cls is None:
        served = ", ".join(sorted(s for s in PULLERS if s))
        raise InvalidStorageUri(
            f"storage uri {display_uri(uri)!r}: scheme {scheme!r} is not served "
            f"(served: {served}, or an absolute path)"
        )
    if cls is FilePuller:
        return FilePuller(settings.allowed_roots)
    if cls is HttpPuller:
        return HttpPuller(settings.http)
    if cls is S3Puller:
        return S3Puller(settings.storage_config, settings.s3)
    return cls()


async def pull_into(
    uri: str,
    dest: Path,
    max_bytes: int,
    *,
    settings: PullerSettings | None = None,
    storage_key: str | None = None,
) -> PullResult:
    """Pull the artifact at ``uri`` under ``dest`` with the puller its scheme picks."""
    puller = puller_for(uri, settings)
    return await puller.pull(uri, dest, max_bytes, storage_key=storage_key)
