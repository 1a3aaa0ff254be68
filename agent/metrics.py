"""Prometheus metrics of one agent, in a registry passed in (never the global one).

No per-model labels: with 100,000 models a label per model would cost more
memory than the models. Per-model figures are in ``meshlet model status``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.resources.monitor import NodeResources


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

    def bind_cache(self, used: Callable[[], float], quota: Callable[[], float]) -> None:
        self.cache_used.set_function(used)
        self.cache_quota.set_function(quota)
