"""A small progress report for long bulk operations, written to stderr.

On a terminal it redraws one line in place, at most ``redraw_hz`` times a
second; elsewhere (a log file, CI) it writes plain lines, at most one every
``line_interval_s``, so a million updates do not become a million lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(per_s: float) -> str:
    return f"{per_s:,.0f}/s" if per_s >= 100 else f"{per_s:.1f}/s"


class Progress:
    """``count/total``, percent, rate and ETA of one operation."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        label: str = "",
        *,
        tty: bool | None = None,
        redraw_hz: float = 10.0,
        line_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.count = 0
        self._stream = stream
        self._label = label
        self._tty = stream.isatty() if tty is None else tty
        self._interval_s = 1.0 / redraw_hz if self._tty else line_interval_s
        self._clock = clock
        self._started = clock()
        # A terminal shows the bar at once; a log gets its first line after one interval.
        self._drawn_at: float | None = None if self._tty else self._started
        self._drawn_count = -1
        self._closed = False

    def render(self) -> str:
        """The line as it reads now (no control characters)."""
        elapsed = self._clock() - self._started
        fraction = self.count / self.total if self.total else 1.0
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.count >= self.total:
            eta = f"done in {format_duration(elapsed)}"
        elif rate > 0:
            eta = f"ETA {format_duration((self.total - self.count) / rate)}"
        else:
            eta = "ETA --:--"
        parts = [self._label] if self._label else []
        if self._tty:
            filled = int(fraction * BAR_WIDTH)
            parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
        width = len(str(self.total))
        parts += [f"{self.count:>{width}}/{self.total}", f"{fraction:6.1%}",
                  format_rate(rate), eta]
        return "  ".join(parts)

    def advance(self, n: int = 1) -> None:
        self.count += n
        now = self._clock()
        if self._drawn_at is None or now - self._drawn_at >= self._interval_s:
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._tty or self._drawn_count != self.count:
            self._draw(self._clock())
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        self._drawn_count = self.count
        if self._tty:
            self._stream.write("\r" + self.render() + "\x1b[K")
        else:
            self._stream.write(self.render() + "\n")
        self._stream.flush()
