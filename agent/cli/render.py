"""How the CLI prints statuses and listings: plain aligned text on stdout.

Listings are written in batches as they are walked, so a million-model index
never becomes one giant string.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TextIO

from agent.proto import grpc_service_pb2 as pb
from agent.proto import model_mesh_pb2 as mm

MAX_ID_WIDTH = 60  # a longer id pushes only its own row out of line
BATCH_LINES = 1024


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
    """An aligned ID / STATE / REASON table and a count line, or bare ids."""
    if ids_only:
        _write_batched((model.name for model in models), out)
        return
    id_width, state_width = len("ID"), len("STATE")
    states: Counter[str] = Counter()
    for model in models:
        id_width = max(id_width, min(len(model.name), MAX_ID_WIDTH))
        state_width = max(state_width, len(model.state))
        states[model.state] += 1

    def row(name: str, state: str, reason: str) -> str:
        return f"{name:<{id_width}}  {state:<{state_width}}  {reason}".rstrip()

    out.write(row("ID", "STATE", "REASON") + "\n")
    _write_batched((row(m.name, m.state, m.reason) for m in models), out)
    noun = "model" if len(models) == 1 else "models"
    by_state = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    out.write(f"{len(models)} {noun}" + (f" ({by_state})" if by_state else "") + "\n")


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
