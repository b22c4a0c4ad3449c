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
    CloudStage,
    DestroyServerGroupStage,
    DisableServerGroupStage,
    EnableServerGroupStage,
    FindImageStage,
    ManualJudgmentStage,
    Pipeline,
    ResizeServerGroupStage,
    RollbackStage,
    RunPipelineStage,
    ServerGroupStage,
    StageBase,
    WaitStage,
)


@dataclass
class StageBuild:
    """What the DAG builder knows when it turns one stage into a task."""

    stage: StageBase
    common: dict[str, Any]  # kwargs every stage operator takes (task_id, gate settings, ...)
    pipeline: Pipeline | None = None  # the stage's pipeline (cluster stages default to its application)


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


def _account(s: CloudStage) -> dict[str, Any]:
    return {"account": s.account, "region": s.region, "cloud": s.provider}


def _cluster(b: StageBuild, s: ServerGroupStage | RollbackStage) -> dict[str, Any]:
    application = s.cluster.application or (b.pipeline.application if b.pipeline is not None else None)
    if not application:
        raise ValueError(f"stage {s.id!r}: no application for its cluster (give cluster.application)")
    return {
        **_account(s),
        "application": application,
        "stack": s.cluster.stack,
        "detail": s.cluster.detail,
        "target": s.target,
    }


def _enable(b: StageBuild) -> Any:
    from gennaker.operators.server_group import EnableServerGroupOperator

    s = b.stage
    assert isinstance(s, EnableServerGroupStage)
    return EnableServerGroupOperator(**_cluster(b, s), **b.common)


def _disable(b: StageBuild) -> Any:
    from gennaker.operators.server_group import DisableServerGroupOperator

    s = b.stage
    assert isinstance(s, DisableServerGroupStage)
    return DisableServerGroupOperator(**_cluster(b, s), **b.common)


def _resize(b: StageBuild) -> Any:
    from gennaker.operators.server_group import ResizeServerGroupOperator

    s = b.stage
    assert isinstance(s, ResizeServerGroupStage)
    return ResizeServerGroupOperator(
        capacity=s.capacity.model_dump() if s.capacity is not None else None,
        scale_by=s.scale_by,
        scale_percent=s.scale_percent,
        **_cluster(b, s),
        **b.common,
    )


def _destroy(b: StageBuild) -> Any:
    from gennaker.operators.server_group import DestroyServerGroupOperator

    s = b.stage
    assert isinstance(s, DestroyServerGroupStage)
    return DestroyServerGroupOperator(**_cluster(b, s), **b.common)


def _rollback(b: StageBuild) -> Any:
    from gennaker.operators.server_group import RollbackOperator

    s = b.stage
    assert isinstance(s, RollbackStage)
    return RollbackOperator(
        target_healthy_percentage=s.target_healthy_percentage,
        **_cluster(b, s),
        **b.common,
    )


def _find_image(b: StageBuild) -> Any:
    from gennaker.operators.server_group import FindImageOperator

    s = b.stage
    assert isinstance(s, FindImageStage)
    return FindImageOperator(
        package=s.package,
        select=s.select,
        tags=dict(s.tags),
        regions=list(s.regions),
        **_account(s),
        **b.common,
    )


BUILDERS: dict[str, Callable[[StageBuild], Any]] = {
    "wait": _wait,
    "manualJudgment": _judgment,
    "checkPreconditions": _preconditions,
    "runPipeline": _run_pipeline,
    "findImage": _find_image,
    "enableServerGroup": _enable,
    "disableServerGroup": _disable,
    "resizeServerGroup": _resize,
    "destroyServerGroup": _destroy,
    "rollback": _rollback,
}

# Stage types the language has but this version cannot run yet, and why.
NOT_YET = {
    "bake": "it needs the cloud providers (the local provider and bake/deploy stages come next)",
    "deploy": "it needs the cloud providers (the local provider and bake/deploy stages come next)",
    "promote": "it needs the cloud providers (the local provider and bake/deploy stages come next)",
    "canary": "it needs the canary judge and a cloud provider",
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
