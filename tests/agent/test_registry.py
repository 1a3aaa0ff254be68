from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from agent.errors import InvalidModelId, InvalidSpec, InvalidStorageUri
from agent.registry.spec import ModelSpec, validate_model_id
from agent.registry.store import ModelRegistry, PutResult, VModel


def spec(i: int | str, uri: str = "builtin://simple-string") -> ModelSpec:
    return ModelSpec(f"m-{i}", uri, "mlserver", "simple-string")


@pytest.mark.parametrize(
    "bad", ["", "a/b", "a\\b", "..", "x..y", "nul\x00", "tab\tid", "é" * 129, "x" * 257]
)
def test_bad_ids_refused(bad: str) -> None:
    with pytest.raises(InvalidModelId):
        validate_model_id(bad)


def test_good_ids_accepted() -> None:
    for good in ["simple-string-7", "a.b_c-d:1", "x" * 256, "模型"]:
        assert validate_model_id(good) == good


def test_spec_validation() -> None:
    with pytest.raises(InvalidStorageUri, match="ftp"):
        spec(1, "ftp://host/m").validated()
    with pytest.raises(InvalidStorageUri):
        spec(1, "relative/path").validated()
    with pytest.raises(InvalidSpec, match="runtime"):
        ModelSpec("m", "/abs", "tensorflow-serving", "t").validated()
    assert spec(1, "/abs/path").validated().uri == "/abs/path"
    assert spec(1, "file:///abs/path").validated()


def test_put_get_replace_delete(tmp_path: Path) -> None:
    reg = ModelRegistry.open(tmp_path / "r.db")
    assert reg.put(spec(1)) is PutResult.CREATED
    assert reg.put(spec(1)) is PutResult.UNCHANGED
    labelled = ModelSpec("m-1", "builtin://simple-string", "mlserver", "simple-string", 5,
                         {"team": "a"})
    assert reg.put(labelled) is PutResult.REPLACED
    assert reg.get("m-1") == labelled
    assert reg.delete("m-1") and not reg.delete("m-1")
    assert reg.get("m-1") is None
    reg.close()


def test_bulk_paging_and_vmodels(tmp_path: Path) -> None:
    reg = ModelRegistry.open(tmp_path / "r.db")
    written, replaced = reg.put_many(spec(i) for i in range(2500))
    assert (written, replaced) == (2500, [])
    written, replaced = reg.put_many([spec(1, "/other"), spec(2)])
    assert (written, replaced) == (1, ["m-1"])
    assert reg.count() == 2500
    assert len(list(reg.iter_ids(page=700))) == 2500
    page = reg.list_page(after="m-1000", limit=3)
    assert [s.model_id for s in page] == ["m-1001", "m-1002", "m-1003"]  # ordered by id
    reg.put_vmodel(VModel("v", "m-1", "m-2", "me"))
    assert reg.get_vmodel("v") == VModel("v", "m-1", "m-2", "me")
    assert reg.vmodels_referencing("m-2") == ["v"]
    assert [v.vmodel_id for v in reg.transitioning_vmodels()] == ["v"]
    reg.close()


def _write_forever(path: str, ready: multiprocessing.synchronize.Event) -> None:
    reg = ModelRegistry.open(Path(path))
    reg.put_many(spec(i) for i in range(1000))
    ready.set()
    i = 1000
    while True:
        reg.put(spec(i))
        i += 1


def test_survives_sigkill(tmp_path: Path) -> None:
    """Every registration acknowledged before a SIGKILL is there afterwards."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_write_forever, args=(str(tmp_path / "r.db"), ready))
    proc.start()
    try:
        assert ready.wait(60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    reg = ModelRegistry.open(tmp_path / "r.db")
    assert reg.count() >= 1000
    assert all(reg.get(f"m-{i}") is not None for i in range(1000))
    reg.close()
