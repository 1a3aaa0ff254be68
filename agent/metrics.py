"""Prometheus metrics of one agent, in a registry passed in (never the global one).

No per-model labels: with 100,000 models a label per model would cost more
memory than the models. Per-model figures are in ``meshlet model status``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.resources.monitor import NodeResources


@dataclass(frozen=True)
class ClusterFigures:
    """What the cluster counts, read at scrape time (``agent.cluster.peer``)."""

    members: Mapping[str, int] = field(default_factory=dict)  # state -> how many
    dropped: Mapping[str, int] = field(default_factory=dict)  # reason -> peer messages
    forwarded: int = 0
    forward_retries: int = 0
    copies_asked: int = 0
    copies_dropped: int = 0
    gossip_bytes_sent: int = 0


class _ClusterCollector(Collector):
    def __init__(self, source: Callable[[], ClusterFigures]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        f = self._source()
        members = GaugeMetricFamily(
            "meshlet_cluster_members", "Members this node knows, by state", labels=["state"])
        for state, n in sorted(f.members.items()):
            members.add_metric([state], n)
        dropped = CounterMetricFamily(
            "meshlet_peer_messages_dropped",
            "Peer messages dropped (bad key or MAC, malformed, spoofed sender...), by reason",
            labels=["reason"])
        for reason, n in sorted(f.dropped.items()):
            dropped.add_metric([reason], n)
        yield members
        yield dropped
        for name, doc, value in (
            ("meshlet_forwarded_requests", "Requests forwarded to a peer", f.forwarded),
            ("meshlet_forward_retries",
             "Forwards sent again to another copy or node after a peer failed", f.forward_retries),
            ("meshlet_copies_requested", "Extra copies asked of peers (load, recency, drain)",
             f.copies_asked),
            ("meshlet_copies_dropped", "Idle extra copies unloaded here", f.copies_dropped),
            ("meshlet_gossip_sent_bytes", "Bytes of gossip (state and registry) sent",
             f.gossip_bytes_sent),
        ):
            yield CounterMetricFamily(name, doc, value=value)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "meshlet_infer_requests", "Inference requests answered, by status", ["code"],
            registry=registry,
        )
        self.loads = Counter("meshlet_model_loads", "Successful model loads", registry=registry)
        self.load_failures = Counter(
            "meshlet_model_load_failures", "Failed model loads", registry=registry
        )
        self.load_seconds = Histogram(
            "meshlet_model_load_seconds", "Time to load one model", registry=registry,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.size_error = Histogram(
            "meshlet_model_size_measured_over_predicted",
            "Measured model size divided by the size predicted before its load",
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 1.25, 2, 4, 10, 100),
        )
        self.evictions = Counter(
            "meshlet_model_evictions", "Models unloaded to make room", registry=registry
        )
        self.models_loaded = Gauge(
            "meshlet_models_loaded", "Models loaded on this node", registry=registry
        )
        self.memory_used = Gauge(
            "meshlet_memory_used_bytes", "Model memory in use (predicted sizes)",
            registry=registry,
        )
        self.memory_budget = Gauge(
            "meshlet_memory_budget_bytes", "Model memory budget", registry=registry
        )
        cache = self.cache_lookups = Counter(
            "meshlet_cache_lookups", "Artifact lookups in the node cache, by result",
            ["result"], registry=registry,
        )
        self.cache_hits = cache.labels(result="hit")
        self.cache_misses = cache.labels(result="miss")
        self.cache_corrupt = Counter(
            "meshlet_cache_corrupt_blobs",
            "Cache blobs found corrupt on unpack (removed and fetched again)",
            registry=registry,
        )
        self.pull_seconds = Histogram(
            "meshlet_storage_pull_seconds", "Time to pull one artifact into the cache",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.pull_failures = Counter(
            "meshlet_storage_pull_failures", "Artifact pulls that failed", registry=registry
        )
        self.pulled_bytes = Counter(
            "meshlet_storage_pulled_bytes", "Uncompressed bytes pulled from storage",
            registry=registry,
        )
        self.unpack_seconds = Histogram(
            "meshlet_cache_unpack_seconds", "Time to unpack one artifact from the cache",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.cache_used = Gauge(
            "meshlet_cache_used_bytes", "Compressed bytes in the node cache", registry=registry
        )
        self.cache_quota = Gauge(
            "meshlet_cache_quota_bytes", "Node cache quota", registry=registry
        )
        self.node_memory_limit = Gauge(
            "meshlet_node_memory_limit_bytes",
            "Memory this agent's node or container may use (the lower of RAM and cgroup)",
            registry=registry,
        )
        self.node_memory_available = Gauge(
            "meshlet_node_memory_available_bytes", "Memory available now (node or cgroup)",
            registry=registry,
        )
        self.node_cpu_limit = Gauge(
            "meshlet_node_cpu_limit_cores", "CPU cores this agent may use", registry=registry
        )
        self.runtime_rss = Gauge(
            "meshlet_runtime_rss_bytes", "RSS of all runtime processes and their children",
            registry=registry,
        )
        self.monitor_cpu = Gauge(
            "meshlet_resource_monitor_cpu_seconds",
            "CPU time the resource monitor has spent sampling", registry=registry,
        )
        self.gpu_free = Gauge(
            "meshlet_gpu_free_bytes", "Free memory per GPU (NVML)", ["gpu"], registry=registry
        )
        self.ok = self.requests.labels(code="OK")  # pre-bound: the hot path's counter

    def bind(
        self, loaded: Callable[[], float], used: Callable[[], float], budget: Callable[[], float]
    ) -> None:
        """Gauges read at scrape time, so the request path never updates them."""
        self.models_loaded.set_function(loaded)
        self.memory_used.set_function(used)
        self.memory_budget.set_function(budget)

    def observe_resources(self, resources: NodeResources) -> None:
        """Set the node gauges from one resource-monitor sample."""
        self.node_memory_limit.set(resources.memory_limit_bytes)
        self.node_memory_available.set(resources.memory_available_bytes)
        self.node_cpu_limit.set(resources.cpu_limit_cores)
        self.runtime_rss.set(sum(p.rss_bytes for p in resources.processes.values()))
        for gpu in resources.gpus:
            self.gpu_free.labels(gpu=str(gpu.index)).set(gpu.free_bytes)

    def bind_cluster(self, source: Callable[[], ClusterFigures]) -> None:
        """Cluster figures, read from ``source`` at scrape time."""
        self.registry.register(_ClusterCollector(source))

    def bind_cache(self, used: Callable[[], float], quota: Callable[[], float]) -> None:
        self.cache_used.set_function(used)
        self.cache_quota.set_function(quota)
