"""Spec -> Airflow DAG. No network, no database, no cloud SDK, no clock: same specs, same DAG."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from gennaker.errors import SpecError, SpecErrors
from gennaker.factory.stages import (
    BUILDERS,
    StageBuild,
    build_operator,
    canary_cleanup_task,
    check_supported,
    needs_canary_cleanup,
)
from gennaker.spec.loader import LoadedSpec
from gennaker.spec.models import CronTrigger, Parameter, Pipeline, PipelineTrigger, whole_value_pattern
from gennaker.spec.semantics import ancestors

# A fixed start date keeps DAGs deterministic; catchup is off, so it never backfills.
START_DATE = datetime(2024, 1, 1, tzinfo=timezone.utc)


def build_params(parameters: Iterable[Parameter]) -> dict[str, Any]:
    """The DAG's params: each parameter an Airflow Param whose JSON Schema refuses values that do not fit."""
    from airflow.sdk import Param

    params: dict[str, Any] = {}
    for p in parameters:
        schema: dict[str, Any] = {}
        if isinstance(p.default, bool):
            schema["type"] = "boolean"
        elif isinstance(p.default, int):
            schema["type"] = "integer"
        elif isinstance(p.default, float):
            schema["type"] = "number"
        elif p.options is None:
            schema["type"] = "string"
            if p.required:
                schema["minLength"] = 1
        if p.options is not None:
            schema["enum"] = list(p.options)
        if p.pattern is not None:  # Airflow checks it (jsonschema, a search) when a run is triggered
            schema["pattern"] = whole_value_pattern(p.pattern)
        kwargs: dict[str, Any] = {"description": p.description, **schema}
        if p.default is not None:
            params[p.name] = Param(p.default, **kwargs)
        elif p.required:
            params[p.name] = Param(**kwargs)  # no default: the trigger form insists on a value
        else:
            kwargs["type"] = [kwargs.get("type", "string"), "null"] if "enum" not in kwargs else None
            if kwargs["type"] is None:
                del kwargs["type"]
                kwargs["enum"] = [*kwargs["enum"], None]  # optional: no choice is valid too
            params[p.name] = Param(None, **kwargs)
    return params


def build_schedule(pipeline: Pipeline, spec: LoadedSpec) -> Any:
    """Manual always; cron -> timetable; pipeline triggers -> assets; several -> OR."""
    from airflow.sdk import AssetAny
    from airflow.timetables.trigger import CronTriggerTimetable, MultipleCronTriggerTimetable

    from gennaker.operators.pipeline_status import status_asset

    crons = [t for t in pipeline.triggers if isinstance(t, CronTrigger)]
    upstream = [t for t in pipeline.triggers if isinstance(t, PipelineTrigger)]
    timetable: Any = None
    if len(crons) == 1:
        timetable = CronTriggerTimetable(crons[0].expression, timezone=crons[0].timezone)
    elif crons:
        zones = {c.timezone for c in crons}
        if len(zones) > 1:
            i = pipeline.triggers.index(crons[1])
            raise SpecError(
                "several cron triggers must share one timezone (Airflow's MultipleCronTriggerTimetable)",
                spec.positions.find(("triggers", i, "timezone")),
                ("triggers", i, "timezone"),
            )
        timetable = MultipleCronTriggerTimetable(*(c.expression for c in crons), timezone=crons[0].timezone)
    assets = [status_asset(t.pipeline, s) for t in upstream for s in t.status]
    if not assets:
        return timetable
    condition = assets[0] if len(assets) == 1 else AssetAny(*assets)
    if timetable is None:
        return condition
    from airflow.timetables.assets import AssetOrTimeSchedule

    return AssetOrTimeSchedule(timetable=timetable, assets=condition)  # type: ignore[arg-type]


@functools.cache
def _dag_config_defaults() -> dict[str, Any]:
    """Airflow's per-DAG defaults, read from its config once per parse instead of once per DAG."""
    from airflow.configuration import conf

    return {
        "max_active_tasks": conf.getint("core", "max_active_tasks_per_dag"),
        "max_consecutive_failed_dag_runs": conf.getint("core", "max_consecutive_failed_dag_runs_per_dag"),
    }


def doc_md(spec: LoadedSpec) -> str:
    p = spec.pipeline
    lines = [f"### {p.dag_id}", ""]
    if p.description:
        lines += [p.description, ""]
    lines += [f"Pipeline spec: `{spec.display}`", "", "```yaml", spec.source.rstrip("\n"), "```"]
    return "\n".join(lines)


