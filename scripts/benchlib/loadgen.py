"""The load generator ``serve`` runs in a process of its own.

    python -m scripts.benchlib.loadgen PLAN.json

PLAN (JSON): ``targets`` {address: [model names]}, ``concurrency``, ``rate``
(0 = closed loop), ``duration_s``, ``warmup_s``, ``seed``, ``client``
("tritonclient": ``tritonclient.grpc.aio`` builds every request, as users'
clients do; "raw": each model's request is serialized once and sent as bytes,
so the generator takes less of the CPU it shares with what it measures),
``max_outstanding`` (open loop), ``watch`` {group: [pids]} whose CPU time is
read at the start and the end of the measured window.

Requests go to models drawn uniformly at random. Closed loop: ``concurrency``
requests always in flight. Open loop: sends scheduled every 1/rate s from the
start; latency runs from the *scheduled* send time, so a stalled server is not
hidden by sending less (coordinated omission); at most ``max_outstanding`` are
in flight, a send waiting for a slot is late and its latency shows it.

Only requests that complete inside the window count. Progress goes to stderr;
the last line of stdout is the result (JSON).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psutil
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc._utils import _get_inference_request

from .client import check_simple_string, simple_string_inputs
from .report import percentile

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_OPTIONS = [("grpc.max_receive_message_length", 1 << 26)]

Send = Callable[[str], Awaitable[None]]


class Window:
    """The measured interval and what completed inside it."""

    def __init__(self, start: float, warmup_s: float, duration_s: float) -> None:
        self.begin = start + warmup_s
        self.end = self.begin + duration_s
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.completed_total = 0

    def record(self, t_from: float, error: str | None) -> None:
        now = time.perf_counter()
        self.completed_total += 1
        if not (self.begin <= now < self.end):
            return
        if error is None:
            self.latencies_ms.append((now - t_from) * 1e3)
        else:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(error)


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of these processes (the ones still alive)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def _senders(plan: dict[str, Any], stack: list[Any]) -> dict[str, Send]:
    """One send function per address; ``stack`` collects what to close."""
    rng = random.Random(plan.get("seed", 1))
    inputs, a, b = simple_string_inputs(rng)
    senders: dict[str, Send] = {}
    for address, names in plan["targets"].items():
        if plan.get("client", "tritonclient") == "raw":
            channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
            stack.append(channel)
            call = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out
            cache: dict[str, bytes] = {}

            async def send_raw(
                name: str, call: Any = call, cache: dict[str, bytes] = cache
            ) -> None:
                body = cache.get(name)
                if body is None:
                    body = cache[name] = _get_inference_request(
                        name, inputs, "", "", None, 0, False, False, 0, None, None
                    ).SerializeToString()
                await call(body, timeout=60)

            senders[address] = send_raw
        else:
            client = triton_aio.InferenceServerClient(address, channel_args=_OPTIONS)
            stack.append(client)

            async def send_triton(name: str, client: Any = client) -> None:
                await client.infer(name, inputs, client_timeout=60)

            senders[address] = send_triton
        # One checked request per target before the clock starts: a wrong answer
        # would make every figure meaningless.
        checker = triton_aio.InferenceServerClient(address)
        try:
            wrong = check_simple_string(await checker.infer(names[0], inputs), a, b)
        finally:
            await checker.close()
        if wrong:
            raise SystemExit(f"{address} {names[0]}: {wrong}")
    return senders


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    stack: list[Any] = []
    try:
        senders = await _senders(plan, stack)
        pairs = [(n, senders[addr]) for addr, names in plan["targets"].items() for n in names]
        return await _drive(plan, pairs)
    finally:
        for item in stack:
            await item.close()


async def _drive(plan: dict[str, Any], pairs: list[tuple[str, Send]]) -> dict[str, Any]:
    rng = random.Random(plan.get("seed", 1) + 1)
    rate = float(plan.get("rate") or 0)
    concurrency = int(plan["concurrency"])
    watch: dict[str, list[int]] = plan.get("watch", {})
    me = psutil.Process()
    start = time.perf_counter()
    window = Window(start, float(plan["warmup_s"]), float(plan["duration_s"]))
    cpu: dict[str, list[float]] = {}
    sent = late = 0

    async def sample_cpu() -> None:
        for edge in (window.begin, window.end):
            await asyncio.sleep(max(0.0, edge - time.perf_counter()))
            for group, pids in watch.items():
                cpu.setdefault(group, []).append(cpu_seconds(pids))
            t = me.cpu_times()
            cpu.setdefault("loadgen", []).append(t.user + t.system)
            stamp = "start" if edge == window.begin else "end"
            print(f"  loadgen: measured window {stamp}", file=sys.stderr, flush=True)

    async def one(t_from: float) -> None:
        name, send = pairs[rng.randrange(len(pairs))]
        try:
            await send(name)
        except Exception as err:  # any failure is an error of the run, counted
            window.record(t_from, f"{name}: {type(err).__name__}: {err}"[:300])
        else:
            window.record(t_from, None)

    sampler = asyncio.create_task(sample_cpu())
    if rate <= 0:

        async def closed_worker() -> None:
            while time.perf_counter() < window.end:
                await one(time.perf_counter())

        await asyncio.gather(*(closed_worker() for _ in range(concurrency)))
    else:
        slots = asyncio.Semaphore(int(plan.get("max_outstanding") or 10_000))
        tasks: set[asyncio.Task[None]] = set()

        async def paced(t_sched: float) -> None:
            try:
                await one(t_sched)
            finally:
                slots.release()

        i = 0
        while True:
            t_sched = start + i / rate
            if t_sched >= window.end:
                break
            delay = t_sched - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001:
                late += 1
            await slots.acquire()
            task = asyncio.create_task(paced(t_sched))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            i += 1
        if tasks:  # those still out after the window do not count; let them end
            await asyncio.wait(list(tasks), timeout=10)
    await sampler

    lat = sorted(window.latencies_ms)
    span = window.end - window.begin
    ok = len(lat)
    result: dict[str, Any] = {
        "qps": ok / span,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "p999_ms": percentile(lat, 99.9),
        "mean_ms": sum(lat) / ok if ok else float("nan"),
        "max_ms": lat[-1] if lat else float("nan"),
        "errors": window.errors,
        "requests": ok,
        "window_s": span,
        "error_samples": window.error_samples,
        "cpu_s": {g: v[1] - v[0] for g, v in cpu.items() if len(v) == 2},
    }
    if rate > 0:
        result["offered_qps"] = rate
        result["sent"] = sent
        result["sent_late_over_1ms"] = late
    return result


def main() -> None:
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    result = asyncio.run(run(plan))
    print(json.dumps(result, allow_nan=True), flush=True)


if __name__ == "__main__":
    main()
