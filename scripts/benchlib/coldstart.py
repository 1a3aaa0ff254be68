"""``bench coldstart --samples K``: the first request to a registered, unloaded model.

An agent with ``--demo K`` and nothing loaded; one at a time, for each model,
a checked ModelInfer timed end to end at the client (the load included), then
a second request to the same model (warm) for comparison. The client's channel
is opened and used (ServerLive) before the first sample.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import tritonclient.grpc.aio as triton_aio

from .agents import BenchAgent, default_budget_bytes
from .client import check_simple_string, demo_ids, simple_string_inputs
from .report import environment, percentile, print_environment, progress, say


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=100, help="cold models, one request each")
    p.add_argument("--memory-budget-bytes", type=int, default=0,
                   help="agent memory budget (default 80%% of RAM: nothing evicted)")


async def _measure(address: str, ids: list[str]) -> dict[str, Any]:
    rng = random.Random(3)
    cold: list[float] = []
    warm: list[float] = []
    errors: list[str] = []
    async with triton_aio.InferenceServerClient(address) as client:
        await client.is_server_live()
        for i, model_id in enumerate(ids):
            inputs, a, b = simple_string_inputs(rng)
            for bucket in (cold, warm):
                t0 = time.perf_counter()
                try:
                    response = await client.infer(model_id, inputs, client_timeout=120)
                except Exception as err:  # tritonclient's own exception type
                    errors.append(f"{model_id}: {err}"[:300])
                    break
                elapsed = (time.perf_counter() - t0) * 1e3
                wrong = check_simple_string(response, a, b)
                if wrong:
                    errors.append(f"{model_id}: {wrong}")
                    break
                bucket.append(elapsed)
            if (i + 1) % 50 == 0:
                progress(f"  {i + 1}/{len(ids)} cold requests")
    return {"cold": cold, "warm": warm, "errors": errors}


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment()
    print_environment(env)
    k = args.samples
    budget = args.memory_budget_bytes or default_budget_bytes()
    say(f"coldstart: {k} registered, unloaded simple-string models, one at a time")
    agent = BenchAgent(k, budget, keep=args.keep, label="coldstart")
    try:
        agent.start()
        measured = asyncio.run(_measure(agent.address, demo_ids(k)))
        metrics = agent.metrics()
    finally:
        agent.stop()
    cold, warm = measured["cold"], measured["warm"]
    first = cold[0] if cold else float("nan")
    cold_sorted, warm_sorted = sorted(cold), sorted(warm)
    result: dict[str, Any] = {
        "benchmark": "coldstart",
        "samples": len(cold),
        "samples_requested": k,
        "p50_ms": percentile(cold_sorted, 50),
        "p90_ms": percentile(cold_sorted, 90),
        "p99_ms": percentile(cold_sorted, 99),
        "mean_ms": sum(cold) / len(cold) if cold else float("nan"),
        "max_ms": cold_sorted[-1] if cold else float("nan"),
        "first_ms": first,
        "warm_p50_ms": percentile(warm_sorted, 50),
        "warm_p99_ms": percentile(warm_sorted, 99),
        "errors": len(measured["errors"]),
        "error_samples": measured["errors"][:5],
        "agent_metrics": metrics,
        "orphans": agent.orphans,
        **env,
    }
    say()
    say(f"cold first request  p50 {result['p50_ms']:.2f} ms, p90 {result['p90_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms, mean {result['mean_ms']:.2f} ms, "
        f"max {result['max_ms']:.2f} ms ({result['samples']} samples; the very first "
        f"{first:.1f} ms)")
    say(f"warm second request p50 {result['warm_p50_ms']:.2f} ms, "
        f"p99 {result['warm_p99_ms']:.2f} ms")
    if result["errors"]:
        say(f"errors              {result['errors']}, e.g. {result['error_samples'][:2]}")
    return result
