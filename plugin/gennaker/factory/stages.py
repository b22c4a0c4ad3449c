"""Stage -> Airflow operator, one builder per stage type.

A stage type without a builder here is refused with an error at the stage's
``type``: the factory never makes a placeholder task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gennaker.errors import SpecError
from gennaker.spec.loader import LoadedSpec
from gennaker.spec.models import (
    BakeStage,
    CanaryStage,
    CheckPreconditionsStage,
    CloudStage,
    ClusterRef,
    DeployStage,
    DestroyServerGroupStage,
    DisableServerGroupStage,
    EnableServerGroupStage,
    FindImageStage,
    ManualJudgmentStage,
    Pipeline,
    PromoteStage,
    ResizeServerGroupStage,
    RollbackStage,
    RunPipelineStage,
    ServerGroupStage,
    StageBase,
    UpsertLoadBalancerStage,
    WaitStage,
)
from gennaker.spec.semantics import nearest


@dataclass
class StageBuild:
    """What the DAG builder knows when it turns one stage into a task."""

    stage: StageBase
    common: dict[str, Any]  # kwargs every stage operator takes (task_id, gate settings, ...)
    pipeline: Pipeline | None = None  # the stage's pipeline (cluster stages default to its application)
    spec_path: Path | None = None  # the spec file (a canary's configFile is relative to it)


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


# Airflow 3.3 fails a deferred task whose trigger fires within ~5 s of the deferral (the scheduler has not yet
# read the executor's report of the deferring try: "state mismatch"). Airflow's own DagStateTrigger checks the
# child at once and then every poll interval, so an interval of at least 6 s keeps a quick child out of the race.
RUN_PIPELINE_MIN_POLL = 6


def _run_pipeline(b: StageBuild) -> Any:
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


def _account(s: CloudStage) -> dict[str, Any]:
    return {"account": s.account, "region": s.region, "cloud": s.provider}


def _cluster_of(b: StageBuild, s: StageBase, ref: ClusterRef) -> dict[str, Any]:
    application = ref.application or (b.pipeline.application if b.pipeline is not None else None)
    if not application:
        raise ValueError(f"stage {s.id!r}: no application for its cluster (give cluster.application)")
    return {"application": application, "stack": ref.stack, "detail": ref.detail}


def _cluster(b: StageBuild, s: ServerGroupStage | RollbackStage) -> dict[str, Any]:
    return {**_account(s), **_cluster_of(b, s, s.cluster), "target": s.target}


def _nearest(b: StageBuild, types: tuple[str, ...]) -> str | None:
    """The closest stage of one of ``types`` before this one (the semantic checks made it unique)."""
    p = b.pipeline
    if p is None:
        return None
    found = nearest(p.parents(), b.stage.id, lambda s: p.stage(s).type in types)
    return found[0] if found else None


def _seconds(value: Any) -> float:
    return float(value.total_seconds()) if value is not None else 0.0


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


def _bake(b: StageBuild) -> Any:
    from gennaker.operators.bake import BakeOperator

    s = b.stage
    assert isinstance(s, BakeStage)
    return BakeOperator(
        package=s.package,
        application=b.pipeline.application if b.pipeline is not None else None,
        version=s.version,
        artifact=s.artifact,
        base_image=s.base_image,
        base_label=s.base_label,
        regions=list(s.regions),
        rebake=s.rebake,
        start_command=s.start_command,
        tags=dict(s.tags),
        artifact_allow=list(b.pipeline.artifacts.allow) if b.pipeline is not None else [],
        **_account(s),
        **b.common,
    )


def _strategy(s: DeployStage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in type(s.strategy).model_fields:
        value = getattr(s.strategy, key)
        out[key] = value.total_seconds() if hasattr(value, "total_seconds") else value
    return out


def deploy_cluster(b: StageBuild, s: DeployStage | PromoteStage) -> dict[str, Any]:
    """The cluster of a deploy, or of a promote (its own, else the nearest deploy's before it)."""
    if isinstance(s, DeployStage):
        return _cluster_of(b, s, s.cluster)
    if s.cluster is not None:
        return _cluster_of(b, s, s.cluster)
    source = _nearest(b, ("deploy",))
    if source is None or b.pipeline is None:
        raise ValueError(f"stage {s.id!r}: no cluster to promote in (give cluster, or put a deploy before it)")
    deploy = b.pipeline.stage(source)
    assert isinstance(deploy, DeployStage)
    return _cluster_of(b, deploy, deploy.cluster)


def _deploy(b: StageBuild) -> Any:
    from gennaker.operators.deploy import DeployOperator

    s = b.stage
    assert isinstance(s, DeployStage)
    image_stage = s.image.stage if s.image is not None else _nearest(b, ("bake", "findImage"))
    health = s.health_check.model_dump(mode="json", by_alias=True, exclude={"wait_timeout"})
    return DeployOperator(
        capacity=s.capacity.model_dump(),
        image_stage=image_stage,
        image_name=s.image.name if s.image is not None else None,
        load_balancers=list(s.load_balancers),
        firewalls=list(s.firewalls),
        health_check=health,
        health_timeout=_seconds(s.health_check.wait_timeout) or None,
        traffic=s.traffic,
        strategy=_strategy(s),
        environment=dict(s.environment),
        tags=dict(s.tags),
        rollback_action=s.rollback.action,
        **deploy_cluster(b, s),
        **_account(s),
        **b.common,
    )


def _promote(b: StageBuild) -> Any:
    from gennaker.operators.deploy import PromoteOperator

    s = b.stage
    assert isinstance(s, PromoteStage)
    source = None if s.server_group else _nearest(b, ("deploy",))
    # What the promote does not say, it takes from the strategy of the deploy it promotes (redblack's options).
    inherited: dict[str, Any] = {}
    if source is not None and b.pipeline is not None:
        deploy = b.pipeline.stage(source)
        if isinstance(deploy, DeployStage):
            inherited = {k: v for k, v in _strategy(deploy).items() if k not in s.model_fields_set}

    def pick(name: str, own: Any) -> Any:
        return inherited.get(name, own)

    return PromoteOperator(
        server_group=s.server_group,
        source_stage=source,
        max_remaining=pick("max_remaining", s.max_remaining),
        delay_before_disable=pick("delay_before_disable", _seconds(s.delay_before_disable)),
        scale_down_old=pick("scale_down_old", s.scale_down_old),
        delay_before_scale_down=pick("delay_before_scale_down", _seconds(s.delay_before_scale_down)),
        rollback_action=s.rollback.action,
        **deploy_cluster(b, s),
        **_account(s),
        **b.common,
    )


def _upsert_load_balancer(b: StageBuild) -> Any:
    from gennaker.cloud.naming import cluster_name
    from gennaker.operators.load_balancer import UpsertLoadBalancerOperator

    s = b.stage
    assert isinstance(s, UpsertLoadBalancerStage)
    where = _cluster_of(b, s, s.cluster)
    cluster = cluster_name(where["application"], where["stack"], where["detail"])
    return UpsertLoadBalancerOperator(
        application=where["application"],
        cluster=cluster,
        name=s.load_balancer,
        listeners=[x.model_dump() for x in s.listeners],
        health_check_path=s.health_check_path,
        **_account(s),
        **b.common,
    )


class CanaryConfigProblem(ValueError):
    """A canary stage's metrics cannot be run as written; ``loc`` is the field at fault, under the stage."""

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.loc = loc


def canary_config(s: CanaryStage, spec_path: Path | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The Kayenta canary config a canary stage judges with, and each metric's query.

    From the stage's ``metrics``, or its ``configFile`` read as is (relative to the spec
    file). Raises :class:`CanaryConfigProblem` for a file that cannot be read or judged, and
    for a query the metric source can never answer (the local one has a fixed set of series).
    """
    from gennaker.canary.sources import kayenta_config, queries_from_kayenta
    from gennaker.cloud import registry

    source = s.metric_source.type
    try:  # the spec's validation made sure an installed source has this type; it may still fail to import
        known: tuple[str, ...] | None = registry.metric_source_class(source).known_queries
    except registry.Unavailable as error:
        raise CanaryConfigProblem(error.message, ("metricSource", "type")) from None
    if s.config_file is None:
        metrics = [m.model_dump(mode="json", by_alias=True) for m in s.metrics]
        config = kayenta_config(metrics, group_weights=s.group_weights, name=s.id, source=source)
        queries = {m.name: m.query for m in s.metrics}
        for j, m in enumerate(s.metrics):
            if known is not None and m.query not in known:
                raise CanaryConfigProblem(
                    f"the {source} metric source has no series {m.query!r}; it has {', '.join(known)}",
                    ("metrics", j, "query"),
                )
        return config, queries
    config = _read_config_file(s.config_file, spec_path)
    try:
        from gennaker.canary import CanaryConfig

        CanaryConfig.from_kayenta(config)
        queries = queries_from_kayenta(config)
    except ValueError as error:  # CanaryJudgeError is one
        raise CanaryConfigProblem(f"{s.config_file}: {error}", ("configFile",)) from None
    if s.group_weights:
        config.setdefault("classifier", {})["groupWeights"] = dict(s.group_weights)
    if known is not None:
        unknown = sorted(n for n, q in queries.items() if q not in known)
        if unknown:
            raise CanaryConfigProblem(
                f"{s.config_file}: metric(s) {', '.join(map(repr, unknown))} query series the {source} metric source "
                f"does not have (it has {', '.join(known)}); is metricSource prometheus?",
                ("configFile",),
            )
    return config, queries


def _read_config_file(name: str, spec_path: Path | None) -> dict[str, Any]:
    import json

    path = Path(name).expanduser()
    if not path.is_absolute() and spec_path is not None:
        path = spec_path.parent / path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CanaryConfigProblem(f"no canary config file {name!r} (looked at {path})", ("configFile",)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CanaryConfigProblem(f"cannot read canary config file {name!r}: {error}", ("configFile",)) from None
    except ValueError as error:
        raise CanaryConfigProblem(f"{name} is not JSON: {error}", ("configFile",)) from None
    if not isinstance(data, dict):
        raise CanaryConfigProblem(f"{name} must hold a Kayenta canary config (a JSON object)", ("configFile",))
    return data


def check_canaries(spec: LoadedSpec) -> list[SpecError]:
    """What in a valid spec's canary stages cannot run: a config file, a query of the wrong source."""
    problems = []
    for i, stage in enumerate(spec.pipeline.stages):
        if not isinstance(stage, CanaryStage):
            continue
        try:
            canary_config(stage, spec.path)
        except CanaryConfigProblem as problem:
            loc = ("stages", i, *problem.loc)
            problems.append(SpecError(f"stage {stage.id!r}: {problem}", spec.positions.find(loc), loc))
    return problems


def canary_cluster(b: StageBuild, s: CanaryStage) -> dict[str, Any]:
    """The live cluster of a canary: its own ``cluster``, else the nearest deploy's before it."""
    if s.cluster is not None:
        return _cluster_of(b, s, s.cluster)
    source = _nearest(b, ("deploy",))
    if source is not None and b.pipeline is not None:
        deploy = b.pipeline.stage(source)
        if isinstance(deploy, DeployStage):
            return _cluster_of(b, deploy, deploy.cluster)
    return _cluster_of(b, s, ClusterRef())  # existing baseline and canary given: the cluster only names things


def _canary(b: StageBuild) -> Any:
    from gennaker.operators.canary import CanaryOperator

    s = b.stage
    assert isinstance(s, CanaryStage)
    try:
        config, queries = canary_config(s, b.spec_path)
    except CanaryConfigProblem:
        config, queries = {}, {}  # check_canaries reports it, at its position: this DAG is not built
    lookback = None
    if s.lookback.type == "sliding":
        lookback = _seconds(s.lookback.duration or s.interval)
    return CanaryOperator(
        canary_config=config,
        queries=queries,
        source_stage=None if s.baseline else _nearest(b, ("deploy",)),
        baseline=s.baseline,
        canary=s.canary,
        capacity=s.capacity,
        traffic_percent=s.traffic_percent,
        lifetime=_seconds(s.lifetime),
        interval=_seconds(s.interval),
        warmup=_seconds(s.warmup),
        lookback=lookback,
        baseline_offset=_seconds(s.baseline_offset),
        thresholds={"pass": s.thresholds.pass_, "marginal": s.thresholds.marginal},
        marginal=s.marginal,
        metric_source=s.metric_source.model_dump(mode="json", by_alias=True),
        **canary_cluster(b, s),
        **_account(s),
        **b.common,
    )


def needs_canary_cleanup(stage: StageBase) -> bool:
    """A canary that deploys its own baseline and canary gets a cleanup teardown task."""
    return isinstance(stage, CanaryStage) and stage.baseline is None


def canary_cleanup_task(stage: StageBase, p: Pipeline, tasks: dict[str, Any], dag: Any) -> Any:
    """``<id>.cleanup``: the teardown after a canary that destroys whatever it left behind (see operators/canary)."""
    from airflow.sdk import TriggerRule

    from gennaker.operators.canary import CanaryCleanupOperator, role_clusters

    assert isinstance(stage, CanaryStage)
    where = canary_cluster(StageBuild(stage, {}, pipeline=p), stage)
    task = CanaryCleanupOperator(
        task_id=f"{stage.id}.cleanup",
        task_display_name=f"{stage.display_name}: clean up",
        dag=dag,
        stage_id=f"{stage.id}.cleanup",
        canary_task_id=stage.id,
        application=where["application"],
        clusters=role_clusters(where["application"], where["stack"], where["detail"]),
        owner=p.owner,
        doc_md=(
            f"Destroys the baseline and canary server groups of `{stage.id}` if it left any behind (it failed, "
            f"timed out, or it or its run was marked failed while it waited), and their load balancer weights."
        ),
        **_account(stage),
    )
    # A teardown: it runs whatever the canary did, and Airflow runs it even when the run is marked failed.
    # It fails (and so fails the run) only when it had to clean up after a canary that was stopped.
    task.as_teardown(on_failure_fail_dagrun=True)
    task.trigger_rule = TriggerRule.ALL_DONE
    tasks[stage.id] >> task
    return task


BUILDERS: dict[str, Callable[[StageBuild], Any]] = {
    "wait": _wait,
    "manualJudgment": _judgment,
    "checkPreconditions": _preconditions,
    "runPipeline": _run_pipeline,
    "findImage": _find_image,
    "bake": _bake,
    "deploy": _deploy,
    "promote": _promote,
    "canary": _canary,
    "upsertLoadBalancer": _upsert_load_balancer,
    "enableServerGroup": _enable,
    "disableServerGroup": _disable,
    "resizeServerGroup": _resize,
    "destroyServerGroup": _destroy,
    "rollback": _rollback,
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