def build_dag(spec: LoadedSpec, *, listened: bool = False) -> Any:
    """Build the DAG of one loaded spec. ``listened``: another pipeline triggers on this one.

    Raises :class:`SpecErrors` for what the factory cannot build (a stage type that
    cannot run yet), positioned like every other spec error.
    """
    from airflow.sdk import DAG, TriggerRule

    from gennaker.factory.notify import dag_callbacks, stage_callbacks
    from gennaker.operators.pipeline_status import (
        PUBLISH_TASK_ID,
        PublishPipelineStatusOperator,
        status_alias,
    )

    p = spec.pipeline
    errors: list[SpecError] = check_supported(spec)
    try:
        schedule = build_schedule(p, spec)
    except SpecError as exc:
        errors.append(exc)
        schedule = None
    tags = sorted({"gennaker", p.application, *p.tags})
    callbacks: dict[str, Any] = dict(dag_callbacks(p.notifications))
    dag = DAG(
        dag_id=p.dag_id,
        description=(p.description or f"gennaker pipeline {p.dag_id}")[:200],
        doc_md=doc_md(spec),
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=p.concurrency.limit,
        params=build_params(p.parameters),
        tags=tags,
        owner_links={},
        default_args={"owner": p.owner, "retries": 0},
        **_dag_config_defaults(),
        **callbacks,
    )
    parents = p.parents()
    task_ids = {s.id: s.id for s in p.stages}
    halting = [s.id for s in p.stages if s.on_failure == "halt"]
    tasks: dict[str, Any] = {}
    for stage in p.stages:
        up = ancestors(parents, stage.id)
        common: dict[str, Any] = {
            "task_id": stage.id,
            "dag": dag,
            "stage_id": stage.id,
            "when": stage.when,
            "on_failure": stage.on_failure,
            "execution_window": stage.execution_window.model_dump() if stage.execution_window else None,
            "stage_task_ids": task_ids,
            "halting_task_ids": [h for h in halting if h != stage.id and h not in up],
            "keep_waiting": p.concurrency.keep_waiting,
            "owner": p.owner,  # explicit: StageMixin skips the apply_defaults that would copy default_args
            "doc_md": f"**{stage.type}** stage `{stage.id}`",
            **stage_callbacks(stage.notifications, p.notifications, first=not parents[stage.id]),
        }
        if stage.name:
            common["task_display_name"] = stage.name
        if stage.timeout is not None:
            common["execution_timeout"] = stage.timeout
        if stage.retries:
            common["retries"] = stage.retries
            common["retry_delay"] = stage.retry_delay
        if parents[stage.id]:
            common["trigger_rule"] = "none_failed"
        if stage.type in BUILDERS:
            tasks[stage.id] = build_operator(StageBuild(stage, common, pipeline=p, spec_path=spec.path))
    if errors:
        raise SpecErrors(errors)
    for stage in p.stages:
        for parent in parents[stage.id]:
            tasks[parent] >> tasks[stage.id]
    extra = [_auto_rollback(stage, p, tasks, dag) for stage in p.stages if _rolls_back(stage)]
    extra += [canary_cleanup_task(stage, p, tasks, dag) for stage in p.stages if needs_canary_cleanup(stage)]
    if listened:
        leaves = [t for t in [*tasks.values(), *extra] if not t.downstream_list]
        publish = PublishPipelineStatusOperator(
            task_id=PUBLISH_TASK_ID,
            task_display_name="publish pipeline status",
            dag=dag,
            stage_task_ids=sorted(tasks),
            trigger_rule="all_done",
            outlets=[status_alias(p.dag_id)],
            doc_md="Publishes this run's outcome for the pipelines that trigger on it.",
        )
        # A teardown does not count towards the run's state: Airflow decides it from the stages, not from this
        # last task, which succeeds whatever they did. It has no setups and keeps its trigger rule all_done.
        publish.as_teardown()
        publish.trigger_rule = TriggerRule.ALL_DONE
        for leaf in leaves:
            leaf >> publish
    return dag


def _rolls_back(stage: Any) -> bool:
    return stage.type in ("deploy", "promote") and bool(stage.rollback.on_failure)


def _auto_rollback(stage: Any, p: Pipeline, tasks: dict[str, Any], dag: Any) -> Any:
    """The teardown of a deploy's or promote's ``rollback.onFailure``: after it and every stage after it."""
    from airflow.sdk import TriggerRule

    from gennaker.factory.stages import StageBuild, deploy_cluster
    from gennaker.operators.deploy import AutoRollbackOperator

    children: dict[str, list[str]] = {s.id: [] for s in p.stages}
    for child, parents in p.parents().items():
        for parent in parents:
            children[parent].append(child)
    watched = {stage.id}
    stack = [stage.id]
    while stack:
        for child in children[stack.pop()]:
            if child not in watched:
                watched.add(child)
                stack.append(child)
    task = AutoRollbackOperator(
        task_id=f"{stage.id}.rollback_on_failure",
        task_display_name=f"{stage.display_name}: roll back on failure",
        dag=dag,
        stage_id=f"{stage.id}.rollback_on_failure",
        source_stage=stage.id,
        watched_task_ids=sorted(watched),
        rollback_action=stage.rollback.action,
        account=stage.account,
        region=stage.region,
        cloud=stage.provider,
        owner=p.owner,
        doc_md=(
            f"Rolls `{stage.id}` back if it or a stage after it fails (rollback.onFailure): the previous "
            f"server group takes the traffic back and the new one is {stage.rollback.action}d."
        ),
        **deploy_cluster(StageBuild(stage, {}, pipeline=p), stage),
    )
    # A teardown: it runs whatever the stages did and does not decide the run's state.
    task.as_teardown()
    task.trigger_rule = TriggerRule.ALL_DONE
    for watched_id in sorted(watched):
        if not children[watched_id]:
            tasks[watched_id] >> task
    return task
