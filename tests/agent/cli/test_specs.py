"""Model specs from flags and YAML files: every problem named, nothing half-read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.api.mmesh import spec_from_model_info
from agent.cli.errors import EXIT_USAGE, UsageError
from agent.cli.specs import FieldError, checked_spec, load_model_file, model_info, parse_label
from agent.registry.spec import ModelSpec

SS = {"uri": "builtin://simple-string", "type": "simple-string"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return str(path)


def problems_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UsageError) as info:
        load_model_file(write(tmp_path, text))
    assert info.value.exit_code == EXIT_USAGE
    return str(info.value)


def test_list_and_mapping_forms(tmp_path: Path) -> None:
    as_list = load_model_file(write(tmp_path, """
- {id: a, uri: builtin://simple-string, type: simple-string}
- id: b
  uri: /models/b
  type: sklearn
  runtime: triton
  size_hint: 64Mi
  labels: {team: x, version: 2, live: true}
"""))
    assert as_list == [
        ModelSpec("a", "builtin://simple-string", "mlserver", "simple-string"),
        ModelSpec("b", "/models/b", "triton", "sklearn", 64 * 2**20,
                  {"team": "x", "version": "2", "live": "true"}),
    ]
    as_mapping = load_model_file(write(tmp_path, "models:\n  - {id: a, uri: /m, type: t}\n"))
    assert [s.model_id for s in as_mapping] == ["a"]


def test_every_invalid_entry_is_named_by_index_and_field(tmp_path: Path) -> None:
    report = problems_of(tmp_path, """
models:
  - {id: ok, uri: builtin://simple-string, type: simple-string}
  - {id: 123, uri: /m, type: t}
  - {id: a/b, uri: /m, type: t}
  - {id: c, url: /m, type: t}
  - {id: d, uri: "gs://x", type: t}
  - {id: ok, uri: /m, type: t}
  - {id: e, uri: /m, type: t, runtime: onnx}
  - {id: f, uri: /m, type: t, size_hint: lots}
  - {id: g, uri: /m}
  - {id: h, uri: /m, type: t, labels: [x]}
  - [1, 2]
""")
    lines = report.splitlines()
    assert lines[0].endswith("models.yaml: 10 entries are invalid; nothing was registered")
    assert lines[1:] == [
        "  models[1]: id: must be a string, got int 123 (quote it in YAML)",
        "  models[2] (id 'a/b'): id: model id 'a/b' contains a path separator",
        "  models[3] (id 'c'): url: is not a field (fields: id, uri, type, runtime, "
        "size_hint, labels, storage_key, gpu)",
        "  models[4] (id 'd'): uri: storage uri 'gs://x': scheme 'gs' is not supported "
        "(supported: builtin, file, http, https, s3, or an absolute path)",
        "  models[5] (id 'ok'): id: duplicate of models[0]",
        "  models[6] (id 'e'): runtime: 'onnx' is not one of mlserver, triton",
        "  models[7] (id 'f'): size_hint: 'lots' is not a size (bytes, or with a suffix: "
        "K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (of 1024), e.g. 512Mi)",
        "  models[8] (id 'g'): type: is required",
        "  models[9] (id 'h'): labels: must be a mapping of key: value, got list",
        "  models[10]: must be a mapping with id, uri, type, got list",
    ]


def test_long_reports_are_cut(tmp_path: Path) -> None:
    report = problems_of(tmp_path, "".join(f"- {{id: m{i}}}\n" for i in range(30)))
    assert "30 entries are invalid" in report
    assert report.splitlines()[-1] == "  ... and 10 more"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected a list of models"),
        ("models: {a: 1}", "expected a list of models"),
        ("[]", "lists no models"),
        ("- {id: a\n", "is not valid YAML"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems_of(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read .*nope\.yaml"):
        load_model_file(str(tmp_path / "nope.yaml"))


def test_checked_spec_names_the_field() -> None:
    with pytest.raises(FieldError) as info:
        checked_spec("x", "ftp://y", "t")
    assert info.value.field == "uri"


def test_model_info_is_what_the_agent_reads() -> None:
    spec = ModelSpec("m", "/models/m", "triton", "onnx", 42, {"a": "b"})
    info = model_info(spec)
    assert (info.type, info.path) == ("onnx", "/models/m")
    assert json.loads(info.key) == {"runtime": "triton", "size_hint": 42, "labels": {"a": "b"}}
    assert spec_from_model_info("m", info) == spec


def test_parse_label() -> None:
    assert parse_label("team=a=b") == ("team", "a=b")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_label("team")
