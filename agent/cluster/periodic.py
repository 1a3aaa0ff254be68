"""The loops of the cluster protocols: one body, run forever at a fixed rate."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def every(
    body: Callable[[], Awaitable[Any]], interval_s: float, rng: random.Random, what: str
) -> None:
    """Run ``body`` forever, each run starting ``interval_s`` after the last began.

    The first run waits a random phase (from ``rng``), so nodes started
    together do not act in lockstep. A run that raises is logged (as ``what``)
    and the loop goes on; cancel the task to stop it.
    """
    loop = asyncio.get_running_loop()
    await asyncio.sleep(rng.uniform(0, interval_s))  # the random phase
    while True:
        began = loop.time()
        try:
            await body()
        except Exception:
            log.exception("%s loop %s failed; going on", what, body.__name__)
        await asyncio.sleep(max(0.0, began + interval_s - loop.time()))
