"""Run parameters: ``options`` and ``pattern`` constrain what a trigger may send; a bad constraint is a spec error."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gennaker.spec.loader import LoadedSpec

Errors = Callable[..., list[str]]
Load = Callable[..., LoadedSpec]


def spec(parameters: str) -> str:
    return f"application: hello\nname: p\nparameters:\n{parameters}stages:\n  - {{id: w, type: wait, duration: 1s}}\n"


def test_a_pattern_is_kept_as_written(load: Load) -> None:
    loaded = load(spec("  - name: version\n    default: '1.2.3'\n    pattern: '[0-9]+\\.[0-9]+\\.[0-9]+'\n"))
    assert loaded.pipeline.parameters[0].pattern == r"[0-9]+\.[0-9]+\.[0-9]+"


@pytest.mark.parametrize(
    ("parameter", "error"),
    [
        (
            "  - name: version\n    pattern: '[0-9'\n",
            "spec.yaml:5:14 parameters[0].pattern: not a valid regular expression: "
            "unterminated character set at position 0",
        ),
        (  # balanced inside gennaker's anchoring, but not a regex on its own
            "  - name: version\n    pattern: 'a)|(b'\n",
            "spec.yaml:5:14 parameters[0].pattern: not a valid regular expression: "
            "unbalanced parenthesis at position 1",
        ),
        (
            "  - name: version\n    default: '1.0'\n    pattern: '[0-9]+\\.[0-9]+\\.[0-9]+'\n",
            "spec.yaml:6:14 parameters[0].pattern: the default '1.0' does not match this pattern",
        ),
        (
            "  - name: env\n    options: [staging, prod, qa]\n    pattern: 'staging|prod'\n",
            "spec.yaml:6:14 parameters[0].pattern: option 'qa' does not match this pattern",
        ),
        (
            "  - name: replicas\n    default: 3\n    pattern: '[0-9]'\n",
            "spec.yaml:6:14 parameters[0].pattern: a pattern applies to strings, and the default 3 is not one",
        ),
        (
            "  - name: version\n    pattern: ''\n",
            "spec.yaml:5:14 parameters[0].pattern: string should have at least 1 character (got '')",
        ),
    ],
    ids=["invalid-regex", "unbalanced", "default", "option", "not-a-string", "empty"],
)
def test_a_bad_pattern_is_an_error_at_its_line(errors: Errors, parameter: str, error: str) -> None:
    assert errors(spec(parameter)) == [error]


def test_a_pattern_matches_the_whole_value(errors: Errors) -> None:
    # The default 'v1.2.3' contains a match of the pattern, but is not one.
    text = spec("  - name: version\n    default: 'v1.2.3'\n    pattern: '[0-9]+\\.[0-9]+\\.[0-9]+'\n")
    assert errors(text) == ["spec.yaml:6:14 parameters[0].pattern: the default 'v1.2.3' does not match this pattern"]
