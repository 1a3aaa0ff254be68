"""How the CLI prints statuses and listings: plain aligned text on stdout.

Model states have one set of names everywhere: ModelMesh's (NOT_LOADED,
LOADING, LOADED, LOADING_FAILED, NOT_FOUND). The KServe v2 RepositoryIndex
keeps the states Triton-protocol clients expect (READY, UNAVAILABLE, LOADING)
and meshlet puts its own at the start of each entry's ``reason``
(``agent.api.inference.index_reason``), which is what ``model ls`` shows.

Listings are sorted with numbers in ids compared as numbers and written in
batches as they are walked, so a million-model index never becomes one giant
string.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TextIO

from agent.proto import grpc_service_pb2 as pb
from agent.proto import model_mesh_pb2 as mm

MAX_ID_WIDTH = 60  # a longer id pushes only its own row out of line
BATCH_LINES = 1024
_STATES = {name: name for name in mm.ModelStatusInfo.ModelStatus.keys()}
_DIGITS = re.compile(r"(\d+)")


def plural(count: int, noun: str, nouns: str = "") -> str:
    """``1 model``, ``2 models``, ``0 models``; ``nouns`` when not noun + s."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def natural_key(text: str) -> tuple[str | int, ...]:
    """Sort key that compares digit runs as numbers: ``simple-string-2``
    before ``simple-string-10``. Text and numbers alternate, starting with
    text (maybe empty), so keys of any two ids compare."""
    parts = _DIGITS.split(text)
    if len(parts) == 3:  # one number, as most ids have: ~1 us instead of ~2
        # Interned: a million ids share a few prefixes, not a million copies.
        return sys.intern(parts[0]), int(parts[1]), parts[2]
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def index_state(model: pb.RepositoryIndexResponse.ModelIndex) -> tuple[str, str]:
    """meshlet's state of an index entry, and the rest of its reason. An entry
    whose reason does not start with one (a server other than meshlet) keeps
    its KServe state and reason."""
    reason = model.reason
    state, _, why = reason.partition(": ")
    known = _STATES.get(state)  # one string per state, not one per row
    if known is not None:
        return known, why
    return model.state, reason


def model_state(value: int) -> str:
    return str(mm.ModelStatusInfo.ModelStatus.Name(value))


def vmodel_state(value: int) -> str:
    return str(mm.VModelStatusInfo.VModelStatus.Name(value))


def format_time_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def model_status_lines(model_id: str, info: mm.ModelStatusInfo, indent: str = "") -> list[str]:
    """``model ID: STATE``, then one line per copy and per error."""
    lines = [f"{indent}model {model_id}: {model_state(info.status)}"]
    for copy in info.modelCopyInfos:
        since = f" since {format_time_ms(copy.time)}" if copy.time else ""
        lines.append(f"{indent}  copy on {copy.location}: {model_state(copy.copyStatus)}{since}")
    lines += [f"{indent}  error: {error}" for error in info.errors]
    return lines


def vmodel_status_lines(vmodel_id: str, info: mm.VModelStatusInfo) -> list[str]:
    """The vmodel, where it points, and the status of the models behind it."""
    owner = f" (owner {info.owner})" if info.owner else ""
    lines = [f"vmodel {vmodel_id}: {vmodel_state(info.status)}{owner}"]
    if info.status == mm.VModelStatusInfo.NOT_FOUND:
        return lines
    lines.append(f"  active: {info.activeModelId}")
    lines.append(f"  target: {info.targetModelId}")
    if info.HasField("activeModelStatus"):
        lines += model_status_lines(info.activeModelId, info.activeModelStatus, "  ")
    if info.HasField("targetModelStatus") and info.targetModelId != info.activeModelId:
        lines += model_status_lines(info.targetModelId, info.targetModelStatus, "  ")
    return lines


def write_index(
    models: Sequence[pb.RepositoryIndexResponse.ModelIndex],
    out: TextIO,
    ids_only: bool = False,
) -> None:
    """An aligned ID / STATE / REASON table and a count by state, or bare ids;
    sorted by id, numbers compared as numbers (a million ids: ~2 s)."""
    if ids_only:
        _write_batched(sorted((model.name for model in models), key=natural_key), out)
        return
    rows = [(model.name, *index_state(model)) for model in models]
    rows.sort(key=lambda row: natural_key(row[0]))
    id_width, state_width = len("ID"), len("STATE")
    states: Counter[str] = Counter()
    for name, state, _ in rows:
        id_width = max(id_width, min(len(name), MAX_ID_WIDTH))
        state_width = max(state_width, len(state))
        states[state] += 1

    def line(name: str, state: str, reason: str) -> str:
        return f"{name:<{id_width}}  {state:<{state_width}}  {reason}".rstrip()

    out.write(line("ID", "STATE", "REASON") + "\n")
    _write_batched((line(*row) for row in rows), out)
    by_state = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    out.write(plural(len(rows), "model") + (f" ({by_state})" if by_state else "") + "\n")


def _write_batched(lines: Iterable[str], out: TextIO) -> None:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= BATCH_LINES:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")


def human_bytes(n: int) -> str:
    """``3.2 KiB``, ``1.5 GiB``: binary units, one decimal."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
