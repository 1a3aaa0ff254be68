"""The chart's values.yaml as documentation: every key's ``# --`` comment, and
the README's values table generated from them (as helm-docs does).

A key with a ``# --`` comment is documented. A documented key whose children
are documented too is a section (``image``: ``image.tag``, ...); one whose
children are not is a value whose content is free-form (``nodeSelector``,
``resources``), and becomes one row of the table, its default the value
written in values.yaml.

    python -m tests.charts.valuesdoc           # rewrite the table in the chart README
    python -m tests.charts.valuesdoc --check   # exit 1 when it is stale
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "meshlet"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"

_DOC = re.compile(r"^\s*# -- (?P<text>.+)$")
_MORE = re.compile(r"^\s*#\s+(?P<text>\S.*)$")
_KEY = re.compile(r"^(?P<indent> *)(?P<key>\"[^\"]+\"|'[^']+'|[^\s#'\"-][^:#]*?):(?:\s|$)")

Path_ = tuple[str, ...]


@dataclass(frozen=True)
class Key:
    path: Path_
    line: int
    doc: str | None  # the "# --" comment, None when there is none


def keys(text: str) -> list[Key]:
    """Every mapping key in ``text`` (not inside lists), in file order."""
    found: list[Key] = []
    stack: list[tuple[int, str]] = []
    doc: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if (m := _DOC.match(line)) is not None:
            doc = [m["text"].strip()]
            continue
        if doc is not None and (m := _MORE.match(line)) is not None:
            doc.append(m["text"].strip())
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            doc = None
            continue
        m = _KEY.match(line)
        if m is None:  # a list item or a continued value
            doc = None
            continue
        indent, key = len(m["indent"]), m["key"].strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if _in_list_item(text, number):
            doc = None
            continue
        stack.append((indent, key))
        found.append(Key(tuple(k for _, k in stack), number, " ".join(doc) if doc else None))
        doc = None
    return found


def _in_list_item(text: str, number: int) -> bool:
    """Whether line ``number`` is a key of an object in a list (gpu.tolerations'
    ``operator``): content of a value, not a key of the chart."""
    lines = text.splitlines()
    indent = len(lines[number - 1]) - len(lines[number - 1].lstrip())
    for line in reversed(lines[: number - 1]):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        own = len(line) - len(line.lstrip())
        if own <= indent and line.lstrip().startswith("- "):
            return True
        if own < indent:
            return False
    return False


@dataclass(frozen=True)
class Row:
    key: str
    default: Any
    doc: str


def problems_and_rows(text: str) -> tuple[list[str], list[Row]]:
    """What is wrong with the documentation of ``text``, and the table's rows."""
    values = yaml.safe_load(text)
    found = keys(text)
    by_path = {k.path: k for k in found}
    children: dict[Path_, list[Key]] = {}
    for k in found:
        children.setdefault(k.path[:-1], []).append(k)
    problems: list[str] = []
    rows: list[Row] = []
    for k in found:
        name = ".".join(k.path)
        parent = by_path.get(k.path[:-1])
        inside_free_form = parent is not None and (
            parent.doc is None or not any(c.doc for c in children.get(parent.path, []))
        )
        if k.doc is None:
            if not inside_free_form:
                problems.append(f"values.yaml line {k.line}: {name} has no '# --' comment")
            continue
        if inside_free_form and parent is not None and parent.doc is not None:
            continue  # content of a free-form value (has a comment of its own: fine)
        kids = children.get(k.path, [])
        documented = [c for c in kids if c.doc]
        if documented and len(documented) != len(kids):
            missing = ", ".join(".".join(c.path) for c in kids if not c.doc)
            problems.append(f"values.yaml: section {name} documents some keys but not {missing}")
        if not documented:
            rows.append(Row(name, _lookup(values, k.path), k.doc))
    return problems, rows


def _lookup(values: Any, path: Path_) -> Any:
    for part in path:
        values = values[part]
    return values


def table(rows: Sequence[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| Key | Default | Description |", "|---|---|---|"]
    for row in rows:
        default = json.dumps(row.default, separators=(",", ":"))
        lines.append(f"| `{row.key}` | `{cell(default)}` | {cell(row.doc)} |")
    return "\n".join(lines)


def updated_readme(readme: str, values_text: str) -> str:
    """``readme`` with the table between the markers made from ``values_text``."""
    problems, rows = problems_and_rows(values_text)
    if problems:
        raise ValueError("\n".join(problems))
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return f"{readme[:start]}\n{table(rows)}\n{readme[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    current = README.read_text()
    fresh = updated_readme(current, VALUES.read_text())
    if args == ["--check"]:
        if fresh != current:
            print(f"{README} is stale: run scripts/helm-tools readme", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: valuesdoc.py [--check]", file=sys.stderr)
        return 2
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
