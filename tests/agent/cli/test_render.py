"""Status lines and the model table."""

from __future__ import annotations

import io

from agent.cli.render import (
    BATCH_LINES,
    MAX_ID_WIDTH,
    model_status_lines,
    natural_key,
    plural,
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


def test_table_shows_meshlets_state_names_with_a_count_by_state() -> None:
    out = io.StringIO()
    write_index(index(("a", "READY", "LOADED"),
                      ("long-model-id", "UNAVAILABLE", "LOADING_FAILED: no such file: x"),
                      ("b", "UNAVAILABLE", "NOT_LOADED"),
                      ("c", "READY", "LOADED")).models, out)
    assert out.getvalue().splitlines() == [
        "ID             STATE           REASON",
        "a              LOADED",
        "b              NOT_LOADED",
        "c              LOADED",
        "long-model-id  LOADING_FAILED  no such file: x",
        "4 models (2 LOADED, 1 LOADING_FAILED, 1 NOT_LOADED)",
    ]


def test_an_index_from_another_server_keeps_its_states() -> None:
    out = io.StringIO()
    write_index(index(("t", "UNAVAILABLE", "unloaded")).models, out)
    assert out.getvalue().splitlines() == [
        "ID  STATE        REASON",
        "t   UNAVAILABLE  unloaded",
        "1 model (1 UNAVAILABLE)",
    ]


def test_ids_sort_with_numbers_compared_as_numbers() -> None:
    names = ["simple-string-10", "simple-string-2", "b", "simple-string-0", "a10b2",
             "simple-string-100", "a10b10", "a9", "simple-string-1", "a10b"]
    out = io.StringIO()
    write_index(index(*((n, "UNAVAILABLE", "NOT_LOADED") for n in names)).models, out,
                ids_only=True)
    assert out.getvalue().split() == [
        "a9", "a10b", "a10b2", "a10b10", "b", "simple-string-0", "simple-string-1",
        "simple-string-2", "simple-string-10", "simple-string-100",
    ]
    out = io.StringIO()
    write_index(index(*((n, "UNAVAILABLE", "NOT_LOADED") for n in names)).models, out)
    assert [line.split()[0] for line in out.getvalue().splitlines()[1:-1]] == [
        "a9", "a10b", "a10b2", "a10b10", "b", "simple-string-0", "simple-string-1",
        "simple-string-2", "simple-string-10", "simple-string-100",
    ]


def test_natural_key_compares_any_two_ids() -> None:
    ids = ["", "1", "a", "a1", "a01", "1a", "a1b", "a1b1", "x" * 300, "m-2-v10", "m-2-v9"]
    ordered = sorted(ids, key=natural_key)  # no TypeError: text and numbers alternate
    assert ordered.index("1") < ordered.index("1a") < ordered.index("a")
    assert ordered.index("m-2-v9") < ordered.index("m-2-v10")
    assert natural_key("a01") == natural_key("a1")  # the server's order breaks the tie


def test_plural() -> None:
    assert [plural(n, "model") for n in (0, 1, 2)] == ["0 models", "1 model", "2 models"]
    assert plural(1, "entry", "entries") == "1 entry"
    assert plural(3, "entry", "entries") == "3 entries"


def test_empty_table_and_ids_only() -> None:
    out = io.StringIO()
    write_index(index().models, out)
    assert out.getvalue() == "ID  STATE  REASON\n0 models\n"
    out = io.StringIO()
    write_index(index(("b", "READY", "LOADED"), ("a", "LOADING", "LOADING")).models, out,
                ids_only=True)
    assert out.getvalue() == "a\nb\n"


class CountingWriter(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def write(self, text: str) -> int:
        self.largest = max(self.largest, text.count("\n"))
        return super().write(text)


def test_large_listings_are_written_in_batches_and_long_ids_do_not_widen_all() -> None:
    response = index(*((f"m{i}", "UNAVAILABLE", "NOT_LOADED") for i in range(3 * BATCH_LINES)),
                     ("x" * 200, "READY", "LOADED"))
    out = CountingWriter()
    write_index(response.models, out)
    assert out.largest <= BATCH_LINES
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 * BATCH_LINES + 3
    assert lines[1] == "m0" + " " * (MAX_ID_WIDTH - 2) + "  NOT_LOADED"
    assert lines[3] == "m2" + " " * (MAX_ID_WIDTH - 2) + "  NOT_LOADED"  # not m10
    assert lines[-1] == f"{3 * BATCH_LINES + 1} models (1 LOADED, {3 * BATCH_LINES} NOT_LOADED)"


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
