"""A local server that answers like a Kubernetes API server for custom
resources, so the real ``kubernetes`` client can be tested against it.

It serves ``/apis/<group>/<version>[/namespaces/<ns>]/<plural>`` lists (in
pages: ``limit`` and ``continue``, one consistent snapshot per list, with the
snapshot's ``resourceVersion``), watches (chunked, newline-delimited JSON
events ADDED / MODIFIED / DELETED / BOOKMARK from a ``resourceVersion``, an
in-band ERROR Status with code 410 for a version older than the compacted
history), gets, and merge patches of the ``status`` subresource (409 when
the patch's ``metadata.resourceVersion`` is stale). Bodies are the API
server's own shapes (lists with ``metadata.resourceVersion`` / ``continue``,
``Status`` objects for failures). Requests need ``Authorization: Bearer
<token>``.

The test drives it as kubectl and a flaky network would: ``create``,
``update``, ``delete``, ``compact`` (history gone: old versions get 410),
``bookmark``, ``cut_watches`` (a connection cut mid-event), ``down`` / ``up``
(the port refuses, then answers again, same state), and ``faults`` (the next
matching requests get a given status, e.g. 429 with ``Retry-After``).
Every request is recorded. ``stop()`` ends every connection and joins every
thread it started.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN = "test-token"
KINDS = {  # plural -> (group, version, kind)
    "models": ("meshlet.io", "v1alpha1", "Model"),
    "predictors": ("serving.kserve.io", "v1alpha1", "Predictor"),
    "inferenceservices": ("serving.kserve.io", "v1beta1", "InferenceService"),
}
PLURALS = {kind: plural for plural, (_, _, kind) in KINDS.items()}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    token: str = ""  # the bearer token it carried (tells agents apart)
    at: float = 0.0  # time.monotonic() when it arrived

    @property
    def watch(self) -> bool:
        return self.query.get("watch") == "true"


@dataclass
class Fault:
    """The next ``times`` requests matching ``method`` and ``match`` (a test of
    the request) get ``status`` with a Status body (and ``headers``)."""

    method: str
    match: Callable[[Request], bool]
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    reason: str = ""
    message: str = "injected by the test"


def status_body(code: int, reason: str, message: str, **details: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code}


REASONS = {401: "Unauthorized", 404: "NotFound", 409: "Conflict", 410: "Expired",
           422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeApiServer:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.tokens = {token}  # every token accepted (``write_kubeconfig`` adds its own)
        self.port = 0
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.cut_next_watch_after: int | None = None  # cut the next watch after N events
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in KINDS}
        self._history: list[tuple[int, int, str, str, dict[str, Any]]] = []
        self._seq = 0  # history entries are (seq, rv, plural, type, obj)
        self._cuts = 0  # bumped by cut_watches(): open watches are cut
        self._compacted = 0  # watches from a version below this get 410
        self._rv = 1000
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._cond = threading.Condition()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._generation = 0  # bumped by down()/stop(): open watches end
        self._serving = False  # False while stopped: new watches end at once

    # --- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApiServer:
        fake = self

        class Handler(_Handler):
            server_state = fake

        with self._cond:
            self._serving = True
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = False
        server.block_on_close = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End every watch and connection, close the port, join every thread."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        with self._cond:
            self._serving = False
            self._generation += 1
            self._cond.notify_all()
        if server is not None:
            server.shutdown()
            for sock in list(self._connections):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            server.server_close()  # joins the handler threads (block_on_close)
        if thread is not None:
            thread.join()

    def down(self) -> None:
        """The API server is gone: connections cut, the port refuses."""
        self.stop()

    def up(self) -> None:
        """Back on the same port, with the same objects and history."""
        self.start()

    def write_kubeconfig(self, path: Path, token: str = "") -> Path:
        """A kubeconfig for this server; ``token`` tells this client's requests apart."""
        token = token or self.token
        self.tokens.add(token)
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: fake\n  cluster:\n    server: {self.url}\n"
            f"users:\n- name: tester\n  user:\n    token: {token}\n"
            "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n"
            "current-context: fake\n"
        )
        return path

    # --- what kubectl would do ---------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            obj = copy.deepcopy(obj)
            plural = PLURALS[obj["kind"]]
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", "default")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            meta["generation"] = 1
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            key = (meta["namespace"], meta["name"])
            assert key not in self._objects[plural], f"{plural} {key} exists"
            self._objects[plural][key] = obj
            self._event(plural, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, kind: str, namespace: str, name: str, *, spec: Any = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
        with self._cond:
            plural = PLURALS[kind]
            obj = self._objects[plural][(namespace, name)]
            if spec is not None and spec != obj.get("spec"):
                obj["spec"] = copy.deepcopy(spec)
                obj["metadata"]["generation"] += 1
            if annotations is not None:
                obj["metadata"]["annotations"] = dict(annotations)
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._event(plural, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._cond:
            plural = PLURALS[kind]
            obj = self._objects[plural].pop((namespace, name))
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._event(plural, "DELETED", obj)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            obj = self._objects[PLURALS[kind]].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def status(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.get(kind, namespace, name)
        return (obj or {}).get("status") or {}

    def compact(self) -> None:
        """Forget the history: a watch from any version before now gets 410."""
        with self._cond:
            self._compacted = self._rv + 1
            self._history.clear()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current version to every open watch."""
        with self._cond:
            for plural in KINDS:
                self._history.append((self._seq, self._rv, plural, "BOOKMARK", {}))
                self._seq += 1
            self._cond.notify_all()

    def cut_watches(self) -> None:
        """Cut every open watch mid-event (a connection reset mid-stream)."""
        with self._cond:
            self._cuts += 1
            self._cond.notify_all()

    def watches(self, plural: str | None = None) -> list[Request]:
        return [r for r in list(self.requests) if r.watch
                and (plural is None or r.path.endswith(f"/{plural}"))]

    def lists(self, plural: str | None = None) -> list[Request]:
        return [r for r in list(self.requests) if r.method == "GET" and not r.watch
                and r.query.get("limit") and (plural is None or r.path.endswith(f"/{plural}"))]

    def patches(self) -> list[Request]:
        return [r for r in list(self.requests) if r.method == "PATCH"]

    # --- internals ---------------------------------------------------------------------

    def _event(self, plural: str, type_: str, obj: dict[str, Any]) -> None:
        self._history.append((self._seq, self._rv, plural, type_, copy.deepcopy(obj)))
        self._seq += 1
        self._cond.notify_all()

    def _fault(self, request: Request) -> Fault | None:
        with self._cond:
            for fault in self.faults:
                if fault.method == request.method and fault.match(request):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _list(self, plural: str, namespace: str, query: dict[str, str]) -> dict[str, Any]:
        group, version, kind = KINDS[plural]
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with self._cond:
            if token:
                state = json.loads(base64.b64decode(token))
                rv, items = self._snapshots[state["id"]]
                start = state["start"]
            else:
                rv = self._rv
                items = [copy.deepcopy(o) for (ns, _), o in sorted(self._objects[plural].items())
                         if not namespace or ns == namespace]
                start = 0
                state = {"id": uuid.uuid4().hex}
            page = items[start:start + limit] if limit else items[start:]
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            end = start + len(page)
            if end < len(items):
                self._snapshots[state["id"]] = (rv, items)
                meta["continue"] = base64.b64encode(
                    json.dumps({"id": state["id"], "start": end}).encode()).decode()
                meta["remainingItemCount"] = len(items) - end
            else:
                self._snapshots.pop(state["id"], None)
        return {"apiVersion": f"{group}/{version}", "kind": f"{kind}List", "metadata": meta,
                "items": page}

    def _watch_events(
        self, plural: str, namespace: str, since: int, timeout_s: float, bookmarks: bool,
    ) -> Iterator[dict[str, Any] | None]:
        """The events after version ``since``, then new ones until ``timeout_s``;
        None means: cut the connection now."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            generation, cuts = self._generation, self._cuts
            cut_after, self.cut_next_watch_after = self.cut_next_watch_after, None
            if since and since < self._compacted:
                yield {"type": "ERROR", "object": status_body(
                    410, "Expired", f"too old resource version: {since} ({self._compacted})")}
                return
            position = next((seq for seq, rv, *_ in self._history if rv > since), self._seq)
        sent = 0
        while True:
            with self._cond:
                while True:
                    if self._generation != generation or not self._serving:
                        return
                    if self._cuts != cuts or (cut_after is not None and sent >= cut_after):
                        pending: list[dict[str, Any] | None] = [None]
                        break
                    pending = []
                    for seq, rv, p, type_, obj in self._history:
                        if seq < position or p != plural:
                            continue
                        position = seq + 1
                        if type_ == "BOOKMARK" and not bookmarks:
                            continue
                        if (type_ != "BOOKMARK" and namespace
                                and obj["metadata"].get("namespace") != namespace):
                            continue
                        pending.append(self._wire_event(plural, type_, obj, rv))
                        if cut_after is not None and sent + len(pending) >= cut_after:
                            break
                    if pending:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(min(left, 0.1))
            for event in pending:
                if event is None:
                    yield None
                    return
                yield event
                sent += 1

    def _wire_event(self, plural: str, type_: str, obj: dict[str, Any],
                    rv: int) -> dict[str, Any]:
        if type_ == "BOOKMARK":
            group, version, kind = KINDS[plural]
            return {"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": f"{group}/{version}",
                "metadata": {"resourceVersion": str(rv)}}}
        return {"type": type_, "object": copy.deepcopy(obj)}

    def _patch_status(self, plural: str, namespace: str, name: str,
                      patch: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._cond:
            obj = self._objects[plural].get((namespace, name))
            group, _, _ = KINDS[plural]
            if obj is None:
                return 404, status_body(404, "NotFound", f'{plural}.{group} "{name}" not found',
                                        name=name, group=group, kind=plural)
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != obj["metadata"]["resourceVersion"]:
                return 409, status_body(
                    409, "Conflict", f'Operation cannot be fulfilled on {plural}.{group} "{name}": '
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again", name=name, group=group, kind=plural)
            if "status" in patch:
                merged = merge_patch(obj.get("status") or {}, patch["status"])
                obj["status"] = merged
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._event(plural, "MODIFIED", obj)
            return 200, copy.deepcopy(obj)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: FakeApiServer
    timeout = 30  # an idle keep-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        # headers and body go in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold every body back 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server_state._connections.add(self.connection)

    def finish(self) -> None:
        self.server_state._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        fake = self.server_state
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        body: Any = None
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(self.rfile.read(length))
        auth = self.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ")
        request = Request(method, url.path, query, body, token, time.monotonic())
        fake.requests.append(request)
        if not auth.startswith("Bearer ") or token not in fake.tokens:
            self._json(401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        fault = fake._fault(request)
        if fault is not None:
            reason = fault.reason or REASONS.get(fault.status, "Failure")
            self._json(fault.status, status_body(fault.status, reason, fault.message),
                       fault.headers)
            return
        parts = url.path.strip("/").split("/")
        # apis/<group>/<version>[/namespaces/<ns>]/<plural>[/<name>[/status]]
        namespace = ""
        if len(parts) >= 5 and parts[3] == "namespaces":
            namespace, rest = parts[4], parts[5:]
        else:
            rest = parts[3:]
        if parts[0] != "apis" or not rest or rest[0] not in KINDS:
            self._json(404, status_body(404, "NotFound", "the server could not find the "
                                        "requested resource"))
            return
        plural = rest[0]
        if method == "GET" and len(rest) == 1 and query.get("watch") == "true":
            self._watch(plural, namespace, query)
        elif method == "GET" and len(rest) == 1:
            self._list_or_410(plural, namespace, query)
        elif method == "GET" and len(rest) == 2:
            obj = fake.get(KINDS[plural][2], namespace, rest[1])
            if obj is None:
                group = KINDS[plural][0]
                self._json(404, status_body(404, "NotFound",
                                            f'{plural}.{group} "{rest[1]}" not found'))
            else:
                self._json(200, obj)
        elif method == "PATCH" and len(rest) == 3 and rest[2] == "status":
            content_type = self.headers.get("Content-Type", "")
            if content_type != "application/merge-patch+json":
                self._json(415, status_body(415, "UnsupportedMediaType", content_type))
                return
            code, out = fake._patch_status(plural, namespace, rest[1], body or {})
            self._json(code, out)
        else:
            self._json(405, status_body(405, "MethodNotAllowed", method))

    def _list_or_410(self, plural: str, namespace: str, query: dict[str, str]) -> None:
        try:
            body = self.server_state._list(plural, namespace, query)
        except KeyError:  # a continue token whose snapshot is gone
            self._json(410, status_body(410, "Expired", "The provided continue parameter is "
                                        "too old to display a consistent list result."))
            return
        self._json(200, body)

    def _watch(self, plural: str, namespace: str, query: dict[str, str]) -> None:
        fake = self.server_state
        since = int(query.get("resourceVersion") or 0)
        timeout_s = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in fake._watch_events(plural, namespace, since, timeout_s, bookmarks):
                if event is None:  # cut mid-event: half a chunk, then the connection goes
                    data = json.dumps({"type": "MODIFIED", "object": {}}).encode()
                    self.wfile.write(f"{len(data) + 1:x}\r\n".encode() + data[:10])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _json(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None
              ) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
