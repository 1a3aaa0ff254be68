"""Storage credentials in ModelMesh's storage-config format.

A directory (a mounted Kubernetes Secret) holds one file per storage key; each
file is a JSON document::

    {"type": "s3", "access_key_id": "...", "secret_access_key": "...",
     "endpoint_url": "https://minio:9000", "bucket": "models", "region": "us-east-1"}

so a ModelMesh user's ``storage-config`` Secret mounts unchanged. Secret values
never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import LoadFailed

log = logging.getLogger(__name__)

# Keys tried, in order, when no key was named and none matches the bucket.
DEFAULT_KEYS = ("default", "default_s3")


@dataclass(frozen=True, slots=True)
class StorageCredentials:
    """One storage key's entry."""

    key: str
    type: str = "s3"
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    endpoint_url: str = ""
    bucket: str = ""
    region: str = ""

    @classmethod
    def from_json(cls, key: str, doc: Mapping[str, object]) -> StorageCredentials:
        def text(name: str) -> str:
            value = doc.get(name, "")
            return value if isinstance(value, str) else str(value)

        return cls(
            key=key,
            type=text("type") or "s3",
            access_key_id=text("access_key_id"),
            secret_access_key=text("secret_access_key"),
            endpoint_url=text("endpoint_url"),
            bucket=text("bucket"),
            region=text("region"),
        )


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Every storage key, by name."""

    entries: Mapping[str, StorageCredentials] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> StorageConfig:
        """Read every key file in ``directory``. Hidden names (a Secret mount's
        ``..data`` links) are skipped; an unreadable or non-JSON file is skipped
        with a warning that names the key, never its content."""
        root = Path(directory)
        entries: dict[str, StorageCredentials] = {}
        if not root.is_dir():
            log.warning("storage config directory %s does not exist", root)
            return cls(entries)
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                log.warning("storage config key %r is not readable JSON (%s); skipped",
                            path.name, type(exc).__name__)
                continue
            if not isinstance(doc, dict):
                log.warning("storage config key %r is not a JSON object; skipped", path.name)
                continue
            entries[path.name] = StorageCredentials.from_json(path.name, doc)
        return cls(entries)

    def select(self, bucket: str, storage_key: str | None = None, type_: str = "s3"
               ) -> StorageCredentials:
        """The key for ``bucket``: the one named, else the first (by name) whose
        ``bucket`` matches, else ``default``, else ``default_s3``."""
        if storage_key is not None:
            found = self.entries.get(storage_key)
            if found is None:
                raise LoadFailed(f"storage key {storage_key!r} is not in the storage config")
            if found.type != type_:
                raise LoadFailed(
                    f"storage key {storage_key!r} has type {found.type!r}, not {type_!r}"
                )
            return found
        for key in sorted(self.entries):
            entry = self.entries[key]
            if entry.type == type_ and entry.bucket and entry.bucket == bucket:
                return entry
        for key in DEFAULT_KEYS:
            default = self.entries.get(key)
            if default is not None and default.type == type_:
                return default
        raise LoadFailed(
            f"no storage config key for bucket {bucket!r}: no key names it and there is no "
            f"{' or '.join(DEFAULT_KEYS)} key of type {type_!r}"
        )
