"""A capacity beyond any sane bound is a spec error at its line, not a runaway at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

from gennaker.cloud.limits import SANE_MAX_CAPACITY
from gennaker.spec.loader import load_folder
from gennaker.spec.models import MAX_CAPACITY

SPEC = """\
application: hello
name: huge
stages:
  - id: bake
    type: bake
    package: hello
  - id: deploy
    type: deploy
    capacity:
      min: 0
      desired: 1
      max: {value}
"""


def errors(folder: Path, text: str) -> list[str]:
    (folder / "huge.yaml").write_text(text, encoding="utf-8")
    result = load_folder(folder)
    return [e.render() for errs in result.errors.values() for e in errs.errors]


def test_a_capacity_max_above_the_bound_is_an_error_at_its_line(tmp_path: Path) -> None:
    (error,) = errors(tmp_path, SPEC.format(value=1_000_000_000))
    assert error.endswith(
        "huge.yaml:12:12 stages[1].capacity.max: must be <= 10000 (got 1000000000)\n"
        "   12 |       max: 1000000000\n"
        "      |            ^"
    )


def test_the_bound_itself_is_allowed(tmp_path: Path) -> None:
    assert errors(tmp_path, SPEC.format(value=10_000)) == []


@pytest.mark.parametrize(("field", "value"), [("scaleBy", 20_000), ("scaleBy", -20_000), ("scalePercent", 1_000_000)])
def test_resize_steps_are_bounded_too(tmp_path: Path, field: str, value: int) -> None:
    text = f"application: hello\nname: huge\nstages:\n  - {{id: grow, type: resizeServerGroup, {field}: {value}}}\n"
    (error,) = errors(tmp_path, text)
    assert f"stages[0].{field}: must be" in error and f"(got {value})" in error


def test_the_spec_bound_is_the_providers_bound() -> None:
    assert MAX_CAPACITY == SANE_MAX_CAPACITY
