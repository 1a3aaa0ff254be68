"""What every benchmark prints and writes: the machine, the versions, the figures."""

from __future__ import annotations

import json
import os
import platform
import sys
import tomllib
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def meshlet_version() -> str:
    """The installed distribution's version, else pyproject's (a checkout not installed)."""
    try:
        return version("meshlet")
    except PackageNotFoundError:
        try:
            with open(ROOT / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"]) + " (checkout)"
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def environment() -> dict[str, Any]:
    """Machine and versions. Reads package metadata only: imports no mlserver."""
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_count_physical": psutil.cpu_count(logical=False),
            "memory_total_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(),
        },
        "versions": {
            "meshlet": meshlet_version(),
            "mlserver": _version("mlserver"),
            "grpcio": _version("grpcio"),
            "tritonclient": _version("tritonclient"),
            "python": platform.python_version(),
        },
    }


def print_environment(env: dict[str, Any]) -> None:
    m, v = env["machine"], env["versions"]
    say(
        f"machine: {m['cpu_count']} CPUs, {m['memory_total_bytes'] / 2**30:.1f} GiB RAM "
        f"({m['platform']})"
    )
    say(
        f"versions: meshlet {v['meshlet']}, mlserver {v['mlserver']}, grpcio {v['grpcio']}, "
        f"tritonclient {v['tritonclient']}, python {v['python']}"
    )


def say(line: str = "") -> None:
    """A line of the human-readable report (stdout)."""
    print(line, flush=True)


def progress(line: str) -> None:
    """A progress line (stderr), so stdout stays the report."""
    print(line, file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def finish(result: dict[str, Any], json_path: str | None) -> None:
    """Write the JSON to ``json_path``, or print it when no path was given."""
    text = json.dumps(_clean(result), indent=2, allow_nan=False)
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        say(f"json: {path}")
    else:
        say(text)


def _clean(value: Any) -> Any:
    """JSON has no NaN (an empty sample): write null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
