"""``bench serve``: inference throughput and latency through meshlet and directly
against the same runtime process (MLServer, or Triton with ``--runtime
triton``), in the same run.

An agent with ``--demo N`` loads all N models; then the load generator (its own
process, ``loadgen.py``) runs twice with the same plan: once at the agent's
address ("through"), once at the runtime's own gRPC port ("direct"), which the
agent's runtime child was started with (``--grpc-port P`` on its command line).
With ``--runtime triton`` the agent runs Triton only and the demo models are
the Python-backend simple-string (one stub process each); the figures then
also say how many such models fit per GiB (their measured sizes).
CPU time of the agent alone, of the runtime process tree and of the load
generator is read at the edges of each measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import psutil

from agent.proto import grpc_service_pb2 as kserve
from agent.proto import grpc_service_pb2_grpc as kserve_grpc

from .agents import BenchAgent, RuntimeProc, default_budget_bytes
from .client import demo_ids, load_all, server_live
from .report import environment, mib, print_environment, progress, say


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=int, required=True, help="models loaded and spread over")
    p.add_argument("--runtime", choices=("mlserver", "triton"), default="mlserver",
                   help="the runtime serving the demo models (default: mlserver)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="requests in flight (closed loop; ignored with --rate)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before")
    p.add_argument("--rate", type=float, default=0.0,
                   help="offered QPS: open loop at a fixed rate instead of fixed concurrency")
    p.add_argument("--max-outstanding", type=int, default=0,
                   help="open loop: cap on requests in flight (default max(1000, rate))")
    p.add_argument("--client", choices=("tritonclient", "raw"), default="tritonclient",
                   help="tritonclient.grpc.aio builds each request (default); raw sends "
                        "pre-serialized bytes, so the generator needs less CPU")
    p.add_argument("--only", choices=("both", "through", "direct"), default="both")
    p.add_argument("--load-batch", type=int, default=48, help="ensureLoaded calls in flight")
    p.add_argument("--memory-budget-bytes", type=int, default=0,
                   help="agent memory budget (default 80%% of RAM: nothing evicted)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment()
    print_environment(env)
    n = args.models
    budget = args.memory_budget_bytes or default_budget_bytes()
    mode = (f"open loop, {args.rate:,.0f} QPS offered" if args.rate
            else f"closed loop, {args.concurrency} in flight")
    say(f"serve: {n:,} models, {mode}, {args.warmup:g} s warmup + {args.duration:g} s "
        f"per run, client {args.client}")

    runtime_env = {"MESHLET_RUNTIMES": json.dumps([args.runtime]),
                   "MESHLET_DEMO_RUNTIME": args.runtime}
    agent = BenchAgent(n, budget, keep=args.keep, label="serve", extra_env=runtime_env)
    work = Path(tempfile.mkdtemp(prefix="meshlet-bench-plan-"))
    try:
        agent.start(timeout_s=max(300.0, n / 100))
        progress(f"loading {n:,} models through {agent.address} ...")
        loads = asyncio.run(load_all(agent.address, demo_ids(n), args.load_batch, rss=agent.rss))
        if loads.failed:
            say(f"WARNING: {loads.failed:,} loads failed, e.g. {loads.errors[:2]}")
        say(f"loaded {loads.loaded:,} models in {loads.seconds:.1f} s "
            f"({loads.per_s:,.0f}/s); agent RSS {mib(agent.rss())}")

        runtimes = agent.runtimes()
        direct_targets = asyncio.run(_direct_targets(runtimes, demo_ids(n)))
        say(f"runtime processes: {', '.join(str(r.pid) for r in runtimes)}; direct targets: "
            + ", ".join(f"{a} ({len(m):,} models)" for a, m in direct_targets.items()))
        runtime_pids = [p.pid for r in runtimes for p in r.tree()]
        watch = {"agent": [agent.pid], "runtime": runtime_pids}
        base_plan = {
            "concurrency": args.concurrency,
            "rate": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "seed": 1,
            "client": args.client,
            "max_outstanding": args.max_outstanding or max(1000, int(args.rate)),
            "watch": watch,
        }
        runs: dict[str, dict[str, Any]] = {}
        if args.only in ("both", "through"):
            plan = {**base_plan, "targets": {agent.address: demo_ids(n)}}
            runs["through"] = _loadgen(work / "through.json", plan, "through meshlet")
        if args.only in ("both", "direct"):
            if not direct_targets:
                raise SystemExit("no runtime gRPC address found for the direct run")
            plan = {**base_plan, "targets": direct_targets}
            runs["direct"] = _loadgen(work / "direct.json", plan, f"direct to {args.runtime}")
        metrics = agent.metrics()
        runtime_rss = sum(_rss(p) for r in runtimes for p in r.tree())
    finally:
        agent.stop()
        for f in work.glob("*"):
            f.unlink()
        work.rmdir()

    for figures in runs.values():
        reqs = figures["requests"] or float("nan")
        cpu = figures.pop("cpu_s")
        figures["agent_cpu_us_per_request"] = cpu.get("agent", float("nan")) / reqs * 1e6
        figures["runtime_cpu_us_per_request"] = cpu.get("runtime", float("nan")) / reqs * 1e6
        figures["loadgen_cpu_us_per_request"] = cpu.get("loadgen", float("nan")) / reqs * 1e6
        figures["cpu_s"] = cpu
    through, direct = runs.get("through"), runs.get("direct")
    ratio = (through["qps"] / direct["qps"]) if through and direct and direct["qps"] else None
    result: dict[str, Any] = {
        "benchmark": "serve",
        "runtime": args.runtime,
        "models": n,
        "concurrency": None if args.rate else args.concurrency,
        "rate": args.rate or None,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "client": args.client,
        "through": through,
        "direct": direct,
        "qps_ratio": ratio,
        "agent_cpu_us_per_request": through["agent_cpu_us_per_request"] if through else None,
        "runtime_processes": len(runtimes),
        "loads_per_s": loads.per_s,
        "loads_failed": loads.failed,
        "runtime_rss_bytes": runtime_rss,
        "models_per_gib": _models_per_gib(metrics),
        "agent_metrics": metrics,
        "orphans": agent.orphans,
        **env,
    }
    _print(result)
    return result


async def _direct_targets(runtimes: list[RuntimeProc], names: list[str]) -> dict[str, list[str]]:
    """Runtime gRPC address -> the models it holds.

    The port comes from the launcher's command line, else from the ports its
    process tree listens on (the first that answers KServe ServerLive). With
    one runtime process it holds every model; with several, each is asked.
    """
    addresses = []
    for r in runtimes:
        ports = [r.grpc_port] if r.grpc_port else r.listen_ports
        for port in ports:
            if await server_live(f"127.0.0.1:{port}"):
                addresses.append(f"127.0.0.1:{port}")
                break
        else:
            progress(f"runtime pid {r.pid}: no gRPC port answers (cmdline {r.cmdline[:8]})")
    if len(addresses) <= 1:
        return {a: names for a in addresses}
    wanted = set(names)
    targets = {}
    for address in addresses:
        async with grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 1 << 30)]
        ) as channel:
            index = await kserve_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
                kserve.RepositoryIndexRequest(ready=True), timeout=120
            )
        held = [m.name for m in index.models if m.name in wanted]
        if held:
            targets[address] = held
    return targets


def _rss(p: psutil.Process) -> int:
    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0


def _models_per_gib(metrics: dict[str, float]) -> float | None:
    """Models that fit in 1 GiB at their measured (or predicted) mean size."""
    used = metrics.get("meshlet_memory_used_bytes")
    loaded = metrics.get("meshlet_models_loaded")
    if not used or not loaded:
        return None
    return float(2**30 / (used / loaded))


def _loadgen(plan_path: Path, plan: dict[str, Any], label: str) -> dict[str, Any]:
    """Run the load generator in its own process; its last stdout line is the result."""
    plan_path.write_text(json.dumps(plan))
    progress(f"{label}: {plan['warmup_s']:g} s warmup + {plan['duration_s']:g} s ...")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.benchlib.loadgen", str(plan_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        out, _ = proc.communicate(timeout=plan["warmup_s"] + plan["duration_s"] + 180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"load generator ({label}) exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _print(r: dict[str, Any]) -> None:
    say()
    head = f"{'':10} {'QPS':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}" \
           f" {'agent us/req':>12} {'runtime us/req':>14} {'loadgen us/req':>14}"
    say(head)
    for name in ("through", "direct"):
        f = r[name]
        if not f:
            continue
        say(f"{name:10} {f['qps']:8,.0f} {f['p50_ms']:8.2f} {f['p99_ms']:8.2f} "
            f"{f['max_ms']:8.1f} {f['errors']:7,} {f['agent_cpu_us_per_request']:12,.0f} "
            f"{f['runtime_cpu_us_per_request']:14,.0f} {f['loadgen_cpu_us_per_request']:14,.0f}")
        if f["error_samples"]:
            say(f"  {name} errors, e.g.: {f['error_samples'][:2]}")
        if "offered_qps" in f:
            say(f"  {name}: offered {f['offered_qps']:,.0f} QPS, {f['sent']:,} sent, "
                f"{f['sent_late_over_1ms']:,} sent >1 ms late")
    if r["qps_ratio"] is not None:
        say(f"qps_ratio (through / direct)  {r['qps_ratio']:.2f}")
    if r["through"]:
        say(f"agent_cpu_us_per_request      {r['agent_cpu_us_per_request']:,.0f} "
            "(agent process only, user+sys, over the through run)")
    if r["through"] and r["direct"]:
        added = r["through"]["p50_ms"] - r["direct"]["p50_ms"]
        say(f"added p50 latency             {added:.2f} ms")
    say(f"runtime processes RSS         {mib(r['runtime_rss_bytes'])} "
        f"({r['runtime']}, {r['models']:,} models)")
    if r["models_per_gib"]:
        say(f"models per GiB                {r['models_per_gib']:,.1f} (at their mean size "
            "as the agent accounts it)")
    if r["orphans"]:
        say(f"ORPHANED runtimes             {r['orphans']}")
