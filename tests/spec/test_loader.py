"""defaults.yaml cascade and folder loading."""

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from gennaker.errors import SpecErrors
from gennaker.spec.loader import discover, load_folder, load_spec

Write = Callable[[str, str], Path]

OUTER = """
application: outer
owner: outer-team
tags: [outer]
concurrency: {limit: 3}
stageDefaults:
  "*":
    timeout: 1h
    account: ops
    region: eu-west-1
  wait:
    onFailure: ignore
"""

INNER = """
owner: inner-team
stageDefaults:
  "*":
    timeout: 2h
"""

SPEC = """
name: p
stages:
  - {id: bake, type: bake, package: hello, region: us-east-1}
  - {id: soak, type: wait, duration: 10s}
  - {id: check, type: checkPreconditions, preconditions: [{expression: "true"}], onFailure: haltBranch}
"""


@pytest.fixture
def cascade(write: Write, tmp_path: Path) -> Path:
    write("pipelines/defaults.yaml", OUTER)
    write("pipelines/team/defaults.yaml", INNER)
    return write("pipelines/team/svc/p.yaml", SPEC)


def test_pipeline_fields_come_from_the_nearest_defaults(cascade: Path, tmp_path: Path) -> None:
    p = load_spec(cascade, root=tmp_path / "pipelines").pipeline
    assert p.dag_id == "outer.p"  # only the outer file names the application
    assert p.owner == "inner-team"  # both name an owner: the nearest wins
    assert p.tags == ["outer"]
    assert p.concurrency.limit == 3


def test_the_spec_wins_over_every_defaults_file(write: Write, cascade: Path, tmp_path: Path) -> None:
    write("pipelines/team/svc/p.yaml", "owner: me\n" + SPEC)
    assert load_spec(cascade, root=tmp_path / "pipelines").pipeline.owner == "me"


def test_stage_defaults_fill_only_fields_the_stage_type_has(cascade: Path, tmp_path: Path) -> None:
    bake, soak, check = load_spec(cascade, root=tmp_path / "pipelines").pipeline.stages
    # Nearest '*' wins for timeout; the stage's own value wins over any default.
    assert bake.timeout == soak.timeout == check.timeout == timedelta(hours=2)
    assert (bake.account, bake.region) == ("ops", "us-east-1")
    # wait and checkPreconditions stages have no account/region: nothing is added (no "unknown field" error).
    assert not hasattr(soak, "account")
    assert not hasattr(check, "region")
    # Type-specific defaults apply to that type only, and never over what the stage says.
    assert soak.on_failure == "ignore"
    assert check.on_failure == "haltBranch"
    assert bake.on_failure == "halt"


def test_defaults_outside_the_root_are_ignored(cascade: Path, tmp_path: Path) -> None:
    # With team/ as the root, the outer defaults.yaml (the only one naming the application) is not used.
    with pytest.raises(SpecErrors) as info:
        load_spec(cascade, root=tmp_path / "pipelines" / "team")
    assert [e.headline() for e in info.value.errors] == [
        "pipelines/team/svc/p.yaml:1:1 application: missing required field 'application'"
    ]


