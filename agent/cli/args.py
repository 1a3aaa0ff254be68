"""Argument types and helpers shared by the command modules."""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]i?)?b?", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
    "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40,
}
SIZE_HELP = "bytes, or with a suffix: K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (of 1024)"


def parse_size(text: str) -> int:
    """``"512Mi"`` -> 536870912. Plain numbers are bytes; a fraction needs a unit."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size ({SIZE_HELP}, e.g. 512Mi)")
    number, unit = match["number"], (match["unit"] or "").lower()
    if not unit and "." in number:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(float(number) * _UNITS[unit])


def size_type(text: str) -> int:
    """``parse_size`` as an argparse ``type``: errors become usage errors (exit 2)."""
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def log_level_type(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level (one of {', '.join(LOG_LEVELS)})"
        )
    return level


def setup_logging(level: str) -> None:
    """One line per record on stderr (unless the root logger already has handlers)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def add_command(
    subparsers: Any, name: str, summary: str, description: str, examples: str = ""
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows ``description`` and ``examples`` as written."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"examples:\n{examples}" if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def add_group(subparsers: Any, name: str, summary: str, description: str,
              examples: str = "") -> Any:
    """A command with subcommands of its own (``meshlet model ...``); returns their subparsers."""
    parser = add_command(subparsers, name, summary, description, examples)
    return parser.add_subparsers(
        dest=f"{name}_command", metavar="SUBCOMMAND", required=True
    )
