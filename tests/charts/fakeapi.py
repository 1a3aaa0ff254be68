"""A read-only stand-in for a Kubernetes API server, enough for helm's
``lookup`` (``helm template --dry-run=server``): version and discovery
answers, and GET of the objects it holds; everything else is 404, as from a
real server that has none. Writes are refused (405): a dry run must not
write. It records every request, so a test can see what helm asked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# group/version -> (plural, kind, namespaced), for what the chart renders.
RESOURCES = {
    "v1": [("secrets", "Secret", True), ("services", "Service", True),
           ("serviceaccounts", "ServiceAccount", True), ("pods", "Pod", True)],
    "apps/v1": [("daemonsets", "DaemonSet", True)],
    "rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "apiextensions.k8s.io/v1": [
        ("customresourcedefinitions", "CustomResourceDefinition", False)],
}


def _not_found(path: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"{path} not found", "reason": "NotFound", "code": 404}


class FakeApi:
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = {self.path_of(o): o for o in objects}
        self.requests: list[str] = []

    @staticmethod
    def path_of(obj: dict[str, Any]) -> str:
        group_version = obj["apiVersion"]
        plural = next(p for p, kind, _ in RESOURCES[group_version] if kind == obj["kind"])
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        namespace = obj["metadata"].get("namespace")
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"{prefix}{where}/{plural}/{obj['metadata']['name']}"

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == "/version":
            return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0",
                         "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = []
            for group_version in RESOURCES:
                if "/" in group_version:
                    group, version = group_version.split("/")
                    gv = {"groupVersion": group_version, "version": version}
                    groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        group_version = path.removeprefix("/api/").removeprefix("/apis/")
        if group_version in RESOURCES:
            verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
            return 200, {
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": [{"name": plural, "singularName": kind.lower(),
                               "namespaced": namespaced, "kind": kind, "verbs": verbs}
                              for plural, kind, namespaced in RESOURCES[group_version]],
            }
        if path in self.objects:
            return 200, self.objects[path]
        return 404, _not_found(path)


@contextmanager
def serving(objects: list[dict[str, Any]], kubeconfig: Path) -> Iterator[FakeApi]:
    """A FakeApi holding ``objects`` on a loopback port, and a kubeconfig for it."""
    api = FakeApi(objects)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            api.requests.append(f"GET {self.path}")
            self.send(*api.answer(self.path.split("?", 1)[0]))

        def refuse(self) -> None:
            api.requests.append(f"{self.command} {self.path}")
            self.send(405, {"kind": "Status", "status": "Failure", "code": 405,
                            "reason": "MethodNotAllowed", "message": "read-only"})

        do_POST = do_PUT = do_PATCH = do_DELETE = refuse

        def send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://{host!s}:{port}"}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
