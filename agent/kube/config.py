"""Whether Kubernetes is on, and the API client to reach it.

``kube`` is ``on``, ``off`` or ``auto``: on inside a pod (``KUBERNETES_SERVICE_HOST``
is set and the service-account token is mounted) or when a kubeconfig is named
(the ``kubeconfig`` setting, or ``KUBECONFIG``). Inside a pod the in-cluster
config is used (its token is re-read as it rotates); outside, the kubeconfig as
kubectl reads it (``KUBECONFIG``, which may list several files, else
``~/.kube/config``). The ``kubernetes`` package is imported only here and in
``agent.kube.api``, and only once Kubernetes is on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

KubeMode = Literal["auto", "on", "off"]

SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@dataclass(frozen=True)
class KubeSettings:
    """The Kubernetes part of the agent's settings (``agent.config.Settings``)."""

    mode: KubeMode = "auto"
    kubeconfig: Path | None = None
    namespaces: Sequence[str] = ()  # empty: every namespace
    modelmesh_compat: bool = False
    status_interval_s: float = 5.0  # at most one status write per resource this often
    watch_timeout_s: float = 300.0  # one watch request lasts this, up to twice this
    request_timeout_s: float = 30.0  # list, get and patch requests
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    settle_s: float = 30.0  # in a cluster: wait this long to see a peer before acting alone
    storage_config_dir: Path | None = None  # storage keys name their bucket here
    list_page_size: int = 500  # items per list request (client-go's default)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    token_file: Path = SERVICE_TOKEN_FILE


def in_pod(environ: Mapping[str, str], token_file: Path = SERVICE_TOKEN_FILE) -> bool:
    """Running in a pod that can reach the API server with its service account."""
    return bool(environ.get(SERVICE_HOST_ENV)) and token_file.is_file()


def kube_enabled(settings: KubeSettings) -> bool:
    """Whether the agent watches Kubernetes (``mode``, resolved for ``auto``)."""
    if settings.mode != "auto":
        return settings.mode == "on"
    return (
        in_pod(settings.environ, settings.token_file)
        or settings.kubeconfig is not None
        or bool(settings.environ.get("KUBECONFIG"))
    )


def describe_source(settings: KubeSettings) -> str:
    """Where the API client's config comes from, for the log."""
    if settings.kubeconfig is not None:
        return f"kubeconfig {settings.kubeconfig}"
    if in_pod(settings.environ, settings.token_file):
        return "in-cluster service account"
    return f"kubeconfig {settings.environ.get('KUBECONFIG') or '~/.kube/config'}"


def load_api_client(settings: KubeSettings) -> ApiClient:
    """An API client: the named kubeconfig, else in-cluster inside a pod, else
    the kubeconfig kubectl would read. Touches no process-wide default."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if settings.kubeconfig is not None:
        config.load_kube_config(
            config_file=str(settings.kubeconfig), client_configuration=configuration,
            persist_config=False,
        )
    elif in_pod(settings.environ, settings.token_file):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(
            config_file=settings.environ.get("KUBECONFIG") or None,
            client_configuration=configuration, persist_config=False,
        )
    return client.ApiClient(configuration)
