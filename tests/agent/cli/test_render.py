"""Status lines and the model table."""

from __future__ import annotations

import io

from agent.cli.render import (
    BATCH_LINES,
    MAX_ID_WIDTH,
    model_status_lines,
    vmodel_status_lines,
    write_index,
)
from agent.proto import grpc_service_pb2 as pb
from agent.proto import model_mesh_pb2 as mm


def index(*rows: tuple[str, str, str]) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for name, state, reason in rows:
        response.models.add(name=name, state=state, reason=reason)
    return response


def test_table_is_aligned_with_a_count_by_state() -> None:
    out = io.StringIO()
    write_index(index(("a", "READY", ""), ("long-model-id", "UNAVAILABLE", "load failed: x"),
                      ("b", "READY", "")).models, out)
    assert out.getvalue().splitlines() == [
        "ID             STATE        REASON",
        "a              READY",
        "long-model-id  UNAVAILABLE  load failed: x",
        "b              READY",
        "3 models (2 READY, 1 UNAVAILABLE)",
    ]


def test_empty_table_and_ids_only() -> None:
    out = io.StringIO()
    write_index(index().models, out)
    assert out.getvalue() == "ID  STATE  REASON\n0 models\n"
    out = io.StringIO()
    write_index(index(("a", "READY", ""), ("b", "LOADING", "")).models, out, ids_only=True)
    assert out.getvalue() == "a\nb\n"


class CountingWriter(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def write(self, text: str) -> int:
        self.largest = max(self.largest, text.count("\n"))
        return super().write(text)


def test_large_listings_are_written_in_batches_and_long_ids_do_not_widen_all() -> None:
    response = index(*((f"m{i}", "UNAVAILABLE", "") for i in range(3 * BATCH_LINES)),
                     ("x" * 200, "READY", ""))
    out = CountingWriter()
    write_index(response.models, out)
    assert out.largest <= BATCH_LINES
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 * BATCH_LINES + 3
    assert lines[1] == "m0" + " " * (MAX_ID_WIDTH - 2) + "  UNAVAILABLE"


def test_model_status_lines() -> None:
    info = mm.ModelStatusInfo(status=mm.ModelStatusInfo.LOADING_FAILED, errors=["no such file"])
    info.modelCopyInfos.add(location="node-a", copyStatus=mm.ModelStatusInfo.LOADING_FAILED)
    assert model_status_lines("m", info) == [
        "model m: LOADING_FAILED",
        "  copy on node-a: LOADING_FAILED",
        "  error: no such file",
    ]
    info.modelCopyInfos[0].time = 1_700_000_000_000
    assert " since 2023-11-" in model_status_lines("m", info)[1]


def test_vmodel_status_lines() -> None:
    info = mm.VModelStatusInfo(status=mm.VModelStatusInfo.TRANSITIONING, activeModelId="a",
                               targetModelId="b", owner="team")
    info.activeModelStatus.status = mm.ModelStatusInfo.LOADED
    info.targetModelStatus.status = mm.ModelStatusInfo.LOADING
    assert vmodel_status_lines("v", info) == [
        "vmodel v: TRANSITIONING (owner team)",
        "  active: a",
        "  target: b",
        "  model a: LOADED",
        "  model b: LOADING",
    ]
    assert vmodel_status_lines("v", mm.VModelStatusInfo()) == ["vmodel v: NOT_FOUND"]
