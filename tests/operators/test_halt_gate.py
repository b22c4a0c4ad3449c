"""onFailure: halt seen by stages of other branches before Airflow has recorded the failure.

On a real Airflow 3.3 a failed task's state is written only once its process has
exited, which can be seconds later (the integration tests met it); until then it
reads "running". The failing halt stage therefore records its outcome first.
"""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from gennaker.operators.base import OUTCOME_KEY, PIPELINE_HALTED
from gennaker.operators.preconditions import CheckPreconditionsOperator, PreconditionFailed


class FakeTI:
    dag_id = "it.halt"
    run_id = "manual__1"
    try_number = 1
    max_tries = 0

    def __init__(self, task_id: str, states: dict[str, str], xcoms: dict[tuple[str, str], Any] | None = None) -> None:
        self.task_id = task_id
        self.states = states
        self.xcoms = dict(xcoms or {})

    def get_task_states(self, dag_id: str, task_ids: list[str], run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {self.run_id: {t: self.states[t] for t in task_ids if t in self.states}}

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[(self.task_id, key)] = value


def _stage(task_id: str, on_failure: str = "halt", halting: list[str] | None = None) -> CheckPreconditionsOperator:
    return CheckPreconditionsOperator(
        task_id=task_id,
        stage_id=task_id,
        on_failure=on_failure,
        halting_task_ids=halting or [],
        preconditions=[{"expression": "true"}],
    )


@pytest.mark.parametrize(
    ("state", "outcome", "halted"),
    [
        ("failed", None, True),
        ("running", PIPELINE_HALTED, True),  # failed, but Airflow has not recorded it yet
        ("running", None, False),  # still working
        ("success", None, False),
    ],
)
def test_gate_sees_a_halting_stage(state: str, outcome: str | None, halted: bool) -> None:
    ti = FakeTI("after-slow", {"bad": state}, {("bad", OUTCOME_KEY): outcome} if outcome else None)
    stage = _stage("after-slow", halting=["bad"])
    if halted:
        with pytest.raises(AirflowSkipException, match="pipeline halted: stage 'bad' failed"):
            stage._gate({"ti": ti})
        assert ti.xcoms[("after-slow", OUTCOME_KEY)] == PIPELINE_HALTED
    else:
        stage._gate({"ti": ti})


@pytest.mark.parametrize(("on_failure", "recorded"), [("halt", PIPELINE_HALTED), ("failAfterBranches", None)])
def test_failing_halt_stage_records_the_halt_before_failing(on_failure: str, recorded: str | None) -> None:
    ti = FakeTI("bad", {})
    stage = _stage("bad", on_failure=on_failure)

    def fail(context: Any) -> Any:
        raise PreconditionFailed("one is not two")

    with pytest.raises(PreconditionFailed):
        stage._guarded({"ti": ti}, fail)
    assert ti.xcoms.get(("bad", OUTCOME_KEY)) == recorded
