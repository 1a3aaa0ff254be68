"""Copies follow load: more copies of busy models, fewer of idle ones, and a handoff on drain.

Each node decides for the models it serves, from what it measures itself (the
requests its runtimes answered) and what gossip says is loaded where. Every
``check_interval_s``:

* **Hot**: a model answered here at more than ``rate_threshold`` requests/s
  gets one more copy, on the node placement picks among those without one,
  until the cluster holds ``max_copies`` (each node judges its own copy's rate,
  so a model spread evenly and still over the threshold everywhere keeps
  growing to ``max_copies``).
* **Recent**: a model used here in the last ``recent_s`` that no other node
  holds gets a second copy, so losing this node does not cold-start it.
* **Idle**: a copy here unused for ``idle_s`` (and for ``recent_s``) is
  unloaded when another live node holds the model. Of several holders, the one
  with the lowest address keeps its copy, so two idle holders never drop the
  last two copies at once.

A new copy is asked for with a load request to the peer
(``Forwarder.request_load``); the peer loads in the background and the copy
shows up in gossip. A model asked for waits ``cooldown_s`` before it is asked
for again, and at most ``max_requests`` loads are asked for per check, so a
node that just restarted does not flood its peers.

``drain()`` (SIGTERM): every model used here in the last ``recent_s`` that no
other node holds is handed to a peer, and the drain waits (up to its
timeout) until gossip shows each one loaded elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.cluster.routing import ClusterRouting
from agent.inventory import Inventory
from agent.registry.store import ModelRegistry

log = logging.getLogger(__name__)

RequestLoad = Callable[[str, str], Awaitable[None]]
"""``request_load(peer, model_id)``."""
Unload = Callable[[str], Awaitable[object]]
"""``unload(model_id)``: drop this node's copy."""

DRAIN_POLL_S = 0.05  # how often a drain looks at gossip for the handed-off copies


@dataclass(frozen=True, slots=True)
class CopySettings:
    rate_threshold: float = 50.0
    max_copies: int = 4
    idle_s: float = 300.0
    recent_s: float = 60.0
    check_interval_s: float = 2.0
    cooldown_s: float = 10.0
    max_requests: int = 64


class CopyKeeper:
    def __init__(
        self,
        routing: ClusterRouting,
        inventory: Inventory,
        registry: ModelRegistry,
        request_load: RequestLoad,
        unload: Unload,
        settings: CopySettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._routing = routing
        self._inventory = inventory
        self._registry = registry
        self._request_load = request_load
        self._unload = unload
        self.settings = settings or CopySettings()
        self._clock = clock
        self._counts: Counter[str] = Counter()  # requests since the last check
        self._last_used: dict[str, float] = {}
        self._asked: dict[str, float] = {}  # model -> when a copy was last asked for
        self._last_check = clock()
        self._task: asyncio.Task[None] | None = None
        self.copies_asked = 0
        self.copies_dropped = 0
        inventory.on_change(self._inventory_changed)

    def record(self, model_id: str) -> None:
        """One request answered here (the router calls this)."""
        self._counts[model_id] += 1
        self._last_used[model_id] = self._clock()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="copy-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_interval_s)  # the check period
            try:
                await self.check()
            except Exception:
                log.exception("copy check failed; going on")

    async def check(self) -> None:
        """One look at rates and copies (see the module docstring)."""
        s = self.settings
        now = self._clock()
        elapsed = max(now - self._last_check, 1e-3)
        counts, self._counts = self._counts, Counter()
        self._last_check = now
        wanted: list[str] = [m for m, n in counts.items() if n / elapsed > s.rate_threshold
                             and len(self._routing.holders(m)) < s.max_copies]
        wanted += [m for m in self._recent(now) if m not in wanted and self._alone(m)]
        asked = 0
        for model_id in wanted:
            if asked >= s.max_requests:
                break
            if now - self._asked.get(model_id, -1e18) < s.cooldown_s:
                continue
            if await self._add_copy(model_id):
                self._asked[model_id] = now
                asked += 1
        await self._drop_idle(now)

    async def drain(self, timeout_s: float) -> int:
        """Hand this node's recently used sole copies to peers; wait until gossip
        shows them elsewhere (or ``timeout_s``). Returns how many are still only here."""
        now = self._clock()
        sole = [m for m in self._recent(now) if self._alone(m)]
        handed = [m for m in sole if await self._add_copy(m)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiting = [m for m in handed if self._alone(m)]
        while waiting and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)  # poll: gossip brings the copies
            waiting = [m for m in waiting if self._alone(m)]
        if sole:
            log.info("drain: %d recently used sole copies; %d handed to peers, %d of those "
                     "not yet loaded there", len(sole), len(handed), len(waiting))
        return len(sole) - len(handed) + len(waiting)

    # -- helpers -------------------------------------------------------------------

    def _recent(self, now: float) -> list[str]:
        if not self.settings.recent_s:
            return []
        return [m for m, t in self._last_used.items()
                if now - t <= self.settings.recent_s and m in self._inventory]

    def _alone(self, model_id: str) -> bool:
        """Whether no live peer holds ``model_id``."""
        return not self._routing.copies(model_id)

    async def _add_copy(self, model_id: str) -> bool:
        spec = self._registry.get(model_id)
        if spec is None:
            return False
        holders = set(self._routing.holders(model_id)) | {self._routing.address}
        size = self._registry.measured_size(model_id, spec.runtime) or spec.size_hint
        peer = self._routing.place(spec, size, exclude=holders)
        if peer is None:
            return False
        try:
            await self._request_load(peer, model_id)
        except Exception as err:
            log.info("could not ask %s for a copy of %s: %s", peer, model_id, err)
            return False
        self.copies_asked += 1
        log.debug("asked %s for a copy of %s", peer, model_id)
        return True

    async def _drop_idle(self, now: float) -> None:
        s = self.settings
        idle_after = max(s.idle_s, s.recent_s)
        me = self._routing.address
        for scanned, model in enumerate(list(self._inventory.idle_lru())):
            if scanned >= s.max_requests * 16:
                break  # the rest wait for the next check
            model_id = model.spec.model_id
            last = self._last_used.get(model_id, model.loaded_at - time.time() + now)
            if now - last < idle_after:
                break  # LRU order: the rest were used more recently
            holders = self._routing.holders(model_id)
            if len(holders) >= 2 and me in holders and min(holders) != me:
                await self._unload(model_id)
                self.copies_dropped += 1

    def _inventory_changed(self, model_id: str, model: object) -> None:
        if model is None:
            self._last_used.pop(model_id, None)
