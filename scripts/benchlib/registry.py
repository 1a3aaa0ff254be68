"""``bench registry --count N``: the durable registry alone, in this process.

Registers N simple-string specs with ``put_many`` in batches, registers them
all again (the no-op an agent restarted with ``--demo N`` does), lists every id
(``iter_ids``) and every spec (``list_page`` paging), reopens the database,
and times point lookups. The RSS figure is the process's peak RSS
(``ru_maxrss``) over its RSS before the first registration.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from agent.demo import DEMO_PREFIX, demo_specs
from agent.registry.store import ModelRegistry

from .report import environment, mib, percentile, print_environment, progress, say


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=1_000_000, help="registrations")
    p.add_argument("--batch", type=int, default=10_000, help="specs per put_many")
    p.add_argument("--page", type=int, default=10_000, help="specs per list_page")
    p.add_argument("--gets", type=int, default=10_000, help="point lookups timed")


def _batches(count: int, size: int) -> Any:
    specs = demo_specs(count)
    while True:
        batch = [s for _, s in zip(range(size), specs, strict=False)]
        if not batch:
            return
        yield batch


def _register(reg: ModelRegistry, count: int, batch: int, label: str) -> tuple[float, int]:
    written = 0
    t0 = last = time.perf_counter()
    for chunk in _batches(count, batch):
        written += reg.put_many(chunk)[0]
        if time.perf_counter() - last > 5:
            last = time.perf_counter()
            progress(f"  {label}: {written:,} written, {last - t0:.0f} s")
    return time.perf_counter() - t0, written


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment()
    print_environment(env)
    n = args.count
    say(f"registry: {n:,} registrations, put_many batches of {args.batch:,}")
    work = Path(tempfile.mkdtemp(prefix="meshlet-bench-registry-"))
    path = work / "registry.sqlite3"
    rss0 = psutil.Process().memory_info().rss
    try:
        reg = ModelRegistry.open(path)
        register_s, written = _register(reg, n, args.batch, "register")
        again_s, rewritten = _register(reg, n, args.batch, "register again")

        t0 = time.perf_counter()
        ids = sum(1 for _ in reg.iter_ids())
        list_ids_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        specs, after = 0, ""
        while page := reg.list_page(after, args.page):
            specs += len(page)
            after = page[-1].model_id
        list_specs_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        count = reg.count()
        count_s = time.perf_counter() - t0

        rng = random.Random(5)
        gets_ns = []
        missing = 0
        for _ in range(args.gets):
            model_id = f"{DEMO_PREFIX}{rng.randrange(n)}"
            g0 = time.perf_counter_ns()
            spec = reg.get(model_id)
            gets_ns.append(time.perf_counter_ns() - g0)
            missing += spec is None
        gets_ns.sort()
        db_bytes = sum(f.stat().st_size for f in work.glob("registry.sqlite3*"))
        reg.close()

        t0 = time.perf_counter()
        reopened = ModelRegistry.open(path)
        reopened_count = reopened.count()
        reopen_s = time.perf_counter() - t0
        reopened.close()
        db_bytes_closed = sum(f.stat().st_size for f in work.glob("registry.sqlite3*"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    result: dict[str, Any] = {
        "benchmark": "registry",
        "count": n,
        "register_s": register_s,
        "registered": written,
        "register_per_s": n / register_s if register_s else float("nan"),
        "register_again_s": again_s,
        "register_again_written": rewritten,
        "list_ids_s": list_ids_s,
        "listed_ids": ids,
        "list_specs_s": list_specs_s,
        "listed_specs": specs,
        "count_s": count_s,
        "counted": count,
        "get_p50_us": percentile(gets_ns, 50) / 1e3,
        "get_p99_us": percentile(gets_ns, 99) / 1e3,
        "get_missing": missing,
        "reopen_count_s": reopen_s,
        "reopened_count": reopened_count,
        "db_bytes": db_bytes,
        "db_bytes_after_close": db_bytes_closed,
        "peak_rss_delta_bytes": peak - rss0,
        **env,
    }
    say()
    say(f"register {n:,}        {register_s:.2f} s ({result['register_per_s']:,.0f}/s), "
        f"{written:,} written")
    say(f"register again (no-op) {again_s:.2f} s, {rewritten:,} written")
    say(f"list ids              {list_ids_s:.2f} s ({ids:,})")
    say(f"list specs            {list_specs_s:.2f} s ({specs:,}, pages of {args.page:,})")
    say(f"count                 {count_s * 1e3:.1f} ms ({count:,})")
    say(f"get                   p50 {result['get_p50_us']:.1f} us, "
        f"p99 {result['get_p99_us']:.1f} us ({args.gets:,} random ids, {missing} missing)")
    say(f"reopen + count        {reopen_s * 1e3:.1f} ms")
    say(f"db size               {mib(db_bytes)} open (with WAL), {mib(db_bytes_closed)} closed")
    say(f"peak RSS delta        {mib(result['peak_rss_delta_bytes'])}")
    return result
