"""Stage -> Airflow operator, one builder per stage type.

A stage type without a builder here is refused with an error at the stage's
``type``: the factory never makes a placeholder task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gennaker.spec.errors import SpecError
from gennaker.spec.loader import LoadedSpec
from gennaker.spec.models import (
    CheckPreconditionsStage,
    ManualJudgmentStage,
    RunPipelineStage,
    StageBase,
    WaitStage,
)


@dataclass
class StageBuild:
    """What the DAG builder knows when it turns one stage into a task."""

    stage: StageBase
    common: dict[str, Any]  # kwargs every stage operator takes (task_id, gate settings, ...)


def _wait(b: StageBuild) -> Any:
    from gennaker.operators.wait import WaitStageOperator

    assert isinstance(b.stage, WaitStage)
    return WaitStageOperator(duration=b.stage.duration, **b.common)


def _judgment(b: StageBuild) -> Any:
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


def _preconditions(b: StageBuild) -> Any:
    from gennaker.operators.preconditions import CheckPreconditionsOperator

    s = b.stage
    assert isinstance(s, CheckPreconditionsStage)
    return CheckPreconditionsOperator(
        preconditions=[p.model_dump() for p in s.preconditions],
        **b.common,
    )


def _run_pipeline(b: StageBuild) -> Any:
    from gennaker.operators.run_pipeline import RunPipelineOperator

    s = b.stage
    assert isinstance(s, RunPipelineStage)
    return RunPipelineOperator(
        trigger_dag_id=s.pipeline,
        conf=dict(s.parameters),
        wait_for_completion=s.wait_for_completion,
        deferrable=s.wait_for_completion,
        poke_interval=max(1, int(s.poll_interval.total_seconds())),
        allowed_states=["success"],
        failed_states=["failed"],
        **b.common,
    )


BUILDERS: dict[str, Callable[[StageBuild], Any]] = {
    "wait": _wait,
    "manualJudgment": _judgment,
    "checkPreconditions": _preconditions,
    "runPipeline": _run_pipeline,
}

# Stage types the language has but this version cannot run yet, and why.
NOT_YET = {
    "bake": "it needs the cloud providers (the local provider and bake/deploy stages come next)",
    "findImage": "it needs the cloud providers (the local provider comes next)",
    "deploy": "it needs the cloud providers (the local provider and bake/deploy stages come next)",
    "promote": "it needs the cloud providers (the local provider and bake/deploy stages come next)",
    "rollback": "it needs the cloud providers (the local provider comes next)",
    "canary": "it needs the canary judge and a cloud provider",
    "enableServerGroup": "it needs the cloud providers (the local provider comes next)",
    "disableServerGroup": "it needs the cloud providers (the local provider comes next)",
    "resizeServerGroup": "it needs the cloud providers (the local provider comes next)",
    "destroyServerGroup": "it needs the cloud providers (the local provider comes next)",
    "webhook": "its operator is not built yet",
    "jenkins": "the Jenkins integration is not built yet",
}


def check_supported(spec: LoadedSpec) -> list[SpecError]:
    """What in a valid spec this version cannot run yet, each at its position."""
    problems = []
    for i, stage in enumerate(spec.pipeline.stages):
        kind = stage.type
        if kind not in BUILDERS:
            why = NOT_YET.get(kind, "it is unknown to this version")
            loc = ("stages", i, "type")
            problems.append(
                SpecError(
                    f"stage {stage.id!r}: gennaker cannot run {kind!r} stages yet: {why}",
                    spec.positions.find(loc),
                    loc,
                )
            )
    for i, trig in enumerate(spec.pipeline.triggers):
        if trig.type == "jenkins":
            loc = ("triggers", i, "type")
            problems.append(
                SpecError(
                    "gennaker cannot run jenkins triggers yet: the Jenkins integration is not built; "
                    "meanwhile let the Jenkins job call Airflow's REST API to trigger this pipeline",
                    spec.positions.find(loc),
                    loc,
                )
            )
    return problems


def build_operator(b: StageBuild) -> Any:
    """The operator for one stage (its type was checked by :func:`check_supported`)."""
    return BUILDERS[b.stage.type](b)  # type: ignore[attr-defined]
