"""SIZE and log-level arguments."""

from __future__ import annotations

import argparse

import pytest

from agent.cli.args import log_level_type, parse_size, size_type


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1024", 1024),
        ("512Mi", 512 * 2**20),
        ("512mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1GiB", 2**30),
        ("2K", 2000),
        ("3M", 3_000_000),
        ("1G", 10**9),
        ("1.5Ki", 1536),
        (" 64 Mi ", 64 * 2**20),
        ("1Ti", 2**40),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.5", "12Xi", "Mi", "1 2"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|whole number"):
        parse_size(text)


def test_size_type_is_an_argparse_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="512Mi"):
        size_type("lots")


def test_log_level_type() -> None:
    assert log_level_type("debug") == "DEBUG"
    with pytest.raises(argparse.ArgumentTypeError, match="not a log level"):
        log_level_type("LOUD")
