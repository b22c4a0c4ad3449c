"""Builders of the stages without a cloud: wait, manual judgment, preconditions, run pipeline."""

from __future__ import annotations

from typing import Any

from gennaker.factory.stages_common import StageBuild
from gennaker.spec.models import (
    CheckPreconditionsStage,
    ManualJudgmentStage,
    RunPipelineStage,
    WaitStage,
)


def build_wait(b: StageBuild) -> Any:
    """The operator of a wait stage: deferred, no worker slot held."""
    from gennaker.operators.wait import WaitStageOperator

    assert isinstance(b.stage, WaitStage)
    return WaitStageOperator(duration=b.stage.duration, **b.common)


def build_judgment(b: StageBuild) -> Any:
    """The operator of a manual judgment stage: Airflow's human-in-the-loop."""
    from gennaker.operators.judgment import ManualJudgmentOperator

    s = b.stage
    assert isinstance(s, ManualJudgmentStage)
    common = dict(b.common)
    timeout = common.pop("execution_timeout", None)
    users = [{"id": u, "name": u} for u in s.respondents] or None
    return ManualJudgmentOperator(
        subject=s.subject or s.display_name,
        body=s.instructions,
        options=list(s.options),
        defaults=[s.default] if s.default else None,
        assigned_users=users,
        response_timeout=timeout,
        fail_on=s.failing_options,
        **common,
    )


def build_preconditions(b: StageBuild) -> Any:
    """The operator of a check preconditions stage."""
    from gennaker.operators.preconditions import CheckPreconditionsOperator

    s = b.stage
    assert isinstance(s, CheckPreconditionsStage)
    return CheckPreconditionsOperator(
        preconditions=[p.model_dump() for p in s.preconditions],
        **b.common,
    )


# Airflow 3.3 fails a deferred task whose trigger fires within ~5 s of the deferral (the scheduler has not yet
# read the executor's report of the deferring try: "state mismatch"). Airflow's own DagStateTrigger checks the
# child at once and then every poll interval, so an interval of at least 6 s keeps a quick child out of the race.
RUN_PIPELINE_MIN_POLL = 6


def build_run_pipeline(b: StageBuild) -> Any:
    """The operator of a run pipeline stage: trigger the child DAG and wait for it."""
    from gennaker.operators.run_pipeline import RunPipelineOperator

    s = b.stage
    assert isinstance(s, RunPipelineStage)
    return RunPipelineOperator(
        trigger_dag_id=s.pipeline,
        conf=dict(s.parameters),
        wait_for_completion=s.wait_for_completion,
        deferrable=s.wait_for_completion,
        poke_interval=max(RUN_PIPELINE_MIN_POLL, int(s.poll_interval.total_seconds())),
        allowed_states=["success"],
        failed_states=["failed"],
        **b.common,
    )