def test_a_bad_default_value_is_reported_in_the_defaults_file(write: Write, cascade: Path, tmp_path: Path) -> None:
    write("pipelines/team/defaults.yaml", 'stageDefaults:\n  "*":\n    timeout: forever\n')
    with pytest.raises(SpecErrors) as info:
        load_spec(cascade, root=tmp_path / "pipelines")
    heads = [e.headline() for e in info.value.errors]
    assert heads[0].startswith("pipelines/team/defaults.yaml:3:14 stages[0].timeout: 'forever' is not a duration")
    assert len(heads) == 3  # one per stage that took it


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("stages: []", "pipelines/defaults.yaml:2:1 stages: 'stages' cannot be set in defaults.yaml"),
        ("name: shared", "pipelines/defaults.yaml:2:1 name: 'name' cannot be set in defaults.yaml"),
        (
            "owenr: team",
            "pipelines/defaults.yaml:2:1 owenr: 'owenr' cannot be set in defaults.yaml (did you mean 'owner'?)",
        ),
        (
            "stageDefault: {}",
            "pipelines/defaults.yaml:2:1 stageDefault: 'stageDefault' cannot be set in defaults.yaml "
            "(did you mean 'stageDefaults'?)",
        ),
    ],
)
def test_a_forbidden_key_in_defaults_is_an_error(write: Write, tmp_path: Path, line: str, expected: str) -> None:
    write("pipelines/defaults.yaml", f"application: hello\n{line}\n")
    spec = write("pipelines/p.yaml", "name: p\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    with pytest.raises(SpecErrors) as info:
        load_spec(spec, root=tmp_path / "pipelines")
    assert [e.headline() for e in info.value.errors] == [expected]


def test_defaults_must_be_a_mapping(write: Write, tmp_path: Path) -> None:
    write("pipelines/defaults.yaml", "- application: hello\n")
    spec = write("pipelines/p.yaml", "name: p\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    with pytest.raises(SpecErrors, match=r"defaults\.yaml must be a mapping"):
        load_spec(spec, root=tmp_path / "pipelines")


def test_a_spec_must_be_a_mapping(write: Write, tmp_path: Path) -> None:
    spec = write("p.yaml", "- just\n- a list\n")
    with pytest.raises(SpecErrors) as info:
        load_spec(spec, root=tmp_path)
    assert [e.headline() for e in info.value.errors] == ["p.yaml:1:1 a pipeline spec must be a mapping of fields"]


def test_discover_skips_defaults_hidden_and_ignored(write: Write, tmp_path: Path) -> None:
    for rel in ["a.yaml", "sub/b.yml", "defaults.yaml", ".hidden/c.yaml", "drafts/d.yaml", "notes.txt", ".e.yaml"]:
        write(f"pipelines/{rel}", "x: 1\n")
    write("pipelines/.airflowignore", "# drafts are not pipelines\ndrafts/\n")
    found = [p.relative_to(tmp_path / "pipelines").as_posix() for p in discover(tmp_path / "pipelines")]
    assert found == ["a.yaml", "sub/b.yml"]


def test_load_folder_keeps_good_specs_next_to_broken_ones(write: Write, tmp_path: Path) -> None:
    write("pipelines/defaults.yaml", "application: hello\n")
    write("pipelines/good.yaml", "name: good\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    write("pipelines/bad.yaml", "name: bad\nstages:\n  - {id: w, type: wait, duration: never}\n")
    result = load_folder(tmp_path / "pipelines")
    assert sorted(result.specs) == ["hello.good"]
    assert list(result.errors) == ["pipelines/bad.yaml"]
    (err,) = result.errors["pipelines/bad.yaml"].errors
    assert err.headline().startswith("pipelines/bad.yaml:3:35 stages[0].duration: 'never' is not a duration")


def test_load_folder_refuses_a_second_pipeline_with_the_same_dag_id(write: Write, tmp_path: Path) -> None:
    write("pipelines/a.yaml", "application: hello\nname: same\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    write("pipelines/b.yaml", "application: hello\nname: same\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    result = load_folder(tmp_path / "pipelines")
    assert result.specs["hello.same"].display == "pipelines/a.yaml"
    assert [e.headline() for e in result.errors["pipelines/b.yaml"].errors] == [
        "pipelines/b.yaml:2:7 name: pipeline 'hello.same' is already defined in pipelines/a.yaml"
    ]


def test_load_folder_of_some_files_still_knows_the_other_pipelines(write: Write, tmp_path: Path) -> None:
    write("pipelines/defaults.yaml", "application: hello\n")
    write("pipelines/smoke.yaml", "name: smoke\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    one = write(
        "pipelines/release.yaml",
        "name: release\ntriggers:\n  - {type: pipeline, pipeline: hello.smoke}\n"
        "  - {type: pipeline, pipeline: hello.nope}\n"
        "stages:\n  - {id: run, type: runPipeline, pipeline: hello.smoke}\n",
    )
    result = load_folder(tmp_path / "pipelines", files=[one])
    assert list(result.specs) == []
    # Only the pipeline that exists nowhere is reported; hello.smoke is known although not loaded.
    assert [e.headline() for e in result.errors["pipelines/release.yaml"].errors] == [
        "pipelines/release.yaml:4:32 triggers[1].pipeline: unknown pipeline 'hello.nope' (did you mean 'hello.smoke'?)"
    ]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            '  "*":\n    acount: ops\n',
            "pipelines/defaults.yaml:4:5 stageDefaults.*.acount: no stage type has field 'acount' "
            "(did you mean 'account'?)",
        ),
        (
            "  wait:\n    account: ops\n",
            "pipelines/defaults.yaml:4:5 stageDefaults.wait.account: 'wait' stages have no field 'account'",
        ),
        (
            "  deploi:\n    account: ops\n",
            "pipelines/defaults.yaml:3:3 stageDefaults.deploi: unknown stage type 'deploi' (did you mean 'deploy'?)",
        ),
        (
            '  "*":\n    id: same\n',
            "pipelines/defaults.yaml:4:5 stageDefaults.*.id: no stage type has field 'id'",
        ),
        ("  wait: 5s\n", "pipelines/defaults.yaml:3:9 stageDefaults.wait: must be a mapping of stage fields"),
    ],
)
def test_a_typo_in_stage_defaults_is_an_error(write: Write, tmp_path: Path, block: str, expected: str) -> None:
    # Without this check the value would silently never apply.
    write("pipelines/defaults.yaml", f"application: hello\nstageDefaults:\n{block}")
    spec = write("pipelines/p.yaml", "name: p\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    with pytest.raises(SpecErrors) as info:
        load_spec(spec, root=tmp_path / "pipelines")
    assert [e.headline() for e in info.value.errors] == [expected]


def test_stage_defaults_must_be_a_mapping(write: Write, tmp_path: Path) -> None:
    write("pipelines/defaults.yaml", "application: hello\nstageDefaults: [account]\n")
    spec = write("pipelines/p.yaml", "name: p\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    with pytest.raises(SpecErrors) as info:
        load_spec(spec, root=tmp_path / "pipelines")
    assert [e.headline() for e in info.value.errors] == [
        'pipelines/defaults.yaml:2:16 stageDefaults: must map "*" or a stage type to stage fields'
    ]
