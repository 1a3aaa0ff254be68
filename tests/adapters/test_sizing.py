"""``LoadSizer``: measured model sizes from RSS readings (scripted here)."""

from __future__ import annotations

import pytest

from adapters import sizing
from adapters.sizing import LoadSizer

MiB = 1 << 20


class Rss:
    def __init__(self) -> None:
        self.value = 100 * MiB

    def __call__(self, pid: int | None) -> int:
        return self.value


@pytest.fixture
def rss(monkeypatch: pytest.MonkeyPatch) -> Rss:
    fake = Rss()
    monkeypatch.setattr(sizing, "rss", fake)
    return fake


def test_a_large_load_alone_is_measured(rss: Rss) -> None:
    sizer = LoadSizer()
    token = sizer.begin(1)
    rss.value += 30 * MiB
    assert sizer.end(1, token, True, predicted=10 * MiB) == 30 * MiB


def test_a_large_load_beside_another_keeps_its_prediction(rss: Rss) -> None:
    sizer = LoadSizer()
    first = sizer.begin(1)
    second = sizer.begin(1)
    rss.value += 30 * MiB
    assert sizer.end(1, second, True, predicted=10 * MiB) is None
    assert sizer.end(1, first, True, predicted=10 * MiB) is None


def test_small_loads_get_the_running_average(rss: Rss) -> None:
    sizer = LoadSizer(window=4)
    tokens = [sizer.begin(1) for _ in range(4)]  # concurrent, as in a bulk load
    rss.value += 4 * 3000
    results = [sizer.end(1, t, True, predicted=16 * 1024) for t in tokens]
    assert results[:3] == [None, None, None]  # no window complete yet: predicted
    assert results[3] == 3000
    assert sizer.end(1, sizer.begin(1), True, predicted=16 * 1024) == 3000


def test_a_window_with_a_large_load_is_dropped(rss: Rss) -> None:
    sizer = LoadSizer(window=2)
    big = sizer.begin(1)
    rss.value += 50 * MiB
    assert sizer.end(1, big, True, predicted=20 * MiB) == 50 * MiB
    small = sizer.begin(1)
    assert sizer.end(1, small, True, predicted=1024) is None  # window had the big one
    assert sizer.small_average() is None


def test_failed_loads_and_restarts(rss: Rss) -> None:
    sizer = LoadSizer(window=1)
    assert sizer.end(1, sizer.begin(1), False, predicted=1024) is None
    assert sizer.in_flight == 0
    sizer.reset()
    token = sizer.begin(1)  # the first reading after a restart is the new mark
    rss.value += 2048
    assert sizer.end(1, token, True, predicted=1024) == 2048
