"""Small helpers for the runtime-adapter tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psutil


async def wait_until(condition: Callable[[], object], timeout_s: float = 30.0) -> object:
    """Poll ``condition`` until it returns something truthy, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {condition}")
        await asyncio.sleep(0.02)  # poll
    return value


def pid_exists(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
