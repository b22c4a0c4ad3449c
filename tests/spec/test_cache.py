"""The parse cache: a valid spec is validated once; any input that changes invalidates it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gennaker.spec import loader
from gennaker.spec.loader import load_folder

SPEC = "name: release\nstages:\n  - {id: soak, type: wait, duration: 5m}\n"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GENNAKER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GENNAKER_SPEC_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "pipelines"
    root.mkdir()
    (root / "defaults.yaml").write_text("application: hello\n")
    (root / "release.yaml").write_text(SPEC)
    return root


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The specs that were really parsed (not served from the cache)."""
    seen: list[str] = []
    real = loader.parse_text

    def counting(text: str, file: str):  # type: ignore[no-untyped-def]
        seen.append(file)
        return real(text, file)

    monkeypatch.setattr(loader, "parse_text", counting)
    return seen


def test_a_valid_spec_is_parsed_once(folder: Path, parses: list[str]) -> None:
    first = load_folder(folder)
    second = load_folder(folder)
    assert parses == ["pipelines/release.yaml"]
    assert second.specs["hello.release"].pipeline == first.specs["hello.release"].pipeline
    # Positions are there when asked for: loaded again from the file.
    assert second.specs["hello.release"].positions.find(("stages", 0, "duration")).line == 3


@pytest.mark.parametrize(
    ("change", "new_dag_id"),
    [
        (lambda root: (root / "release.yaml").write_text(SPEC.replace("5m", "6m")), "hello.release"),
        (lambda root: (root / "defaults.yaml").write_text("application: other\n"), "other.release"),
    ],
)
def test_a_change_of_the_spec_or_its_defaults_invalidates(folder: Path, parses: list[str], change, new_dag_id) -> None:  # type: ignore[no-untyped-def]
    load_folder(folder)
    change(folder)
    result = load_folder(folder)
    assert parses == ["pipelines/release.yaml", "pipelines/release.yaml"]
    assert list(result.specs) == [new_dag_id]


def test_a_change_of_the_template_invalidates(folder: Path, parses: list[str]) -> None:
    templates = folder.parent / "templates"
    templates.mkdir()
    body = "template: {name: soak}\nvariables: [{name: d, type: duration, default: 5m}]\n"
    (templates / "soak.yaml").write_text(body + "stages:\n  - {id: soak, type: wait, duration: '${d}'}\n")
    (folder / "release.yaml").write_text("name: release\ntemplate: soak\n")
    assert load_folder(folder).specs["hello.release"].pipeline.stages[0].duration.total_seconds() == 300
    (templates / "soak.yaml").write_text(body + "stages:\n  - {id: soak, type: wait, duration: 1m}\n")
    assert load_folder(folder).specs["hello.release"].pipeline.stages[0].duration.total_seconds() == 60


def test_errors_are_never_cached(folder: Path, parses: list[str]) -> None:
    (folder / "release.yaml").write_text(SPEC.replace("5m", "soon"))
    assert load_folder(folder).errors
    assert load_folder(folder).errors
    assert parses == ["pipelines/release.yaml", "pipelines/release.yaml"]


def test_a_cached_spec_reports_a_new_reference_error_with_its_position(folder: Path) -> None:
    (folder / "smoke.yaml").write_text("name: smoke\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    (folder / "release.yaml").write_text(SPEC + "  - {id: run, type: runPipeline, pipeline: hello.smoke}\n")
    assert sorted(load_folder(folder).specs) == ["hello.release", "hello.smoke"]
    (folder / "smoke.yaml").unlink()  # release.yaml is unchanged: served from the cache
    (error,) = load_folder(folder).errors["pipelines/release.yaml"].errors
    assert error.headline() == ("pipelines/release.yaml:4:44 stages[1].pipeline: unknown pipeline 'hello.smoke'")


def test_the_cache_can_be_turned_off(folder: Path, parses: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENNAKER_SPEC_CACHE", "0")
    load_folder(folder)
    load_folder(folder)
    assert parses == ["pipelines/release.yaml", "pipelines/release.yaml"]
