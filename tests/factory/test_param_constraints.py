"""A parameter's ``pattern`` and ``options`` are refused by Airflow itself when a run is triggered.

``POST /api/v2/dags/{dag_id}/dagRuns`` (and the trigger form, which posts there) calls
``create_dagrun`` on the serialized DAG, which validates ``params.deep_merge(conf)``; a
``ParamValidationError`` becomes HTTP 400 and no run is created. These tests run that same
validation on the DAG as the API server sees it (serialized and read back).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gennaker.factory import FactoryResult

SPEC = """
application: shop
name: release
parameters:
  - name: version
    default: "1.0.0"
    pattern: '[0-9]+\\.[0-9]+\\.[0-9]+'
  - name: environment
    default: staging
    options: [staging, prod]
  - name: ticket
    pattern: '[A-Z]+-[0-9]+'
stages:
  - {id: w, type: wait, duration: 1s}
"""


@pytest.fixture
def served_params(write: Callable[[str, str], Path], build: Callable[[], FactoryResult]) -> Any:
    """The DAG's params as the API server holds them: serialized by the DAG processor, read back."""
    from airflow.serialization.serialized_objects import DagSerialization

    write("release.yaml", SPEC)
    (dag,) = build().dags.values()
    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params


def _validate(params: Any, conf: dict[str, Any]) -> dict[str, Any]:
    return params.deep_merge(conf).validate()  # what DAG.create_dagrun does before it creates a run


def test_values_that_fit_are_accepted(served_params: Any) -> None:
    assert _validate(served_params, {}) == {"version": "1.0.0", "environment": "staging", "ticket": None}
    assert _validate(served_params, {"version": "12.0.3", "environment": "prod", "ticket": "OPS-42"})["ticket"] == (
        "OPS-42"
    )


@pytest.mark.parametrize(
    "conf",
    [
        {"version": "1.0"},
        {"version": "../../etc/passwd"},
        {"version": "1.0.0/../../x"},  # a match inside the value is not enough
        {"version": "v1.0.0"},
        {"version": "1.0.0\n"},  # nor is a match before a trailing newline ($ would let it through)
        {"version": 100},
        {"environment": "qa"},
        {"ticket": "ops-42"},
    ],
    ids=["short", "traversal", "suffix", "prefix", "newline", "not-a-string", "not-an-option", "lowercase"],
)
def test_values_that_do_not_fit_are_refused_before_any_run(served_params: Any, conf: dict[str, Any]) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        _validate(served_params, conf)


def test_the_param_schema_carries_the_anchored_pattern_and_the_options(served_params: Any) -> None:
    version = served_params.get_param("version")
    assert version.schema == {"type": "string", "pattern": r"^(?:[0-9]+\.[0-9]+\.[0-9]+)(?![\s\S])"}
    assert served_params.get_param("environment").schema == {"enum": ["staging", "prod"]}
