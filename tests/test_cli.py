"""The `gennaker` command as a user runs it from the repository root."""

import json
from pathlib import Path

import pytest
import yaml

from gennaker.cli import main

REPO = Path(__file__).resolve().parents[1]
INVALID = "tests/fixtures/invalid"


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("GENNAKER_TEMPLATE_PATH", raising=False)


def test_validate_the_shipped_pipelines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-v", "dags/pipelines"]) == 0
    out, err = capsys.readouterr()
    assert "ok  dags/pipelines/hello/release-checks.yaml  (hello.release-checks, 5 stages)" in out
    assert out.rstrip().endswith("4 valid, 0 invalid")
    assert err == ""


def test_validate_one_file_that_names_other_pipelines(capsys: pytest.CaptureFixture[str]) -> None:
    # nightly.yaml triggers on release-checks and runs smoke: both live next to it, not in the file itself.
    assert main(["validate", "dags/pipelines/hello/nightly.yaml"]) == 0
    assert "1 valid, 0 invalid" in capsys.readouterr().out


def test_validate_a_file_validates_that_file_not_its_siblings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gennaker.spec import yamlsource

    folder = tmp_path / "pipelines"
    (folder / "other").mkdir(parents=True)
    (folder / "defaults.yaml").write_text("application: hello\n")
    (folder / "good.yaml").write_text("name: good\nstages:\n  - {id: up, type: runPipeline, pipeline: hello.child}\n")
    (folder / "child.yaml").write_text("name: child\nstages:\n  - {id: w, type: wait, duration: soon}\n")
    (folder / "other" / "broken.yaml").write_text("name: [\n")
    parsed: list[str] = []
    real = yamlsource.register_source
    monkeypatch.setattr(yamlsource, "register_source", lambda name, text: (parsed.append(name), real(name, text)))

    assert main(["validate", "-v", str(folder / "good.yaml")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "1 valid, 0 invalid" and err == ""
    # Only the file and its defaults.yaml were read as YAML; its sibling lent its name (hello.child) unparsed.
    assert sorted(Path(name).name for name in parsed) == ["defaults.yaml", "good.yaml"]

    parsed.clear()
    assert main(["validate", str(folder)]) == 1  # the folder: every spec, the broken ones too
    err = capsys.readouterr().err
    assert "child.yaml:3:35 stages[0].duration:" in err and "other/broken.yaml:2:1 invalid YAML" in err
    assert err.rstrip().endswith("1 valid, 2 invalid")


def test_validate_the_invalid_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", INVALID]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    expected = [
        ln
        for ln in (REPO / INVALID / "expected.txt").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for headline in expected:
        assert headline in err.splitlines(), headline
    files = sorted(p.name for p in (REPO / INVALID).glob("*.yaml"))
    assert err.rstrip().endswith(f"0 valid, {len(files)} invalid")
    # The offending line and a caret are shown under each headline.
    assert "   12 |       min: -1\n      |            ^\n" in err


def test_validate_no_build_accepts_stages_not_built_yet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "hook.yaml"
    spec.write_text(
        "application: hello\nname: hook\nstages:\n  - {id: hook, type: webhook, url: 'https://example.com'}\n"
    )
    assert main(["validate", str(spec)]) == 1
    assert "gennaker cannot run 'webhook' stages yet" in capsys.readouterr().err
    assert main(["validate", "--no-build", str(spec)]) == 0
    assert main(["validate", "docs/examples/pipelines"]) == 0  # the template's bake, deploy, canary, promote run


def test_validate_a_missing_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "no/such/folder"]) == 1
    assert "no/such/folder: no such spec file or folder" in capsys.readouterr().err


def test_schema_to_stdout_and_to_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == json.loads((REPO / "docs/schema/pipeline.schema.json").read_text())
    target = tmp_path / "schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert target.read_text() == printed


def test_render_expands_the_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "docs/examples/pipelines/hello/deploy-prod.yaml"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["application"] == "hello"
    assert [s["id"] for s in data["stages"]] == ["bake", "deploy", "canary", "promote", "announce"]
    deploy = data["stages"][1]
    assert deploy["capacity"] == {"min": 3, "max": 3, "desired": 3}
    assert data["stages"][2]["lifetime"] == "1h"
    assert "template" not in data and "variables" not in data


def test_render_full_applies_defaults_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--full", "dags/pipelines/hello/smoke.yaml"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert (data["application"], data["owner"], data["tags"]) == ("hello", "team-hello", ["example"])
    assert data["stages"][1] == {
        "id": "settle",
        "name": None,
        "dependsOn": None,
        "when": None,
        "onFailure": "halt",
        "timeout": None,
        "retries": 0,
        "retryDelay": "10s",
        "executionWindow": None,
        "notifications": [],
        "type": "wait",
        "duration": "2s",
    }


def test_render_of_a_broken_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", f"{INVALID}/bad_duration.yaml"]) == 1
    assert "bad_duration.yaml:6:15 stages[0].duration:" in capsys.readouterr().err


def test_graph_shows_parallel_stages_and_the_join(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "dags/pipelines/hello/release-checks.yaml"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "hello.release-checks",
        "   1.    preconditions (checkPreconditions)  (start)",
        "   2. || smoke (runPipeline)  <- preconditions",
        "   2. || soak (wait)  <- preconditions",
        "   3.    approve (manualJudgment)  <- smoke, soak (join)  [when: params.environment == 'prod']",
        "   4.    announce (checkPreconditions)  <- approve",
    ]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from gennaker import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gennaker {__version__}"
