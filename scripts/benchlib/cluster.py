"""``bench cluster``: the cluster, simulated at scale and real on loopback.

**sim** (``--sizes 10,100,1000``): the real membership and gossip code over
the in-memory network in virtual time (``cluster_sim``): rounds and seconds
until a registry write reaches every member (p50, p99), time until a killed
member is DEAD everywhere, bytes sent per member per second.

**real** (``--real``, on by default; ``--no-real`` skips it): agents on
loopback, each with its own MLServer, default cluster settings:

1. *forwarding*: two agents; a model loaded on the entry node and one loaded
   only on the other (``MESHLET_COPY_RECENT_S=0`` and no rate threshold, so
   copies that follow load do not move it to the entry node); ``--samples``
   sequential requests to each through the entry node;
   ``forward_added_p50_ms`` = p50(forwarded) - p50(local).
2. *node loss*: four agents; ``--models`` models registered and loaded on
   the second; a client sends ``--rate`` requests/s round them through the
   first, with no retries of its own; after ``--before`` seconds the second
   is SIGKILLed, and traffic goes on for ``--after`` seconds.
   ``failed_requests`` counts client errors; ``recovery_s`` is, over the
   killed node's models, the longest time from the kill until a request sent
   after it was answered (a retry onto a survivor's copy, or a load there).
3. *bulk registration*: a second agent joins a first with ``--bulk`` demo
   models registered at its start (one batch); ``bulk_replication_s`` is the
   time from that agent being ready until the first agent's registry holds
   them all (read from its SQLite file, read-only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from typing import Any

import grpc
import tritonclient.grpc.aio as triton_aio

from agent.proto import model_mesh_pb2 as mm
from agent.proto import model_mesh_pb2_grpc as mm_grpc

from .agents import BenchAgent
from .client import check_simple_string, simple_string_inputs
from .report import environment, percentile, print_environment, progress, say

KEY = "meshlet-bench-cluster-key-0123456789"
BUDGET = 512 * 2**20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="10,100,1000",
                   help="simulated cluster sizes, comma-separated ('' skips the simulation)")
    p.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                   help="run the real-process part (default: yes)")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s during the kill")
    p.add_argument("--models", type=int, default=8, help="models on the node that is killed")
    p.add_argument("--before", type=float, default=3.0, help="seconds of traffic before the kill")
    p.add_argument("--after", type=float, default=5.0, help="seconds of traffic after the kill")
    p.add_argument("--samples", type=int, default=1000,
                   help="sequential requests per model for the forwarding latency")
    p.add_argument("--bulk", type=int, default=20_000,
                   help="registrations made at once on one node for the replication time "
                        "(0 skips it)")


def _cluster_env() -> dict[str, str]:
    """What every agent of a bench cluster shares: the key, the peer host."""
    return {"MESHLET_CLUSTER_KEYS": json.dumps([KEY]), "MESHLET_PEER_HOST": "127.0.0.1"}


def _cluster(n: int, keep: bool, env: dict[str, str]) -> list[BenchAgent]:
    base = {**_cluster_env(), **env}
    agents: list[BenchAgent] = []
    try:
        first = BenchAgent(0, BUDGET, keep, base, label="node-0").start()
        agents.append(first)
        seed = f"127.0.0.1:{first.process.info['peer_port']}"
        for i in range(1, n):
            agents.append(BenchAgent(0, BUDGET, keep, base, ["--peers", seed],
                                     label=f"node-{i}").start())
    except BaseException:
        for agent in agents:
            agent.stop()
        raise
    return agents


def _register(address: str, model_ids: list[str]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = mm_grpc.ModelMeshStub(channel)
        for model_id in model_ids:
            stub.registerModel(mm.RegisterModelRequest(
                modelId=model_id, loadNow=True, sync=True,
                modelInfo=mm.ModelInfo(type="simple-string", path="builtin://simple-string"),
            ), timeout=60)


def _wait_loaded_everywhere(address: str, model_ids: list[str], timeout_s: float = 30) -> None:
    """Until ``address`` sees every model loaded (on itself or a peer)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = mm_grpc.ModelMeshStub(channel)
        for model_id in model_ids:
            while stub.getModelStatus(mm.GetStatusRequest(modelId=model_id)).status != \
                    mm.ModelStatusInfo.LOADED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{address} never saw {model_id} loaded")
                time.sleep(0.05)  # poll


