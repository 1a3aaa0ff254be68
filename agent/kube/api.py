"""The Kubernetes API calls meshlet makes, through the ``kubernetes`` client.

Four calls: list one page of a kind, watch it from a resourceVersion, get one
object, merge-patch one object's status. They block (the client is
synchronous): the watchers run them on their own threads, the status writer
on a small pool. Bodies are read as raw JSON (``_preload_content=False``), so
no object is turned into a model class, and a watch is read line by line.

Errors come out as two exceptions: ``ApiError`` (the server answered with a
failure: its HTTP code, reason, message and any ``Retry-After``) and
``ApiUnreachable`` (no answer: refused, reset, cut mid-stream, timed out).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from agent.kube.kinds import Kind

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server answered with a failure."""

    def __init__(self, code: int, reason: str, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(f"{code} {reason}: {message}" if message else f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def gone(self) -> bool:
        """410: the resourceVersion (or continue token) is too old; list again."""
        return self.code == 410


class ApiUnreachable(Exception):
    """No answer: the connection was refused, reset, cut, or timed out."""


def error_from_status(status: dict[str, Any], retry_after_s: float = 0.0) -> ApiError:
    """An ``ApiError`` from a ``Status`` object (an in-band watch ERROR event)."""
    code = status.get("code")
    return ApiError(
        code if isinstance(code, int) else 500, str(status.get("reason") or ""),
        str(status.get("message") or ""), retry_after_s,
    )


class KubeApi:
    """One API client's calls. Thread-safe; counts requests by verb (``requests``)."""

    def __init__(self, api_client: ApiClient, request_timeout_s: float) -> None:
        from kubernetes import client

        self._client = api_client
        self._objects = client.CustomObjectsApi(api_client)
        self._timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()

    def close(self) -> None:
        self._client.close()

    def _count(self, verb: str) -> None:
        with self._lock:
            self.requests[verb] += 1

    def list_page(
        self, kind: Kind, namespace: str, limit: int, continue_token: str = ""
    ) -> dict[str, Any]:
        """One page of a list: ``{"metadata": {"resourceVersion", "continue"}, "items"}``."""
        self._count("list")
        with self._errors():
            resp = self._list(kind, namespace, limit=limit, _continue=continue_token or None,
                              _request_timeout=(self._timeout_s, self._timeout_s))
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
        if not isinstance(body, dict):
            raise ApiUnreachable(f"list {kind.plural}: the answer is not a JSON object")
        return body

    def watch(self, kind: Kind, namespace: str, resource_version: str,
              timeout_s: int) -> WatchStream:
        """Start a watch from ``resource_version`` with bookmarks; the server ends
        it after ``timeout_s``. Raises ``ApiError`` (410: list again) or
        ``ApiUnreachable`` when it cannot start."""
        self._count("watch")
        with self._errors():
            resp = self._list(
                kind, namespace, watch=True, resource_version=resource_version,
                allow_watch_bookmarks=True, timeout_seconds=timeout_s,
                _request_timeout=(self._timeout_s, timeout_s + self._timeout_s),
            )
        return WatchStream(resp, self._errors)

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        self._count("get")
        try:
            with self._errors():
                resp: Any = self._objects.get_namespaced_custom_object(
                    kind.group, kind.version, namespace, kind.plural, name,
                    _preload_content=False, _request_timeout=(self._timeout_s, self._timeout_s),
                )
                try:
                    body = json.loads(resp.data)
                finally:
                    resp.release_conn()
        except ApiError as err:
            if err.code == 404:
                return None
            raise
        return body if isinstance(body, dict) else None

    def patch_status(
        self, kind: Kind, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource; the object as it is now."""
        self._count("patch")
        with self._errors():
            resp: Any = self._objects.patch_namespaced_custom_object_status(
                kind.group, kind.version, namespace, kind.plural, name, patch,
                _content_type=MERGE_PATCH, _preload_content=False,
                _request_timeout=(self._timeout_s, self._timeout_s),
            )
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
        return body if isinstance(body, dict) else {}

    def _list(self, kind: Kind, namespace: str, **kwargs: Any) -> Any:
        if namespace:
            return self._objects.list_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, _preload_content=False,
                **kwargs,
            )
        return self._objects.list_cluster_custom_object(
            kind.group, kind.version, kind.plural, _preload_content=False, **kwargs,
        )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The client's and urllib3's exceptions as ``ApiError`` / ``ApiUnreachable``."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as err:
            raise _api_error(err) from None
        except (HTTPError, OSError, ValueError) as err:
            # ValueError: a body that is not JSON (a proxy's error page, a cut list)
            raise ApiUnreachable(f"{type(err).__name__}: {err}") from None


def _api_error(err: Any) -> ApiError:
    """An ``ApiException`` as an ``ApiError``, with the Status body's reason and
    message and the ``Retry-After`` header."""
    code = int(err.status or 0)
    reason, message = str(err.reason or ""), ""
    try:
        body = json.loads(err.body) if err.body else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        reason = str(body.get("reason") or reason)
        message = str(body.get("message") or "")
    retry_after = 0.0
    headers = err.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    if value:
        with contextlib.suppress(ValueError):
            retry_after = max(0.0, float(value))
    return ApiError(code, reason, message, retry_after)


class WatchStream:
    """The events of one watch, as parsed JSON objects, until the server ends
    it. ``close()`` (from any thread) unblocks a read in progress."""

    def __init__(self, resp: Any, errors: Any) -> None:
        self._resp = resp
        self._errors = errors
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            with self._errors():
                for line in iter_resp_lines(self._resp):
                    if self._closed:
                        return
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if isinstance(event, dict):
                        yield event
        finally:
            self._closed = True
            with contextlib.suppress(Exception):
                self._resp.close()
                self._resp.release_conn()

    def close(self) -> None:
        """Stop reading, from any thread: shut the socket down so a blocked read
        returns at once (the reading thread then releases the connection)."""
        self._closed = True
        sock = getattr(getattr(self._resp, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
