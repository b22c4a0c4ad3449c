"""Stage -> Airflow operator, one builder per stage type.

A stage type without a builder here is refused with an error at the stage's
``type``: the factory never makes a placeholder task. The builders live by kind of
stage (``stages_flow``: no cloud; ``stages_cloud``; ``stages_canary``) and share
``stages_common``; this module is their registry and re-exports what the factory uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gennaker.errors import SpecError
from gennaker.factory.stages_canary import (
    CanaryConfigProblem,
    build_canary,
    canary_cleanup_task,
    canary_cluster,
    canary_config,
    check_canaries,
    needs_canary_cleanup,
)
from gennaker.factory.stages_cloud import (
    build_bake,
    build_deploy,
    build_destroy,
    build_disable,
    build_enable,
    build_find_image,
    build_promote,
    build_resize,
    build_rollback,
    build_upsert_load_balancer,
    deploy_cluster,
)
from gennaker.factory.stages_common import StageBuild
from gennaker.factory.stages_flow import (
    RUN_PIPELINE_MIN_POLL,
    build_judgment,
    build_preconditions,
    build_run_pipeline,
    build_wait,
)
from gennaker.spec.loader import LoadedSpec

__all__ = [
    "BUILDERS",
    "NOT_YET",
    "RUN_PIPELINE_MIN_POLL",
    "CanaryConfigProblem",
    "StageBuild",
    "build_operator",
    "canary_cleanup_task",
    "canary_cluster",
    "canary_config",
    "check_canaries",
    "check_supported",
    "deploy_cluster",
    "needs_canary_cleanup",
]


BUILDERS: dict[str, Callable[[StageBuild], Any]] = {
    "wait": build_wait,
    "manualJudgment": build_judgment,
    "checkPreconditions": build_preconditions,
    "runPipeline": build_run_pipeline,
    "findImage": build_find_image,
    "bake": build_bake,
    "deploy": build_deploy,
    "promote": build_promote,
    "canary": build_canary,
    "upsertLoadBalancer": build_upsert_load_balancer,
    "enableServerGroup": build_enable,
    "disableServerGroup": build_disable,
    "resizeServerGroup": build_resize,
    "destroyServerGroup": build_destroy,
    "rollback": build_rollback,
}

# Stage types the language has but this version cannot run yet, and why.
NOT_YET = {
    "webhook": "its operator is not built yet",
    "jenkins": "the Jenkins integration is not built yet",
}


def check_supported(spec: LoadedSpec) -> list[SpecError]:
    """What in a valid spec this version cannot run yet, each at its position."""
    problems = check_canaries(spec)
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
