"""A pool of runtime processes of one kind, and which model goes where.

Placement is best fit: among the processes that are up and have room for the
model (under the per-process limits on models and on bytes), the one with the
least room left afterwards, so large gaps stay free for large models. When
none has room and the pool is below its maximum, a new process is started
(one at a time; concurrent placements wait for it and look again). When the
pool is at its maximum, ``PoolFull`` tells the loader to evict a least
recently used model and try again. An empty process beyond the minimum is
stopped as soon as its last model leaves, so an idle node shrinks back.

Places are reserved at once, before the load finishes, so concurrent loads
never overfill a process. The limits keep any single crash small: a process
holds at most ``max_models`` models or ``max_bytes`` bytes (0: no limit); a
model larger than ``max_bytes`` is refused (``ModelTooLarge``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from agent.errors import CapacityExhausted, ModelTooLarge, RuntimeUnavailable

log = logging.getLogger(__name__)


class PoolFull(CapacityExhausted):
    """Every process is at its limit and the pool at its maximum size."""


class PooledProcess(Protocol):
    name: str

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait_until_ready(self, timeout_s: float) -> bool: ...


P = TypeVar("P", bound=PooledProcess)


@dataclass(frozen=True)
class PoolLimits:
    min_processes: int = 1
    max_processes: int = 1
    max_models: int = 0  # per process; 0 = no limit
    max_bytes: int = 0  # per process; 0 = no limit
    restart_wait_s: float = 30.0  # how long a load waits for a restarting process


@dataclass(eq=False)
class _Slot(Generic[P]):
    process: P
    models: dict[str, int] = field(default_factory=dict)  # model id -> bytes reserved
    bytes: int = 0


class ProcessPool(Generic[P]):
    def __init__(self, make: Callable[[int], P], limits: PoolLimits) -> None:
        """``make(n)`` builds (does not start) the process numbered ``n``."""
        self._make = make
        self.limits = limits
        self._slots: list[_Slot[P]] = []
        self._where: dict[str, _Slot[P]] = {}  # model id -> its slot
        self._numbers = 0
        self._growing: asyncio.Task[_Slot[P]] | None = None
        self._closed = False

    @property
    def processes(self) -> list[P]:
        return [s.process for s in self._slots]

    def process_of(self, model_id: str) -> P | None:
        slot = self._where.get(model_id)
        return slot.process if slot is not None else None

    def held(self, process: P) -> int:
        return sum(len(s.models) for s in self._slots if s.process is process)

    async def start(self) -> None:
        """Start the minimum number of processes (at least one)."""
        count = max(1, self.limits.min_processes)
        await asyncio.gather(*(self._add() for _ in range(count)))

    async def stop(self) -> None:
        self._closed = True
        slots, self._slots = self._slots, []
        self._where.clear()
        await asyncio.gather(*(s.process.stop() for s in slots), return_exceptions=True)

    async def _add(self) -> _Slot[P]:
        process = self._make(self._numbers)
        self._numbers += 1
        slot: _Slot[P] = _Slot(process)
        self._slots.append(slot)
        try:
            await process.start()
        except BaseException:
            self._slots.remove(slot)
            await process.stop()
            raise
        return slot

    # --- placement ---------------------------------------------------------

    def _room(self, slot: _Slot[P], size: int) -> int | None:
        """Bytes left in ``slot`` after adding ``size``; None if it does not fit."""
        lim = self.limits
        if lim.max_models and len(slot.models) + 1 > lim.max_models:
            return None
        if lim.max_bytes:
            left = lim.max_bytes - slot.bytes - size
            return left if left >= 0 else None
        return 0

    async def place(self, model_id: str, size: int) -> P:
        """Reserve room for the model in a process (starting one if needed).

        A process that is restarting (it died) and has room is waited for,
        once, up to ``restart_wait_s``, before a new one is started or
        ``PoolFull`` makes the loader evict."""
        if self.limits.max_bytes and size > self.limits.max_bytes:
            raise ModelTooLarge(
                f"model {model_id!r} needs {size} bytes, more than one runtime process may "
                f"hold ({self.limits.max_bytes} bytes, MESHLET_RUNTIME_PROCESS_MAX_BYTES)"
            )
        waited = False
        while True:
            if self._closed:
                raise RuntimeUnavailable("the runtime is stopped")
            fits = [
                (room, i, s) for i, s in enumerate(self._slots)
                if s.process.ready and (room := self._room(s, size)) is not None
            ]
            if fits:
                _, _, slot = min(fits, key=lambda t: (t[0], t[1]))
                break
            if self._growing is not None:
                await asyncio.shield(self._growing)
                continue
            restarting = [s for s in self._slots
                          if not s.process.ready and self._room(s, size) is not None]
            if restarting and not waited:
                waited = True
                await restarting[0].process.wait_until_ready(self.limits.restart_wait_s)
                continue
            if len(self._slots) >= self.limits.max_processes:
                if not any(s.process.ready for s in self._slots):
                    raise RuntimeUnavailable("no runtime process of the pool is up")
                raise PoolFull(
                    f"all {len(self._slots)} runtime processes are full (limits: "
                    f"{self.limits.max_models or 'any'} models, "
                    f"{self.limits.max_bytes or 'any'} bytes each)"
                )
            self._growing = asyncio.create_task(self._add())
            try:
                slot = await asyncio.shield(self._growing)
            finally:
                self._growing = None
            log.info("started %s: every process was full", slot.process.name)
            break
        slot.models[model_id] = size
        slot.bytes += size
        self._where[model_id] = slot
        return slot.process

    def release(self, model_id: str) -> P | None:
        """Give back a model's place; returns the process it was in."""
        slot = self._where.pop(model_id, None)
        if slot is None:
            return None
        slot.bytes -= slot.models.pop(model_id, 0)
        return slot.process

    def forget(self, process: P, model_ids: Iterable[str]) -> None:
        """The process died and lost these models."""
        for model_id in model_ids:
            if self.process_of(model_id) is process:
                self.release(model_id)

    async def shrink(self, process: P) -> bool:
        """Stop ``process`` if it is empty and the pool is above its minimum."""
        slot = next((s for s in self._slots if s.process is process), None)
        if slot is None or slot.models or len(self._slots) <= max(1, self.limits.min_processes):
            return False
        self._slots.remove(slot)
        log.info("stopping %s: empty, and the pool is above its minimum", process.name)
        await process.stop()
        return True
