"""The agent's one settings object.

Every field can be set from the environment with the ``MESHLET_`` prefix
(``MESHLET_DATA_DIR``, ``MESHLET_GRPC_PORT`` ...) or by the CLI flags that
``meshlet serve`` offers. Units are in the names (``_s`` seconds, ``_bytes``).
Every interval, timeout and grace period is here so tests can shrink them.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
import psutil
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapters.base import RuntimeOptions
from adapters.pool import PoolLimits
from agent.cluster.copies import CopySettings
from agent.cluster.gossip import GossipSettings
from agent.cluster.membership import MembershipSettings
from agent.cluster.peer import ClusterConfig
from agent.cluster.tls import PeerTls
from agent.kube.config import KubeSettings


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("meshlet", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHLET_", extra="forbid")

    # --- where things live -------------------------------------------------
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Registry database and runtime work dirs (per-user data dir by default).",
    )

    # --- listeners ---------------------------------------------------------
    grpc_host: str = Field("0.0.0.0", description="Address the gRPC API binds.")
    grpc_port: int = Field(8033, ge=0, le=65535, description="gRPC API port; 0 picks one.")
    metrics_host: str = Field("0.0.0.0", description="Address /metrics, /healthz bind.")
    metrics_port: int = Field(
        2112, ge=-1, le=65535, description="HTTP metrics port; 0 picks one, -1 disables."
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest inference request accepted."
    )

    # --- cluster ------------------------------------------------------------
    peer_host: str = Field("0.0.0.0", description="Address the peer port binds.")
    peer_port: int = Field(8034, ge=0, le=65535, description="Peer port (gossip); 0 picks one.")
    peer_advertise_host: str = Field(
        "", description="Host peers reach this node at; default: the peer host, or this "
        "machine's address when that is 0.0.0.0."
    )
    peers: list[str] = Field([], description="Seed peers, host:port each.")
    cluster_keys: list[str] = Field(
        [], description="Shared cluster secrets (the first signs); none: the node runs alone."
    )
    cluster_key_file: Path | None = Field(
        None, description="File with one cluster secret per line (a mounted Secret)."
    )
    peers_dns: str = Field(
        "", description="DNS name whose A/AAAA records are seed peers (a headless Service); "
        "resolved again on every join round, at the peer port."
    )
    peer_tls_cert: Path | None = Field(None, description="Peer-port TLS certificate (PEM).")
    peer_tls_key: Path | None = Field(None, description="Peer-port TLS private key (PEM).")
    peer_tls_ca: Path | None = Field(
        None, description="CA (PEM) peers' certificates must chain to; TLS is mutual."
    )
    cluster_probe_interval_s: float = Field(
        0.2, gt=0, description="How often a node probes one member (failure detection)."
    )
    cluster_probe_timeout_s: float = Field(0.1, gt=0, description="Direct probe timeout.")
    cluster_suspicion_timeout_s: float = Field(
        1.0, gt=0, description="How long a member stays suspect before it is declared dead."
    )
    cluster_sync_interval_s: float = Field(
        10.0, gt=0, description="Full membership push-pull with a random member, this often."
    )
    cluster_dead_member_gc_s: float = Field(
        600.0, gt=0, description="How long a dead or departed member is remembered."
    )
    gossip_interval_s: float = Field(
        0.5, gt=0, description="How often node states (inventories, free room) are exchanged."
    )
    gossip_fanout: int = Field(2, ge=1, description="Members per node-state gossip round.")
    registry_sync_interval_s: float = Field(
        5.0, gt=0, description="Registry anti-entropy (bucket digests) with a random member."
    )
    forward_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for a peer to answer a forwarded request "
        "(covers a load there)."
    )
    forward_max_hops: int = Field(
        2, ge=1, le=8, description="Times a request may be forwarded between nodes."
    )
    copy_rate_threshold: float = Field(
        50.0, gt=0, description="Requests/s per copy above which a model gets another copy "
        "on another node."
    )
    copy_max: int = Field(4, ge=1, description="Most copies of one model in the cluster.")
    copy_idle_s: float = Field(
        300.0, gt=0, description="An extra copy unused this long is dropped (never the last)."
    )
    copy_recent_s: float = Field(
        60.0, ge=0, description="A model used within this long keeps a second copy on another "
        "node, so one node's loss does not cold-start it; 0 turns that off."
    )
    copy_check_interval_s: float = Field(
        2.0, gt=0, description="How often request rates and copies are looked at."
    )
    drain_timeout_s: float = Field(
        20.0, ge=0, description="On SIGTERM, longest wait for peers to load copies of this "
        "node's recently used models before leaving."
    )

    # --- memory budget -----------------------------------------------------
    memory_budget_bytes: int = Field(
        0, ge=0, description="Bytes of model memory allowed; 0 = fraction of available."
    )
    memory_budget_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of available memory used when no byte budget."
    )

    # --- resource monitor --------------------------------------------------
    resource_sample_interval_s: float = Field(
        5.0, gt=0, description="How often node, container, process and GPU usage is sampled."
    )
    cgroup_dir: Path | None = Field(
        None,
        description="cgroup v2 directory whose limits apply; default: this process's own "
        "(and its parents').",
    )

    # --- runtimes ----------------------------------------------------------
    runtimes: list[str] = Field(["mlserver"], description="Runtime kinds this node runs.")
    runtime_start_timeout_s: float = Field(90.0, gt=0)
    runtime_stop_grace_s: float = Field(5.0, ge=0)
    runtime_health_interval_s: float = Field(1.0, gt=0, description="ServerLive ping period.")
    runtime_liveness_timeout_s: float = Field(
        5.0, gt=0, description="How long one ServerLive ping may take."
    )
    runtime_liveness_misses: int = Field(
        3, ge=1, description="Missed pings in a row before a hung runtime is killed."
    )
    runtime_restart_backoff_s: float = Field(0.5, gt=0)
    runtime_channel_connections: int = Field(4, ge=1)
    runtime_processes_min: int = Field(
        1, ge=1, description="Runtime processes of each kind kept running, even when empty."
    )
    runtime_processes_max: int = Field(
        1, ge=1, description="Most runtime processes of each kind (MLServer) on this node."
    )
    runtime_process_max_models: int = Field(
        0, ge=0, description="Most models one runtime process holds; 0 = no limit."
    )
    runtime_process_max_bytes: int = Field(
        0, ge=0, description="Most model bytes one runtime process holds; 0 = no limit."
    )
    load_timeout_s: float = Field(60.0, gt=0, description="One model load, end to end.")
    triton_server_path: Path | None = Field(
        None,
        description="tritonserver binary; default: the nvidia-pytriton wheel's, else PATH.",
    )
    triton_backend_dir: Path | None = Field(
        None, description="Triton backends directory; default: found next to the binary."
    )

    # --- node cache and storage ------------------------------------------------
    cache_dir: Path | None = Field(
        None,
        description="Node model cache (zstd blobs, shareable by agents on one node); "
        "default <data_dir>/cache.",
    )
    cache_quota_bytes: int = Field(
        0, ge=0, description="Compressed bytes the cache may hold; 0 = a fraction of free disk."
    )
    cache_quota_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of the cache disk's free space used when no quota."
    )
    cache_level: int = Field(3, ge=1, le=22, description="zstd compression level of new blobs.")
    storage_config_dir: Path | None = Field(
        None,
        description="ModelMesh storage-config directory (one JSON file per key) for s3://.",
    )
    storage_allowed_roots: list[Path] = Field(
        [], description="Directories file:// URIs must resolve inside; empty = anywhere."
    )
    storage_connect_timeout_s: float = Field(10.0, gt=0, description="Connect to storage.")
    storage_read_timeout_s: float = Field(
        60.0, gt=0, description="Wait for the next bytes (http) or one request (s3)."
    )
    storage_attempts: int = Field(
        4, ge=1, description="Attempts in all for retryable storage errors (5xx, resets)."
    )
    storage_backoff_s: float = Field(0.5, gt=0, description="First wait between attempts.")

    # --- vmodels -----------------------------------------------------------
    vmodel_retry_interval_s: float = Field(
        5.0, gt=0, description="Delay before retrying a vmodel transition whose target failed."
    )

    # --- kubernetes (agent/kube) ----------------------------------------------
    kube: Literal["auto", "on", "off"] = Field(
        "auto", description="Serve Kubernetes resources (Model; with modelmesh_compat also "
        "Predictor and InferenceService): on, off, or auto (on inside a pod with a "
        "service-account token, or when a kubeconfig is named by kubeconfig or KUBECONFIG)."
    )
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file for the API server; unset: the service account "
        "inside a pod, else KUBECONFIG, else ~/.kube/config."
    )
    watch_namespaces: Annotated[list[str], NoDecode] = Field(
        [], description="Namespaces whose resources are served (comma-separated or a JSON "
        "list); empty: all."
    )
    modelmesh_compat: bool = Field(
        False, description="Also serve ModelMesh-serving's Predictors and InferenceServices "
        "(annotation serving.kserve.io/deploymentMode: ModelMesh), status in ModelMesh's shape."
    )
    kube_status_interval_s: float = Field(
        5.0, gt=0, description="Seconds between two status writes of one resource (its "
        "changes in between make one write)."
    )
    kube_watch_timeout_s: float = Field(
        300.0, gt=0, description="Seconds one watch request lasts (at random up to twice "
        "this); the next starts where it ended."
    )
    kube_request_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a list page, get or status patch may take."
    )
    kube_backoff_initial_s: float = Field(
        0.5, gt=0, description="Seconds before retrying a failed list, watch or status "
        "write; doubles per failure (a server's Retry-After is honoured)."
    )
    kube_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest wait between retries, seconds."
    )
    kube_settle_s: float = Field(
        30.0, ge=0, description="In a cluster: seconds a starting agent waits to see another "
        "member before it writes statuses and registry entries for resources alone."
    )

    # --- shutdown ----------------------------------------------------------
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="Time in-flight requests get to finish on SIGTERM."
    )

    # --- demo --------------------------------------------------------------
    demo_models: int = Field(0, ge=0, description="Register simple-string-0..N-1 at start.")
    demo_runtime: str = Field(
        "mlserver", description="Runtime the demo models are registered for (mlserver, triton)."
    )

    @field_validator("watch_namespaces", mode="before")
    @classmethod
    def _namespace_list(cls, value: Any) -> Any:
        """``a,b`` or ``["a", "b"]`` (the environment gives a string)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.sqlite3"

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    def resolved_cache_quota(self, cache_used_bytes: int = 0) -> int:
        """The cache quota: the explicit one, or a fraction of the disk the cache
        may use now (free space plus what the cache already holds)."""
        if self.cache_quota_bytes:
            return self.cache_quota_bytes
        root = self.resolved_cache_dir
        root.mkdir(parents=True, exist_ok=True)
        free = psutil.disk_usage(str(root)).free
        return int((free + cache_used_bytes) * self.cache_quota_fraction)

    def resolved_cluster_keys(self) -> list[bytes]:
        """The cluster secrets: the file's lines, then ``cluster_keys``."""
        keys = list(self.cluster_keys)
        if self.cluster_key_file is not None:
            lines = self.cluster_key_file.read_text().splitlines()
            keys = [line.strip() for line in lines if line.strip()] + keys
        return [k.encode() for k in keys]

    def cluster_config(self, advertise_host: str, grpc_address: str) -> ClusterConfig:
        """The cluster's settings (``agent.cluster.peer``)."""
        return ClusterConfig(
            host=self.peer_host, port=self.peer_port, advertise_host=advertise_host,
            keys=self.resolved_cluster_keys(), grpc_address=grpc_address,
            seeds=self.peers, seeds_dns=self.peers_dns, seeds_dns_port=self.peer_port or 8034,
            tls=PeerTls.from_paths(self.peer_tls_cert, self.peer_tls_key, self.peer_tls_ca),
            membership=MembershipSettings(
                probe_interval_s=self.cluster_probe_interval_s,
                probe_timeout_s=self.cluster_probe_timeout_s,
                indirect_timeout_s=2 * self.cluster_probe_timeout_s,
                suspicion_timeout_s=self.cluster_suspicion_timeout_s,
                sync_interval_s=self.cluster_sync_interval_s,
                dead_member_gc_s=self.cluster_dead_member_gc_s,
            ),
            gossip=GossipSettings(
                interval_s=self.gossip_interval_s, fanout=self.gossip_fanout,
                registry_sync_interval_s=self.registry_sync_interval_s,
            ),
            max_request_bytes=self.max_request_bytes,
            forward_timeout_s=self.forward_timeout_s,
            max_hops=self.forward_max_hops,
            grace_s=self.shutdown_grace_s,
            copies=CopySettings(
                rate_threshold=self.copy_rate_threshold, max_copies=self.copy_max,
                idle_s=self.copy_idle_s, recent_s=self.copy_recent_s,
                check_interval_s=self.copy_check_interval_s,
            ),
            drain_timeout_s=self.drain_timeout_s,
        )

    def kube_settings(self) -> KubeSettings:
        """The Kubernetes integration's settings (``agent.kube``)."""
        return KubeSettings(
            mode=self.kube, kubeconfig=self.kubeconfig, namespaces=tuple(self.watch_namespaces),
            modelmesh_compat=self.modelmesh_compat,
            status_interval_s=self.kube_status_interval_s,
            watch_timeout_s=self.kube_watch_timeout_s,
            request_timeout_s=self.kube_request_timeout_s,
            backoff_initial_s=self.kube_backoff_initial_s,
            backoff_max_s=max(self.kube_backoff_max_s, self.kube_backoff_initial_s),
            settle_s=self.kube_settle_s,
            storage_config_dir=self.storage_config_dir,
        )

    def resolved_advertise_host(self) -> str:
        if self.peer_advertise_host:
            return self.peer_advertise_host
        if self.peer_host not in ("0.0.0.0", "::", ""):
            return self.peer_host
        return socket.gethostbyname(socket.gethostname())

    def runtime_options(self, kind: str) -> RuntimeOptions:
        return RuntimeOptions(
            work_dir=self.data_dir / "runtimes" / kind,
            start_timeout_s=self.runtime_start_timeout_s,
            stop_grace_s=self.runtime_stop_grace_s,
            load_timeout_s=self.load_timeout_s,
            health_interval_s=self.runtime_health_interval_s,
            liveness_timeout_s=self.runtime_liveness_timeout_s,
            liveness_misses=self.runtime_liveness_misses,
            restart_backoff_s=self.runtime_restart_backoff_s,
            channel_connections=self.runtime_channel_connections,
            pool=PoolLimits(
                min_processes=self.runtime_processes_min,
                max_processes=max(self.runtime_processes_max, self.runtime_processes_min),
                max_models=self.runtime_process_max_models,
                max_bytes=self.runtime_process_max_bytes,
                restart_wait_s=self.runtime_start_timeout_s,
            ),
            server_path=self.triton_server_path if kind == "triton" else None,
            backend_dir=self.triton_backend_dir if kind == "triton" else None,
        )

    def resolved_memory_budget(self, available_bytes: int | None = None) -> int:
        """The byte budget: the explicit one, or a fraction of the memory
        available now (``available_bytes``: the resource monitor's figure, which
        honours the container's cgroup limit; else the node's)."""
        if self.memory_budget_bytes:
            return self.memory_budget_bytes
        if available_bytes is None:
            available_bytes = psutil.virtual_memory().available
        return int(available_bytes * self.memory_budget_fraction)
