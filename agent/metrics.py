"""Prometheus metrics of one agent, in a registry passed in (never the global one).

No per-model labels: with 100,000 models a label per model would cost more
memory than the models. Per-model figures are in ``meshlet model status``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.ok = self.requests.labels(code="OK")  # pre-bound: the hot path's counter

    def bind(
        self, loaded: Callable[[], float], used: Callable[[], float], budget: Callable[[], float]
    ) -> None:
        """Gauges read at scrape time, so the request path never updates them."""
        self.models_loaded.set_function(loaded)
        self.memory_used.set_function(used)
        self.memory_budget.set_function(budget)
