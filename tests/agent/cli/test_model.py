"""``meshlet model add --file``'s summary: what was registered, loaded and
prefetched, each counted once."""

from __future__ import annotations

from agent.cli.model import Tally


def test_summary_without_load_or_prefetch() -> None:
    assert Tally(registered=1).summary(load=False, prefetch=False) == [
        "registered 1 model (0 failed)"
    ]


def test_builtin_models_are_neither_fetched_nor_failed() -> None:
    tally = Tally(registered=100, nothing_to_fetch=100)
    assert tally.summary(load=False, prefetch=True) == [
        "registered 100 models (0 failed)",
        "prefetched 0 models (0 failed); nothing to fetch for 100 builtin models",
    ]


def test_mixed_outcomes_each_count_once() -> None:
    tally = Tally(registered=5, failed=1, load_failed=1, fetched=2, fetch_failed=1,
                  nothing_to_fetch=1)
    assert tally.summary(load=True, prefetch=True) == [
        "registered 5 models (1 failed)",
        "loaded 4 models (1 failed)",
        "prefetched 2 models (1 failed); nothing to fetch for 1 builtin model",
    ]
