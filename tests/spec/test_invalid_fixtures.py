"""Every kind of mistake in tests/fixtures/invalid/ gives exactly the error headline in expected.txt."""

from pathlib import Path

import pytest

from gennaker.errors import SpecError
from gennaker.factory.stages import check_supported
from gennaker.spec.loader import load_folder

REPO = Path(__file__).resolve().parents[2]
FOLDER = Path("tests/fixtures/invalid")


@pytest.fixture
def found(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[SpecError]]:
    """Errors by file, as `gennaker validate` finds them: the language, then what the factory can build."""
    monkeypatch.chdir(REPO)
    result = load_folder(FOLDER)
    out = {name: list(errs.errors) for name, errs in result.errors.items()}
    for spec in result.specs.values():
        problems = check_supported(spec)
        if problems:
            out[spec.display] = problems
    return out


def expected() -> list[str]:
    lines = (REPO / FOLDER / "expected.txt").read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


def test_headlines_are_exactly_as_expected(found: dict[str, list[SpecError]]) -> None:
    got = sorted(e.headline() for errs in found.values() for e in errs)
    assert got == sorted(expected())


def test_every_fixture_is_broken_and_listed(found: dict[str, list[SpecError]]) -> None:
    fixtures = sorted(str(FOLDER / p.name) for p in (REPO / FOLDER).glob("*.yaml"))
    assert sorted(found) == fixtures
    listed = {line.split(":", 1)[0] for line in expected()}
    assert listed == set(fixtures)


def test_one_error_per_fixture(found: dict[str, list[SpecError]]) -> None:
    assert {name: len(errs) for name, errs in found.items() if len(errs) != 1} == {}


def test_rendered_errors_show_the_line_and_a_caret(found: dict[str, list[SpecError]]) -> None:
    for name, errs in found.items():
        for err in errs:
            assert err.position is not None, err.headline()
            headline, line, caret = err.render().splitlines()
            source = (REPO / name).read_text(encoding="utf-8").splitlines()[err.position.line - 1]
            assert headline == err.headline()
            assert line == f"{err.position.line:>5} | {source}"
            assert caret.index("^") == line.index("|") + 2 + err.position.column - 1, err.render()
            assert caret.rstrip().endswith("^")


def test_negative_capacity_rendering(found: dict[str, list[SpecError]]) -> None:
    (err,) = found["tests/fixtures/invalid/negative_capacity.yaml"]
    assert err.render() == (
        "tests/fixtures/invalid/negative_capacity.yaml:12:12 stages[1].capacity.min: must be >= 0 (got -1)\n"
        "   12 |       min: -1\n"
        "      |            ^"
    )
