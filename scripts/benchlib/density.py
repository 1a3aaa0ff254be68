"""``bench density --models N``: how many models one agent holds, and what they cost.

1. A baseline agent with nothing registered: its RSS at rest.
2. An agent with ``--demo N`` (N registered, none loaded): its RSS at rest.
3. Load all N through ``ensureLoaded(sync=true)``, ``--batch`` in flight.
4. Count what ``RepositoryIndex(ready=true)`` lists; RSS of the agent and of
   its runtime processes; then one checked ModelInfer to ``--sample`` random
   models.

bytes_per_model is the runtimes' summed RSS / models resident (RSS counts
shared pages once per process; PSS is printed beside it).

``--processes N|auto`` packs the models into a pool of up to N MLServer
processes (auto: one per CPU), each holding at most ceil(models / N). Then
also: packing_efficiency = the sum of the models' accounted (measured) sizes /
what loading them added to the runtimes' RSS (each process's RSS less what
an empty one takes, measured before loading; packing_efficiency_total divides
by the runtimes' whole RSS instead, empty processes included); size_error_p50
= the median of measured / predicted size (from the agent's histogram);
monitor_cpu_fraction = the resource monitor's CPU time / the agent's wall time.
agent_bytes_per_registered_model is (agent RSS with N loaded - baseline agent
RSS) / N: everything the agent spends per model, registered and loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from typing import Any

from .agents import BenchAgent, default_budget_bytes
from .client import demo_ids, infer_each, load_all, ready_models
from .report import environment, mib, percentile, print_environment, progress, say

SETTLE_S = 2.0  # let the agent finish start-up work before reading its RSS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=int, required=True, help="models to register and load")
    p.add_argument("--batch", type=int, default=48, help="ensureLoaded calls in flight")
    p.add_argument("--sample", type=int, default=1000, help="random models inferred after")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the empty baseline agent (then per-model agent bytes are "
                        "measured from the agent with N registered, before loading)")
    p.add_argument("--processes", default="1", metavar="N|auto",
                   help="MLServer processes to pack into (auto: one per CPU; default 1)")
    p.add_argument("--memory-budget-bytes", type=int, default=0,
                   help="agent memory budget (default 80%% of RAM: nothing evicted)")


def _settled_rss(agent: BenchAgent) -> int:
    time.sleep(SETTLE_S)  # a measurement pause, not a wait for a condition
    return agent.rss()


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment()
    print_environment(env)
    n = args.models
    budget = args.memory_budget_bytes or default_budget_bytes()
    say(f"density: {n:,} simple-string models, {args.batch} loads in flight, "
        f"budget {mib(budget)}")

    baseline_rss = None
    if not args.no_baseline:
        base = BenchAgent(0, budget, keep=args.keep, label="baseline")
        try:
            base.start()
            baseline_rss = _settled_rss(base)
        finally:
            base.stop()
        say(f"baseline agent (0 registered): RSS {mib(baseline_rss)}")

    processes = (os.cpu_count() or 1) if args.processes == "auto" else int(args.processes)
    pool_env = {
        "MESHLET_RUNTIME_PROCESSES_MAX": str(processes),
        "MESHLET_RUNTIME_PROCESS_MAX_MODELS": str(-(-n // processes) if processes > 1 else 0),
    }
    agent = BenchAgent(n, budget, keep=args.keep, label="density", extra_env=pool_env)
    try:
        t0 = time.perf_counter()
        agent.start(timeout_s=max(300.0, n / 100))
        start_s = time.perf_counter() - t0
        registered_rss = _settled_rss(agent)
        runtime_rss_empty = agent.descendants_rss()
        empty_per_process = runtime_rss_empty / max(len(agent.runtimes()), 1)
        say(f"agent ready in {start_s:.1f} s with {n:,} registered: RSS {mib(registered_rss)}")

        progress(f"loading {n:,} models through {agent.address} ...")
        loads = asyncio.run(load_all(agent.address, demo_ids(n), args.batch, rss=agent.rss))
        agent_rss = agent.rss()
        runtimes = agent.runtimes()
        runtime_rss = agent.descendants_rss()
        runtime_pss = agent.descendants_pss()

        names, index_s = asyncio.run(ready_models(agent.address))
        resident = len(names)
        agent_rss_after_index = agent.rss()

        rng = random.Random(7)
        sample_ids = rng.sample(names, min(args.sample, resident)) if resident else []
        t1 = time.perf_counter()
        sample = asyncio.run(infer_each(agent.address, sample_ids, 16))
        sample_s = time.perf_counter() - t1
        metrics = agent.metrics()
        size_ratio_p50 = _histogram_p50(agent.metrics_text(),
                                        "meshlet_model_size_measured_over_predicted")
        agent_wall_s = time.perf_counter() - t0
        agent_rss_end = agent.rss()
    finally:
        agent.stop()

    ref_rss = baseline_rss if baseline_rss is not None else registered_rss
    bytes_per_model = runtime_rss / resident if resident else float("nan")
    result: dict[str, Any] = {
        "benchmark": "density",
        "models_requested": n,
        "models_resident": resident,
        "agent_rss_bytes": agent_rss,
        "runtime_rss_bytes": runtime_rss,
        "bytes_per_model": bytes_per_model,
        "bytes_per_model_basis": "runtime processes' summed RSS / models resident",
        "runtime_rss_empty_bytes": runtime_rss_empty,
        "runtime_bytes_per_model_marginal": (
            (runtime_rss - runtime_rss_empty) / resident if resident else float("nan")
        ),
        "loads_per_s": loads.per_s,
        "agent_bytes_per_registered_model": (agent_rss - ref_rss) / n if n else float("nan"),
        "agent_bytes_per_registered_model_basis": (
            "(agent RSS with N loaded - empty baseline agent RSS) / N" if baseline_rss is not None
            else "(agent RSS with N loaded - agent RSS with N registered, 0 loaded) / N"
        ),
        "agent_rss_baseline_bytes": baseline_rss,
        "agent_rss_registered_bytes": registered_rss,
        "agent_bytes_per_loaded_model": (agent_rss - registered_rss) / n if n else float("nan"),
        "agent_rss_after_index_bytes": agent_rss_after_index,
        "agent_rss_end_bytes": agent_rss_end,
        "runtime_pss_bytes": runtime_pss,
        "runtime_processes": len(runtimes),
        "agent_start_s": start_s,
        "load_s": loads.seconds,
        "loads_ok": loads.loaded,
        "loads_failed": loads.failed,
        "load_errors": loads.errors,
        "load_p50_ms": percentile(loads.latencies_ms, 50),
        "load_p99_ms": percentile(loads.latencies_ms, 99),
        "load_in_flight": args.batch,
        "repository_index_s": index_s,
        "processes": len(runtimes),
        "processes_max": processes,
        "packing_efficiency": (
            metrics.get("meshlet_memory_used_bytes", 0.0) / models_rss
            if (models_rss := runtime_rss - empty_per_process * len(runtimes)) > 0 else None
        ),
        "runtime_rss_empty_per_process_bytes": empty_per_process,
        "packing_efficiency_total": (
            metrics.get("meshlet_memory_used_bytes", 0.0) / runtime_rss if runtime_rss else None
        ),
        "size_error_p50": size_ratio_p50,
        "monitor_cpu_fraction": (
            metrics.get("meshlet_resource_monitor_cpu_seconds", 0.0) / agent_wall_s
        ),
        "sampled": len(sample_ids),
        "sampled_ok": sample.ok,
        "sample_errors": sample.errors,
        "sample_s": sample_s,
        **{f"sample_{k}": v for k, v in sample.summary().items()},
        "memory_budget_bytes": budget,
        "agent_metrics": metrics,
        "orphans": agent.orphans,
        **env,
    }
    _print(result)
    return result


def _histogram_p50(text: str, name: str) -> float | None:
    """The bucket bound under which half the observations fall (None: none)."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound),
                            float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = max(count for _, count in buckets)
    return next(bound for bound, count in sorted(buckets) if count >= total / 2)


