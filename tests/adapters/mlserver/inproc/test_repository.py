"""DirectModelRepository: one folder read per find, never a listing. Runs in a
child pytest (see ../test_inproc.py)."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
from mlserver.errors import ModelNotFound

from adapters.mlserver.repository import DirectModelRepository
from adapters.mlserver.simple_string import SimpleStringModel

SIMPLE = "adapters.mlserver.simple_string.SimpleStringModel"


def write_settings(folder: Path, **content: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model-settings.json"
    path.write_text(json.dumps(content))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    for i in range(20):
        write_settings(root / f"m{i}", name=f"m{i}", implementation=SIMPLE)
    # Outside the repository: must never be reachable by name.
    write_settings(tmp_path / "outside", name="outside", implementation=SIMPLE)
    return root


def _no_listing(*args: object, **kwargs: object) -> None:
    raise AssertionError("the repository listed a folder")


async def test_find_reads_only_the_named_folder(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module, name in ((os, "scandir"), (os, "listdir"), (os, "walk"), (glob, "glob")):
        monkeypatch.setattr(module, name, _no_listing)
    [settings] = await DirectModelRepository(str(root)).find("m7")
    assert settings.name == "m7"
    assert settings.implementation is SimpleStringModel
    # No remembered file: MLServer then imports the class once for every copy
    # instead of reloading its module on each load.
    assert settings._source is None


async def test_list_is_empty(root: Path) -> None:
    assert await DirectModelRepository(str(root)).list() == []


@pytest.mark.parametrize("name", ["nope", "../outside", "m1/../m2", "m1\\x", "..", ""])
async def test_unknown_or_unsafe_names_are_not_found(root: Path, name: str) -> None:
    with pytest.raises(ModelNotFound) as raised:
        await DirectModelRepository(str(root)).find(name)
    assert raised.value.status_code == 404


async def test_artifact_with_its_own_settings_keeps_its_code_folder(
    root: Path, tmp_path: Path
) -> None:
    artifact = tmp_path / "artifact"
    own = write_settings(artifact, name="whatever", implementation=SIMPLE)
    write_settings(
        root / "custom", name="custom", implementation=SIMPLE, parameters={"uri": str(artifact)}
    )
    [settings] = await DirectModelRepository(str(root)).find("custom")
    assert settings._source == str(own)
