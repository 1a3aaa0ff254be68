"""The progress line: what it says, and how often it is written."""

from __future__ import annotations

import io

from agent.cli.progress import Progress, format_duration, format_rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_duration_and_rate() -> None:
    assert format_duration(0) == "0:00"
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"
    assert format_rate(12.34) == "12.3/s"
    assert format_rate(12345) == "12,345/s"


def test_plain_lines_when_not_a_tty() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(1000, out, "registering", line_interval_s=5.0, clock=clock)
    assert not out.getvalue(), "a log gets no line before the first interval"
    for _ in range(250):
        clock.now += 0.01
        progress.advance()
    assert not out.getvalue()
    clock.now += 2.5  # 5 s in: 251 done at 50.2/s, 749 left
    progress.advance()
    assert out.getvalue() == "registering   251/1000   25.1%  50.2/s  ETA 0:15\n"
    for _ in range(749):
        progress.advance()  # same instant: throttled
    assert out.getvalue().count("\n") == 1
    progress.close()
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[-1] == "registering  1000/1000  100.0%  200/s  done in 0:05"
    assert len(lines) == 2
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_no_duplicate_final_line() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(2, out, line_interval_s=1.0, clock=clock)
    progress.advance()
    clock.now += 1.0
    progress.advance()
    progress.close()
    assert out.getvalue() == "2/2  100.0%  2.0/s  done in 0:01\n"


def test_tty_redraws_in_place_at_most_ten_times_a_second() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(100, out, "x", tty=True, clock=clock)
    for _ in range(100):
        clock.now += 0.01  # one second in all
        progress.advance()
    progress.close()
    text = out.getvalue()
    assert 9 <= text.count("\r") <= 12  # ~10 redraws plus the final one
    assert text.endswith("\n")
    final = text.rsplit("\r", 1)[1]
    assert final.startswith("x  [" + "#" * 24 + "]  100/100  100.0%")
    assert "\x1b[K" in final


def test_empty_total() -> None:
    out = io.StringIO()
    progress = Progress(0, out, clock=Clock())
    progress.close()
    assert "0/0  100.0%" in out.getvalue()
