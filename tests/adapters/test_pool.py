"""``ProcessPool``: best-fit placement, growth, limits and shrinking, over
fake processes (our own interface)."""

from __future__ import annotations

import asyncio

import pytest

from adapters.pool import PoolFull, PoolLimits, ProcessPool
from agent.errors import ModelTooLarge, RuntimeUnavailable


class Proc:
    def __init__(self, n: int, gate: asyncio.Event | None = None) -> None:
        self.name = f"p{n}"
        self.ready = False
        self.stopped = False
        self._gate = gate

    async def start(self) -> None:
        if self._gate is not None:
            await self._gate.wait()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.stopped = True

    async def wait_until_ready(self, timeout_s: float) -> bool:
        self.waited = True
        return self.ready


def pool(**limits: int) -> tuple[ProcessPool[Proc], list[Proc]]:
    made: list[Proc] = []

    def make(n: int) -> Proc:
        made.append(Proc(n))
        return made[-1]

    return ProcessPool(make, PoolLimits(**limits)), made


async def test_best_fit_by_bytes() -> None:
    p, made = pool(min_processes=3, max_processes=3, max_bytes=100)
    await p.start()
    assert len(made) == 3
    await p.place("a", 60)  # p0: 40 left
    await p.place("b", 30)  # fits p0 best (10 left) over empty p1/p2 (70 left)
    assert p.process_of("b") is made[0]
    await p.place("c", 50)  # only p1 or p2 fit; p1 first
    assert p.process_of("c") is made[1]
    await p.place("d", 45)  # p1 has 50 left: the tightest fit
    assert p.process_of("d") is made[1]


async def test_grows_when_full_then_refuses_at_the_maximum() -> None:
    p, made = pool(min_processes=1, max_processes=2, max_models=2)
    await p.start()
    for model_id in ("a", "b", "c", "d"):
        await p.place(model_id, 1)
    assert len(made) == 2
    assert [p.held(m) for m in made] == [2, 2]
    with pytest.raises(PoolFull, match="all 2 runtime processes are full"):
        await p.place("e", 1)


async def test_a_model_bigger_than_a_process_is_refused() -> None:
    p, made = pool(min_processes=1, max_processes=2, max_bytes=10)
    await p.start()
    await p.place("small", 5)
    with pytest.raises(ModelTooLarge, match="'huge' needs 50 bytes, more than one runtime"):
        await p.place("huge", 50)
    await p.place("fits", 6)  # 5 + 6 > 10: a second process
    assert p.process_of("fits") is made[1]


async def test_concurrent_placements_start_one_process() -> None:
    gate = asyncio.Event()
    made: list[Proc] = []

    def make(n: int) -> Proc:
        made.append(Proc(n, gate if n > 0 else None))
        return made[-1]

    p: ProcessPool[Proc] = ProcessPool(make, PoolLimits(max_processes=3, max_models=1))
    await p.start()
    await p.place("a", 1)
    waiting = [asyncio.create_task(p.place(m, 1)) for m in ("b", "c")]
    await asyncio.sleep(0)  # poll: both reach the growing process
    gate.set()
    await asyncio.gather(*waiting)
    assert len(made) == 3  # one each for b and c, started one at a time
    assert {p.process_of("b"), p.process_of("c")} == {made[1], made[2]}


async def test_release_forget_and_shrink() -> None:
    p, made = pool(min_processes=1, max_processes=3, max_models=1)
    await p.start()
    await p.place("a", 1)
    await p.place("b", 1)
    assert p.release("b") is made[1]
    assert await p.shrink(made[1])
    assert made[1].stopped and p.processes == [made[0]]
    assert not await p.shrink(made[0])  # the minimum stays, even empty
    p.forget(made[0], ["a"])
    assert p.process_of("a") is None
    await p.place("c", 1)
    assert p.process_of("c") is made[0]


async def test_no_process_up_is_unavailable() -> None:
    p, made = pool(max_processes=1, max_models=1)
    await p.start()
    made[0].ready = False
    with pytest.raises(RuntimeUnavailable):
        await p.place("a", 1)


async def test_a_restarting_process_with_room_is_waited_for_once() -> None:
    p, made = pool(min_processes=2, max_processes=2, max_models=1)
    await p.start()
    await p.place("a", 1)
    made[1].ready = False  # died; its supervisor is restarting it
    with pytest.raises(PoolFull):
        await p.place("b", 1)  # waited (it stayed down), then full
    assert getattr(made[1], "waited", False)
