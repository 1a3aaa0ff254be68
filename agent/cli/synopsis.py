"""The README's CLI block, generated from the parsers so it cannot drift.

One usage line per leaf command (``meshlet model add ...``), as argparse
writes it, at a fixed width, without ``-h``. The README holds it between
``<!-- cli:begin -->`` and ``<!-- cli:end -->``; a test checks it is current::

    python -m agent.cli.synopsis            # print the block
    python -m agent.cli.synopsis --write README.md
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

BEGIN = "<!-- cli:begin -->"
END = "<!-- cli:end -->"
WIDTH = 100


def leaf_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command that runs something, depth first in the order they were added."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield parser
        return
    for group in groups:
        for child in dict.fromkeys(group.choices.values()):  # aliases once
            yield from leaf_parsers(child)


def usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage without ``usage:`` and ``[-h]``, wrapped at ``WIDTH``."""
    saved = [a for a in parser._actions if "-h" in a.option_strings]
    for action in saved:
        parser._actions.remove(action)
    try:
        formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
        formatter.add_usage(parser.usage, parser._actions,
                            parser._mutually_exclusive_groups, prefix="")
        return formatter.format_help().rstrip()
    finally:
        parser._actions[0:0] = saved


def synopsis() -> str:
    from agent.cli.main import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)  # argparse reads it for the indentation
    try:
        return "\n".join(usage(p) for p in leaf_parsers(build_parser()))
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def block() -> str:
    return f"{BEGIN}\n```\n{synopsis()}\n```\n{END}"


def replace_block(text: str, new_block: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return text[:start] + new_block + text[end + len(END):]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.cli.synopsis",
                                     description="Print, or write into a file, the CLI synopsis.")
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help=f"replace the {BEGIN} ... {END} block of FILE")
    args = parser.parse_args(argv)
    if args.write is None:
        print(block())
        return 0
    text = args.write.read_text()
    try:
        args.write.write_text(replace_block(text, block()))
    except ValueError as err:
        print(f"error: {args.write}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
