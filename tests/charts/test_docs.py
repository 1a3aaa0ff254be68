"""The chart explains itself: every value has a comment, the README lists them
all with their defaults, the schema knows exactly these keys, and NOTES.txt
tells how to register and call a model."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.charts import test_crd, tools, valuesdoc

VALUES_TEXT = valuesdoc.VALUES.read_text()
DEFAULTS = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((tools.CHART / "values.schema.json").read_text())


def schema_at(path: tuple[str, ...]) -> dict[str, Any]:
    node = SCHEMA
    for part in path:
        node = node["properties"][part]
        while "$ref" in node:
            node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_value_has_a_comment() -> None:
    problems, rows = valuesdoc.problems_and_rows(VALUES_TEXT)
    assert problems == []
    assert len(rows) > 50


def test_the_comment_check_catches_a_silent_key() -> None:
    text = VALUES_TEXT.replace("  # -- Image tag (default: the chart's appVersion).\n", "")
    problems, _ = valuesdoc.problems_and_rows(text)
    assert any("image.tag has no '# --' comment" in p for p in problems), problems
    problems, _ = valuesdoc.problems_and_rows(VALUES_TEXT + "\nnewKey: 1\n")
    assert any("newKey has no '# --' comment" in p for p in problems), problems


def test_readme_values_table_is_fresh() -> None:
    readme = valuesdoc.README.read_text()
    assert valuesdoc.updated_readme(readme, VALUES_TEXT) == readme, (
        "charts/meshlet/README.md's values table is stale: run scripts/helm-tools readme")


def test_readme_table_has_every_key_with_its_default() -> None:
    readme = valuesdoc.README.read_text()
    table = readme[readme.index(valuesdoc.BEGIN):readme.index(valuesdoc.END)]
    listed = re.findall(r"^\| `([^`]+)` \| `([^`]*)` \| (.+) \|$", table, re.MULTILINE)
    _, rows = valuesdoc.problems_and_rows(VALUES_TEXT)
    assert [key for key, _, _ in listed] == [row.key for row in rows]
    for key, default, doc in listed:
        assert doc.strip(), key
        value: Any = json.loads(default.replace("\\|", "|"))
        assert value == valuesdoc._lookup(DEFAULTS, tuple(key.split("."))), key


def test_schema_and_values_know_the_same_keys() -> None:
    keys = valuesdoc.keys(VALUES_TEXT)
    _, rows = valuesdoc.problems_and_rows(VALUES_TEXT)
    top = {k.path[0] for k in keys}
    assert set(SCHEMA["properties"]) - {"global"} == top
    assert SCHEMA["additionalProperties"] is False
    sections = {row.key.rsplit(".", 1)[0] for row in rows if "." in row.key}
    for section in sections:
        path = tuple(section.split("."))
        documented = {row.key.rsplit(".", 1)[1] for row in rows
                      if row.key.rsplit(".", 1)[0] == section}
        node = schema_at(path)
        assert node["additionalProperties"] is False, section
        assert set(node["properties"]) == documented, section
    for row in rows:
        schema_at(tuple(row.key.split(".")))  # every row is a key the schema knows


def test_chart_readme_names_only_files_that_exist() -> None:
    readme = valuesdoc.README.read_text()
    named = set(re.findall(r"charts/meshlet/[\w./-]+", readme)) | {
        f"charts/meshlet/{n}" for n in re.findall(r"`((?:examples|crds)/[\w./-]*)`", readme)}
    assert "charts/meshlet/examples/model.yaml" in named
    for path in named:
        assert (tools.ROOT / path.rstrip("/")).exists(), path


@pytest.fixture(scope="module")
def default_notes(helm: tools.Helm) -> str:
    return notes(helm)


def notes(helm: tools.Helm, *args: str) -> str:
    out = helm.run("install", "meshlet", str(tools.CHART), "--namespace", "ml",
                   "--dry-run=client", "--output", "json", *args)
    text: str = json.loads(out)["info"]["notes"]
    return text


def test_notes_say_how_to_register_and_call_a_model(default_notes: str) -> None:
    text = default_notes
    assert "kind: Model" in text and "uri: builtin://simple-string" in text
    assert "kubectl apply -f -" in text and "kubectl get mlm simple-string" in text
    assert "meshlet.ml.svc.cluster.local:8033" in text
    assert "kubectl -n ml exec daemonset/meshlet -- meshlet infer simple-string" in text
    assert "kubectl -n ml port-forward service/meshlet 8033" in text
    assert "in\n   any namespace" in text
    assert "Secret\nml/meshlet-cluster-keys" in text


@pytest.mark.parametrize(("args", "expected", "absent"), [
    (("--set", "watchNamespaces={team-a,team-b}"), "watched namespaces (team-a, team-b)", None),
    (("--set", "kube.enabled=false"), "meshlet model add simple-string", "kind: Model"),
    (("--set", "hostPort.enabled=true"), "NODE_IP:8033", None),
    (("--set", "cluster.enabled=false"), "KServe v2 gRPC", "meshlet cluster"),
])
def test_notes_follow_the_values(
    helm: tools.Helm, args: tuple[str, ...], expected: str, absent: str | None
) -> None:
    text = notes(helm, *args)
    assert expected in text
    if absent:
        assert absent not in text


def test_the_model_in_the_notes_is_valid(default_notes: str) -> None:
    block = default_notes[default_notes.index("apiVersion: meshlet.io"):
                          default_notes.index("\nEOF")]
    assert test_crd.errors(yaml.safe_load(block)) == []