async def _sequential(address: str, model_id: str, samples: int) -> list[float]:
    import random
    rng = random.Random(5)
    out: list[float] = []
    async with triton_aio.InferenceServerClient(address) as client:
        for i in range(samples + 50):
            inputs, a, b = simple_string_inputs(rng)
            t0 = time.perf_counter()
            response = await client.infer(model_id, inputs, client_timeout=60)
            elapsed = (time.perf_counter() - t0) * 1e3
            wrong = check_simple_string(response, a, b)
            if wrong:
                raise AssertionError(f"{model_id}: {wrong}")
            if i >= 50:  # warm-up
                out.append(elapsed)
    return sorted(out)


def _forwarding(args: argparse.Namespace) -> dict[str, Any]:
    progress("real: forwarding latency (2 agents)")
    agents = _cluster(2, args.keep, {"MESHLET_COPY_RECENT_S": "0",
                                     "MESHLET_COPY_RATE_THRESHOLD": "1e9"})
    try:
        entry, other = agents
        _register(entry.address, ["local-0"])
        _register(other.address, ["remote-0"])
        _wait_loaded_everywhere(entry.address, ["local-0", "remote-0"])
        local = asyncio.run(_sequential(entry.address, "local-0", args.samples))
        forwarded = asyncio.run(_sequential(entry.address, "remote-0", args.samples))
    finally:
        for agent in agents:
            agent.stop()
    p50_local, p50_fwd = percentile(local, 0.5), percentile(forwarded, 0.5)
    return {
        "local_p50_ms": p50_local, "local_p99_ms": percentile(local, 0.99),
        "forwarded_p50_ms": p50_fwd, "forwarded_p99_ms": percentile(forwarded, 0.99),
        "forward_added_p50_ms": p50_fwd - p50_local,
        "forward_ratio_p50": p50_fwd / p50_local if p50_local else None,
    }


