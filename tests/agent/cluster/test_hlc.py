"""The hybrid logical clock: monotonic, skew-tolerant, totally ordered."""

from __future__ import annotations

import itertools
import logging

import pytest

from agent.cluster.hlc import HybridClock, Timestamp

MINUTE_MS = 60_000


class FakeClock:
    """A physical clock the test sets by hand."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_now_is_strictly_monotonic_when_the_physical_clock_stalls_or_steps_back() -> None:
    phys = FakeClock(1_000_000)
    clock = HybridClock("a", phys)
    stamps = [clock.now()]
    for step in (0, 0, -5_000, 1, -1, 10_000, 0):
        phys.ms += step
        stamps.append(clock.now())
    assert all(x < y for x, y in itertools.pairwise(stamps))
    # Behind the highest wall seen, the clock counts instead of going back...
    assert stamps[3] == Timestamp(1_000_000, 3, "a")
    # ...and returns to physical time with a fresh counter once it is ahead.
    assert stamps[6] == Timestamp(1_005_000, 0, "a")


def test_observing_a_peer_five_minutes_ahead_merges_counts_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    phys = FakeClock(10_000_000)
    clock = HybridClock("b", phys, max_drift_ms=MINUTE_MS)
    remote = Timestamp(phys.ms + 5 * MINUTE_MS, 7, "fast")
    with caplog.at_level(logging.WARNING, logger="agent.cluster.hlc"):
        clock.observe(remote)
        clock.observe(Timestamp(remote.wall_ms, 8, "fast"))
    # Our writes must beat what we have seen, or we could never overwrite it.
    first = clock.now()
    assert first > remote
    assert first == Timestamp(remote.wall_ms, 9, "b")
    assert clock.ahead_observed == 2
    assert clock.max_ahead_ms == 5 * MINUTE_MS
    assert len([r for r in caplog.records if "fast" in r.getMessage()]) == 1  # once per node
    # Wall time stays pinned at the fast value while the logical part counts...
    phys.ms += 2 * MINUTE_MS
    assert clock.now() == Timestamp(remote.wall_ms, 10, "b")
    # ...until real time passes it.
    phys.ms += 4 * MINUTE_MS
    assert clock.now() == Timestamp(phys.ms, 0, "b")


def test_observing_a_peer_five_minutes_behind_changes_nothing() -> None:
    phys = FakeClock(10_000_000)
    clock = HybridClock("c", phys, max_drift_ms=MINUTE_MS)
    before = clock.now()
    remote = Timestamp(phys.ms - 5 * MINUTE_MS, 99, "slow")
    clock.observe(remote)
    after = clock.now()
    assert remote < before < after
    assert after == Timestamp(phys.ms, 1, "c")
    assert clock.ahead_observed == 0


def test_causality_across_nodes_with_skew() -> None:
    """A slow node that has heard from a fast one writes after it, in stamp order."""
    fast = HybridClock("fast", FakeClock(1_000_000 + 5 * MINUTE_MS))
    slow = HybridClock("slow", FakeClock(1_000_000))
    sent = fast.now()
    slow.observe(sent)
    reply = slow.now()
    fast.observe(reply)
    assert sent < reply < fast.now()


def test_ordering_is_wall_then_logical_then_node() -> None:
    assert Timestamp(1, 9, "z") < Timestamp(2, 0, "a")
    assert Timestamp(2, 0, "z") < Timestamp(2, 1, "a")
    assert Timestamp(2, 1, "a") < Timestamp(2, 1, "b")
    # Two nodes on the same physical millisecond never issue equal stamps.
    a, b = HybridClock("a", FakeClock(5)).now(), HybridClock("b", FakeClock(5)).now()
    assert a != b and (a.wall_ms, a.logical) == (b.wall_ms, b.logical)
    assert sorted([b, a]) == [a, b]


@pytest.mark.parametrize(
    "stamp",
    [Timestamp(0, 0, "n"), Timestamp(1_700_000_000_123, 70_000, "node-1.pod.svc.cluster.local")],
)
def test_encoding_round_trips(stamp: Timestamp) -> None:
    assert Timestamp.decode(stamp.encode()) == stamp


@pytest.mark.parametrize(
    "text",
    ["", "12", "12.3", "12.3.", "-1.0.n", "1.-2.n", "x.0.n", "1.y.n", "9" * 30 + ".0.n"],
)
def test_decoding_rejects_malformed_stamps(text: str) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        Timestamp.decode(text)


def test_decoding_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        Timestamp.decode(12)  # type: ignore[arg-type]
