"""What listing many resources costs an agent: prints figures, asserts nothing.

    python -m tests.agent.kube.bench_list [count] [--watch-s SECONDS]

Runs the fake API server (``tests.agent.kube.apiserver``) in a child process
with ``count`` Models in 10 namespaces, then starts an agent's Kubernetes
integration (the real client, the real registry, vmodels and status writer;
a fake runtime) in this process and reports:

- first start: list (pages of 500) + registering every model and vmodel +
  every first status write; time, requests, and this process's RSS growth;
- the index's own size (what is kept per resource, measured object by object);
- restart on the same registry: a list that changes nothing and writes nothing;
- steady state: requests per minute with nothing changing (watches only),
  measured with a short watch timeout and scaled to the default.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from agent.kube.index import Claim, Index

DEFAULT_WATCH_TIMEOUT_S = 300.0


def serve(count: int, conn: Connection) -> None:
    """The child: a fake API server with ``count`` Models, until told to stop."""
    from tests.agent.kube.apiserver import FakeApiServer
    from tests.agent.kube.conftest import model

    server = FakeApiServer().start()
    server.tokens.add("token-node-a")  # the bench's agent (``KubeNode`` "node-a")
    for i in range(count):
        server.create(model(f"model-{i:06d}", namespace=f"team-{i % 10}"))
    conn.send(server.port)
    conn.recv()  # "stop"
    counts = Counter(("watch" if r.watch else r.method.lower() if r.method != "GET" else
                      "list" if r.query.get("limit") else "get") for r in server.requests)
    conn.send(dict(counts))
    server.stop()


class LoopLag:
    """The longest the event loop went without running a 1 ms timer (what a
    request arriving then would have waited)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _probe(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)  # the probe's period
            self.worst = max(self.worst, time.perf_counter() - before - 0.001)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._probe())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def deep_size(index: Index) -> int:
    """Bytes of the index's own objects: dicts, claims and their strings."""
    seen: set[int] = set()
    total = sys.getsizeof(index.winners) + sys.getsizeof(index.losers)

    def add(obj: Any) -> None:
        nonlocal total
        if id(obj) in seen or obj is None or isinstance(obj, bool):
            return
        seen.add(id(obj))
        total += sys.getsizeof(obj)

    for name, claim in index.winners.items():
        add(name)
        add(claim)
        for slot in Claim.__slots__:
            value = getattr(claim, slot)
            if slot != "kind":  # shared by every claim
                add(value)
    return total


async def run(count: int, watch_s: float) -> None:
    from tests.agent.kube.apiserver import FakeApiServer
    from tests.agent.kube.conftest import KubeNode, until

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(count, child))
    proc.start()
    try:
        port = parent.recv()
        server = FakeApiServer()  # only for its kubeconfig
        server.port = port
        me = psutil.Process()
        with tempfile.TemporaryDirectory() as tmp:
            import kubernetes  # noqa: F401  (its import cost is not the list's)

            rss0 = me.memory_info().rss
            node = KubeNode(Path(tmp), server, status_interval_s=0.2, watch_timeout_s=600.0)
            started = time.perf_counter()
            with LoopLag() as lag:
                await node.start()
                await node.synced(timeout_s=3600)
                listed = time.perf_counter() - started
                writer = node.kube.writer
                assert writer is not None
                await until(lambda: writer.writes >= count, 3600, "every first status")
                written = time.perf_counter() - started
            rss1 = me.memory_info().rss
            index_bytes = deep_size(node.kube.index)
            api = node.kube.api
            assert api is not None
            print(f"{count} Models, first start: listed and registered in {listed:.2f} s "
                  f"({count / listed:.0f}/s), every first status written after "
                  f"{written:.2f} s; requests {dict(api.requests)}")
            print(f"  longest event-loop stall meanwhile: {lag.worst * 1000:.1f} ms")
            print(f"  RSS +{(rss1 - rss0) / 2**20:.1f} MiB for the whole first start "
                  f"(registry, vmodels, client); the index itself {index_bytes / 2**20:.1f} MiB "
                  f"= {index_bytes / count:.0f} bytes per resource")
            await node.stop()

            rss2 = me.memory_info().rss
            node = KubeNode(Path(tmp), server, status_interval_s=0.2,
                            watch_timeout_s=max(watch_s / 8, 1.0))
            started = time.perf_counter()
            await node.start()
            await node.synced(timeout_s=3600)
            relisted = time.perf_counter() - started
            api = node.kube.api
            assert api is not None
            before = dict(api.requests)
            print(f"  restart on the same registry: listed in {relisted:.2f} s, "
                  f"requests {before}, RSS +{(me.memory_info().rss - rss2) / 2**20:.1f} MiB")
            await asyncio.sleep(1.0)  # the status writer's round: nothing to write
            base = Counter(api.requests)
            window = time.perf_counter()
            await asyncio.sleep(watch_s)  # the steady state being measured
            elapsed = time.perf_counter() - window
            steady = Counter(api.requests) - base
            per_min = sum(steady.values()) / elapsed * 60
            timeout = node.settings.watch_timeout_s
            scaled = per_min * timeout / DEFAULT_WATCH_TIMEOUT_S
            print(f"  steady state over {elapsed:.0f} s with a {timeout:.0f} s watch timeout: "
                  f"{dict(steady)} = {per_min:.1f} requests/min; at the default "
                  f"{DEFAULT_WATCH_TIMEOUT_S:.0f} s: {scaled:.2f} requests/min per watched "
                  f"kind (and namespace)")
            await node.stop()
    finally:
        parent.send("stop")
        print(f"  the server saw {parent.recv()}")
        proc.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("count", type=int, nargs="?", default=10_000)
    parser.add_argument("--watch-s", type=float, default=60.0,
                        help="seconds of steady state to measure (default 60)")
    args = parser.parse_args()
    asyncio.run(run(args.count, args.watch_s))


if __name__ == "__main__":
    main()
