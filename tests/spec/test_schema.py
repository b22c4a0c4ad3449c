"""The JSON Schema that editors use: committed, current, and true to the shipped specs."""

import json
from pathlib import Path

import pytest
import yaml

from gennaker.spec.schema import pipeline_schema

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs/schema/pipeline.schema.json"
EXAMPLES = sorted(
    p
    for p in [*(REPO / "dags/pipelines").rglob("*.yaml"), *(REPO / "docs/examples/pipelines").rglob("*.yaml")]
    if p.name != "defaults.yaml"
)

jsonschema = pytest.importorskip("jsonschema")


def test_committed_schema_is_current() -> None:
    # Regenerate with `make schema` (gennaker schema -o docs/schema/pipeline.schema.json).
    assert json.loads(COMMITTED.read_text(encoding="utf-8")) == pipeline_schema()


def test_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(pipeline_schema())


def test_every_example_points_at_the_schema() -> None:
    assert EXAMPLES, "no example specs found"
    for path in EXAMPLES:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        target = (path.parent / first.split("=", 1)[1]).resolve()
        assert target == COMMITTED, path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_examples_validate_against_the_schema(path: Path) -> None:
    # Editors check each file alone: application from defaults.yaml and typeless template overrides must pass.
    validator = jsonschema.Draft202012Validator(pipeline_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"name": "p"}, "'stages' is a required property"),
        ({"name": "p", "stages": [{"id": "w"}]}, "is not valid under any of the given schemas"),
        (
            {"name": "p", "stages": [{"id": "w", "type": "wait", "duration": "5s"}], "bogus": 1},
            "'bogus' was unexpected",
        ),
        ({"name": "p", "stages": [{"id": "w", "type": "wiat", "duration": "5s"}]}, "is not valid under any"),
        (
            {"name": "p", "stages": [{"id": "w", "type": "wait", "duration": "5s"}], "concurrency": {"limit": 0}},
            "0 is less than",
        ),
    ],
)
def test_schema_catches_mistakes(spec: dict[str, object], fragment: str) -> None:
    validator = jsonschema.Draft202012Validator(pipeline_schema())
    messages = [e.message for e in validator.iter_errors(spec)]
    assert any(fragment in m for m in messages), messages


def test_with_a_template_stages_may_be_partial_overrides() -> None:
    validator = jsonschema.Draft202012Validator(pipeline_schema())
    spec = {"name": "p", "template": "t", "variables": {"x": 1}, "stages": [{"id": "canary", "lifetime": "1h"}]}
    assert list(validator.iter_errors(spec)) == []
    assert list(validator.iter_errors({"name": "p", "template": "t", "stages": [{"lifetime": "1h"}]}))
