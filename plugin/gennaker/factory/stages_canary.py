"""The canary stage: its Kayenta config (from metrics or a config file), its builder, its cleanup task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gennaker.errors import (
    CanaryConfigProblem,
    SpecError,
)
from gennaker.factory.stages_common import (
    StageBuild,
    account_of,
    cluster_of,
    nearest_upstream,
    seconds,
)
from gennaker.spec.loader import LoadedSpec
from gennaker.spec.models import (
    CanaryStage,
    ClusterRef,
    DeployStage,
    Pipeline,
    StageBase,
)


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
    except registry.MetricSourceUnavailable as error:
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
        return cluster_of(b, s, s.cluster)
    source = nearest_upstream(b, ("deploy",))
    if source is not None and b.pipeline is not None:
        deploy = b.pipeline.stage(source)
        if isinstance(deploy, DeployStage):
            return cluster_of(b, deploy, deploy.cluster)
    return cluster_of(b, s, ClusterRef())  # existing baseline and canary given: the cluster only names things


def build_canary(b: StageBuild) -> Any:
    """The operator of a canary stage."""
    from gennaker.operators.canary import CanaryOperator

    s = b.stage
    assert isinstance(s, CanaryStage)
    try:
        config, queries = canary_config(s, b.spec_path)
    except CanaryConfigProblem:
        config, queries = {}, {}  # check_canaries reports it, at its position: this DAG is not built
    lookback = None
    if s.lookback.type == "sliding":
        lookback = seconds(s.lookback.duration or s.interval)
    return CanaryOperator(
        canary_config=config,
        queries=queries,
        source_stage=None if s.baseline else nearest_upstream(b, ("deploy",)),
        baseline=s.baseline,
        canary=s.canary,
        capacity=s.capacity,
        traffic_percent=s.traffic_percent,
        lifetime=seconds(s.lifetime),
        interval=seconds(s.interval),
        warmup=seconds(s.warmup),
        lookback=lookback,
        baseline_offset=seconds(s.baseline_offset),
        thresholds={"pass": s.thresholds.pass_, "marginal": s.thresholds.marginal},
        marginal=s.marginal,
        metric_source=s.metric_source.model_dump(mode="json", by_alias=True),
        **canary_cluster(b, s),
        **account_of(s),
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
        **account_of(stage),
    )
    # A teardown: it runs whatever the canary did, and Airflow runs it even when the run is marked failed.
    # It fails (and so fails the run) only when it had to clean up after a canary that was stopped.
    task.as_teardown(on_failure_fail_dagrun=True)
    task.trigger_rule = TriggerRule.ALL_DONE
    tasks[stage.id] >> task
    return task
