"""Measuring what a model load adds to a runtime process's memory.

A model's size is the RSS its load added. One measurement around one load is
honest only when nothing else changed the process's memory meanwhile, and for
small models (kilobytes, like simple-string) the delta is below the noise of
one reading (allocator arenas grow in steps). So:

* a load that ran alone on its process and added at least ``noise_bytes`` is
  measured on its own: that delta is its size;
* every other load *predicted* small (under ``noise_bytes``) gets the running
  average of small loads on that process: every ``window`` loads completed on
  the process, its RSS is read, and the growth since the previous reading
  divided by the loads in between joins the average (of the last ``keep``
  windows; a window that saw a large load is dropped); the first windows of a
  process fall back to the prediction (None);
* a large load that ran beside others keeps its prediction (None);
* the first load of a model type on a process keeps its prediction too: it
  grows the process by the runtime's one-time imports (scikit-learn and what
  unpickling a model pulls in: 8-80 MiB), which are the process's cost, not
  the model's. The runtime's module is imported before that load
  (``other_growth``), and the rest shows in the process's RSS only.

Reading RSS costs one ``/proc`` read (tens of microseconds), so this adds one
read per window, plus two per load for loads that run alone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import psutil

NOISE_BYTES = 1 << 20
WINDOW_LOADS = 32
KEEP_WINDOWS = 16


def rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


@dataclass
class LoadSizer:
    """Per-process sizing state (one per runtime process)."""

    noise_bytes: int = NOISE_BYTES
    window: int = WINDOW_LOADS
    keep: int = KEEP_WINDOWS
    in_flight: int = 0
    started: int = 0  # loads started, ever: tells whether a load ran alone
    _since_mark: int = 0
    _large_in_window: bool = False
    _mark: int | None = None
    _averages: deque[float] = field(default_factory=deque)

    def begin(self, pid: int | None, alone: bool = True) -> tuple[int, int | None]:
        """Call as a load starts; returns a token for ``end``. ``alone`` False:
        this load is not measured on its own even if nothing runs beside it
        (it grows the process for reasons of its own: the first of its type)."""
        self.in_flight += 1
        self.started += 1
        before = rss(pid) if self.in_flight == 1 and alone else None
        if self._mark is None:
            self._mark = rss(pid)
        return self.started, before

    def end(
        self, pid: int | None, token: tuple[int, int | None], ok: bool, predicted: int
    ) -> int | None:
        """Call as the load ends; returns its size, or None to keep the prediction."""
        self.in_flight -= 1
        if not ok:
            return None
        large = predicted >= self.noise_bytes
        started, before = token
        size = None
        if before is not None and started == self.started and self.in_flight == 0:
            after = rss(pid)
            if after is not None and after - before >= self.noise_bytes:
                size = after - before
        self._large_in_window |= large or size is not None
        self._since_mark += 1
        if self._since_mark >= self.window:
            self._calibrate(pid)
        if size is not None or large:
            return size
        return self.small_average()

    def _calibrate(self, pid: int | None) -> None:
        now = rss(pid)
        if (now is not None and self._mark is not None and now >= self._mark
                and not self._large_in_window):
            self._averages.append((now - self._mark) / self._since_mark)
            while len(self._averages) > self.keep:
                self._averages.popleft()
        self._mark, self._since_mark, self._large_in_window = now, 0, False

    def other_growth(self) -> None:
        """Something other than a model load is about to grow the process (a
        runtime's first import): no load under way is measured alone, and this
        window's average is not kept."""
        self.started += 1
        self._large_in_window = True

    def small_average(self) -> int | None:
        if not self._averages:
            return None
        return max(1, int(sum(self._averages) / len(self._averages)))

    def reset(self) -> None:
        """The process restarted: its memory starts over."""
        self._mark, self._since_mark, self._large_in_window = None, 0, False