def _print(r: dict[str, Any]) -> None:
    say()
    say(f"models resident        {r['models_resident']:,} of {r['models_requested']:,} "
        f"({r['loads_failed']:,} loads failed)")
    say(f"loads per second       {r['loads_per_s']:,.0f}  ({r['load_s']:.1f} s; per load "
        f"p50 {r['load_p50_ms']:.1f} ms, p99 {r['load_p99_ms']:.1f} ms, {r['load_in_flight']} "
        "in flight)")
    say(f"agent RSS              {mib(r['agent_rss_bytes'])} loaded "
        f"(registered only: {mib(r['agent_rss_registered_bytes'])}"
        + (f"; empty baseline: {mib(r['agent_rss_baseline_bytes'])}"
           if r["agent_rss_baseline_bytes"] is not None else "") + ")")
    say(f"agent bytes per model  {r['agent_bytes_per_registered_model']:,.0f} "
        f"[{r['agent_bytes_per_registered_model_basis']}]")
    say(f"  of which loading     {r['agent_bytes_per_loaded_model']:,.0f} "
        "[(RSS loaded - RSS registered) / N]")
    pss = r["runtime_pss_bytes"]
    say(f"runtime RSS            {mib(r['runtime_rss_bytes'])} in {r['runtime_processes']} "
        f"runtime process(es)" + (f" (PSS {mib(pss)})" if pss is not None else ""))
    say(f"bytes per model        {r['bytes_per_model']:,.0f} [{r['bytes_per_model_basis']}]")
    say(f"  marginal             {r['runtime_bytes_per_model_marginal']:,.0f} "
        f"[(runtime RSS loaded - runtime RSS with 0 loaded "
        f"{mib(r['runtime_rss_empty_bytes'])}) / resident]")
    say(f"RepositoryIndex        {r['repository_index_s'] * 1e3:,.0f} ms for "
        f"{r['models_resident']:,} ready models; agent RSS after "
        f"{mib(r['agent_rss_after_index_bytes'])}")
    say(f"sampled inference      {r['sampled_ok']:,} of {r['sampled']:,} ok "
        f"(p50 {r['sample_p50_ms']:.2f} ms, p99 {r['sample_p99_ms']:.2f} ms)")
    say(f"agent start            {r['agent_start_s']:.1f} s (with {r['models_requested']:,} "
        "registered by --demo)")
    eff = r["packing_efficiency"]
    say(f"packing efficiency     {eff if eff is None else round(eff, 3)} [accounted sizes / "
        f"runtime RSS added]; {r['packing_efficiency_total']:.3f} of the whole runtime RSS")
    say(f"size measured/predicted p50 {r['size_error_p50']}")
    say(f"monitor CPU            {r['monitor_cpu_fraction'] * 100:.3f}% of one core")
    ev = {k: v for k, v in r["agent_metrics"].items()
          if "evictions" in k or "failures" in k or "memory_used" in k}
    if ev:
        say(f"agent metrics          {ev}")
    if r["orphans"]:
        say(f"ORPHANED runtimes      {r['orphans']}")