async def _traffic(
    address: str, models: list[str], rate: float, kill_at: float, end_at: float,
    kill: Any,
) -> dict[str, Any]:
    import random
    rng = random.Random(9)
    records: list[tuple[float, float, str, str | None]] = []  # sent, done, model, error
    loop = asyncio.get_running_loop()
    killed_at: list[float] = []
    async with triton_aio.InferenceServerClient(address) as client:
        pending: set[asyncio.Task[None]] = set()

        async def one(model_id: str) -> None:
            inputs, a, b = simple_string_inputs(rng)
            sent = loop.time()
            error: str | None = None
            try:
                response = await client.infer(model_id, inputs, client_timeout=60)
                error = check_simple_string(response, a, b) or None
            except Exception as err:  # tritonclient's own exception type
                error = str(err)[:300]
            records.append((sent, loop.time(), model_id, error))

        start = loop.time()
        i = 0
        while loop.time() - start < end_at:
            if not killed_at and loop.time() - start >= kill_at:
                await loop.run_in_executor(None, kill)
                killed_at.append(loop.time())
            task = asyncio.create_task(one(models[i % len(models)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))  # pacing
        await asyncio.gather(*pending)
    kill_time = killed_at[0]
    failures = [r for r in records if r[3]]
    recovery = 0.0
    for model_id in models:
        after = [r for r in records if r[2] == model_id and r[0] >= kill_time and not r[3]]
        if after:
            recovery = max(recovery, min(r[1] for r in after) - kill_time)
        else:
            recovery = float("inf")
    latencies = sorted((r[1] - r[0]) * 1e3 for r in records if not r[3])
    return {
        "requests": len(records), "failed_requests": len(failures),
        "failure_samples": [f"{r[2]}: {r[3]}" for r in failures[:5]],
        "recovery_s": recovery,
        "achieved_rate": len(records) / end_at,
        "latency_p50_ms": percentile(latencies, 0.5) if latencies else None,
        "latency_p99_ms": percentile(latencies, 0.99) if latencies else None,
        "latency_max_ms": latencies[-1] if latencies else None,
    }


def _node_loss(args: argparse.Namespace) -> dict[str, Any]:
    progress("real: SIGKILL of the node holding the models (4 agents)")
    agents = _cluster(4, args.keep, {})
    try:
        entry, victim = agents[0], agents[1]
        models = [f"busy-{i}" for i in range(args.models)]
        _register(victim.address, models)
        _wait_loaded_everywhere(entry.address, models)
        result = asyncio.run(_traffic(
            entry.address, models, args.rate, args.before, args.before + args.after,
            victim.process.kill,
        ))
    finally:
        for agent in agents:
            agent.stop()
    return result


def _registered(agent: BenchAgent) -> int:
    with sqlite3.connect(f"file:{agent.data_dir / 'registry.sqlite3'}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT count(*) FROM models").fetchone()[0]
    return count


def _bulk(args: argparse.Namespace) -> dict[str, Any]:
    progress(f"real: {args.bulk:,} registrations on one node reaching another")
    agents = _cluster(1, args.keep, {})
    try:
        seed = f"127.0.0.1:{agents[0].process.info['peer_port']}"
        agents.append(BenchAgent(args.bulk, BUDGET, args.keep, _cluster_env(), ["--peers", seed],
                                 label="bulk").start())
        began = time.monotonic()
        deadline = began + 600
        held = _registered(agents[0])
        while held < args.bulk:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {held:,} of {args.bulk:,} replicated in 600 s")
            time.sleep(0.1)  # poll: the peer's SQLite file
            held = _registered(agents[0])
        took = time.monotonic() - began
    finally:
        for agent in agents:
            agent.stop()
    return {"bulk_models": args.bulk, "bulk_replication_s": round(took, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment()
    print_environment(env)
    result: dict[str, Any] = {"benchmark": "cluster", **env}
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if sizes:
        from .cluster_sim import run_sim  # the simulation needs none of the real parts

        result["sim"] = run_sim(sizes, progress=progress)
        say("simulated (in-memory transport, virtual time, default settings):")
        say(f"  {'members':>8} {'p50 rounds':>10} {'p99 rounds':>10} {'p99 s':>7} "
            f"{'detect s':>8} {'bytes/member/s':>15}")
        for row in result["sim"]:
            say(f"  {row['members']:>8} {row['p50_rounds']:>10} {row['p99_rounds']:>10} "
                f"{row['p99_s']:>7.3f} {row['detect_s']:>8.2f} "
                f"{row['bytes_per_member_s']:>15,.0f}")
    if args.real:
        forwarding = _forwarding(args)
        loss = _node_loss(args)
        bulk = _bulk(args) if args.bulk else {}
        result["real"] = {**loss, **forwarding, **bulk, "rate": args.rate,
                          "models": args.models}
        say("real agents on loopback:")
        say(f"  forwarded request: p50 {forwarding['forwarded_p50_ms']:.2f} ms vs local "
            f"{forwarding['local_p50_ms']:.2f} ms: added {forwarding['forward_added_p50_ms']:.2f}"
            f" ms (target < 1 ms)")
        say(f"  SIGKILL under {args.rate:.0f} req/s: {loss['failed_requests']} failed of "
            f"{loss['requests']} (target 0), recovery {loss['recovery_s']:.3f} s, latency p99 "
            f"{loss['latency_p99_ms']:.1f} ms, max {loss['latency_max_ms']:.1f} ms")
        if bulk:
            say(f"  {args.bulk:,} registrations made at once on one node held by another "
                f"{bulk['bulk_replication_s']:.1f} s after")
    return result
