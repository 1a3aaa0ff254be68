"""``s3://bucket/key-or-prefix`` for S3-compatible stores (AWS, MinIO, Ceph),
through obstore. One object becomes one file; a prefix becomes a directory."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.store import S3Store

from agent.errors import InvalidStorageUri, LoadFailed
from agent.storage.base import (
    ByteBudget,
    Puller,
    PullResult,
    open_new,
    removed_on_failure,
    safe_relpath,
)
from agent.storage.config import StorageConfig, StorageCredentials

if TYPE_CHECKING:
    from obstore import GetResult, ObjectMeta

_MAX_ANSWER_CHARS = 300


@dataclass(frozen=True, slots=True)
class S3Options:
    """How the S3 puller talks to a store."""

    connect_timeout_s: float = 10.0
    """Seconds to open a connection."""
    read_timeout_s: float = 60.0
    """Seconds for one request (obstore's whole-request timeout)."""
    max_retries: int = 3
    """Retries obstore makes for connection errors and 5xx."""
    retry_timeout_s: float = 60.0
    """Give up retrying one request after this many seconds."""
    backoff_initial_s: float = 0.1
    """First wait between retries; grows exponentially."""
    chunk_bytes: int = 8 * 1024 * 1024
    """Minimum bytes per chunk written to disk."""


class S3Puller(Puller):
    """Pulls an object, or every object under a prefix, with credentials
    chosen from a ModelMesh storage config (see ``StorageConfig.select``)."""

    schemes = ("s3",)

    def __init__(self, config: StorageConfig, options: S3Options | None = None) -> None:
        self.config = config
        self.options = options or S3Options()

    def store_for(self, creds: StorageCredentials, bucket: str) -> S3Store:
        opts = self.options
        return S3Store(
            bucket,
            endpoint=creds.endpoint_url or None,
            region=creds.region or "us-east-1",
            access_key_id=creds.access_key_id,
            secret_access_key=creds.secret_access_key,
            virtual_hosted_style_request=False,
            client_options={
                "allow_http": creds.endpoint_url.lower().startswith("http://"),
                "connect_timeout": timedelta(seconds=opts.connect_timeout_s),
                "timeout": timedelta(seconds=opts.read_timeout_s),
            },
            retry_config={
                "max_retries": opts.max_retries,
                "retry_timeout": timedelta(seconds=opts.retry_timeout_s),
                "backoff": {"init_backoff": timedelta(seconds=opts.backoff_initial_s)},
            },
        )

    async def pull(
        self, uri: str, dest: Path, max_bytes: int, *, storage_key: str | None = None
    ) -> PullResult:
        parts = urlsplit(uri)
        if parts.scheme.lower() != "s3" or not parts.netloc:
            raise InvalidStorageUri(f"storage uri {uri!r} is not s3://bucket/key")
        bucket, key = parts.netloc, parts.path.lstrip("/")
        creds = self.config.select(bucket, storage_key)
        store = self.store_for(creds, bucket)
        budget = ByteBudget(uri, max_bytes)
        try:
            async with removed_on_failure(uri, dest):
                if key and not key.endswith("/"):
                    # GET first (not HEAD): a refusal then carries the store's
                    # error body, and a single object costs one request.
                    resp = await _store(obstore.get_async(store, key), missing_ok=True)
                    if resp is not None:
                        budget.check_total(resp.meta["size"])
                        target = dest / safe_relpath(uri, key.rpartition("/")[2])
                        await self._write(resp, target, budget)
                        return PullResult(target, budget.used, 1, is_dir=False)
                return await self._pull_prefix(uri, store, key, dest, budget)
        except _StoreError as exc:
            raise LoadFailed(
                f"could not pull {uri} (storage key {creds.key!r}): "
                f"{store_answer(exc.cause, creds.secret_access_key)}"
            ) from None

    async def _pull_prefix(
        self, uri: str, store: S3Store, key: str, dest: Path, budget: ByteBudget
    ) -> PullResult:
        prefix = key.rstrip("/")
        objects: list[ObjectMeta] = []
        try:
            async for batch in obstore.list(store, prefix=prefix or None, chunk_size=1000):
                objects.extend(batch)
        except obstore.exceptions.BaseError as exc:
            raise _StoreError(exc) from None
        # Zero-byte "folder" markers some tools create name no file.
        objects = [o for o in objects if not o["path"].endswith("/")]
        if not objects:
            raise LoadFailed(
                f"could not pull {uri}: the store holds no object {key!r} and nothing under it"
            )
        budget.check_total(sum(o["size"] for o in objects))
        start = len(prefix) + 1 if prefix else 0
        planned = [(o["path"], safe_relpath(uri, o["path"][start:])) for o in objects]
        for path, rel in planned:
            resp = await _store(obstore.get_async(store, path))
            assert resp is not None
            await self._write(resp, dest / rel, budget)
        return PullResult(dest, budget.used, len(planned), is_dir=True)

    async def _write(self, resp: GetResult, target: Path, budget: ByteBudget) -> None:
        with open_new(target) as out:
            try:
                async for chunk in resp.stream(min_chunk_size=self.options.chunk_bytes):
                    budget.add(len(chunk))
                    out.write(chunk)
            except obstore.exceptions.BaseError as exc:
                raise _StoreError(exc) from None


class _StoreError(Exception):
    """The object store refused or failed a request; ``cause`` says how."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


async def _store(call: Awaitable[GetResult], missing_ok: bool = False) -> GetResult | None:
    """Await an obstore GET; store errors become ``_StoreError`` (a missing
    object becomes None when ``missing_ok``)."""
    try:
        return await call
    except FileNotFoundError as exc:
        if missing_ok:
            return None
        raise _StoreError(exc) from None
    except obstore.exceptions.BaseError as exc:
        raise _StoreError(exc) from None


def store_answer(exc: BaseException, secret: str) -> str:
    """A short, secret-free summary of what the store said: the HTTP status
    and the S3 error code and message when the answer carries them, else the
    error's first line."""
    text = str(exc)
    head = text.split("Debug source:", 1)[0]
    status = re.search(r"status code: (\d{3}[^:<]*)", head)
    code = re.search(r"<Code>(.*?)</Code>", head, re.S)
    message = re.search(r"<Message>(.*?)</Message>", head, re.S)
    parts = [type(exc).__name__]
    if status:
        parts.append(f"HTTP {status.group(1).strip()}")
    if code:
        parts.append(code.group(1) + (f" ({message.group(1)})" if message else ""))
    if not status and not code:
        parts.append(head.strip().splitlines()[0] if head.strip() else "no detail")
    answer = ": ".join(parts)
    if secret:
        answer = answer.replace(secret, "***")
    return answer[:_MAX_ANSWER_CHARS]
