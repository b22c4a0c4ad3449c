"""Publish a pipeline's outcome so that pipelines with a ``pipeline`` trigger on it start.

Added by the factory only to pipelines that another pipeline listens to. It runs
when every stage is done (whatever their states), works out the outcome the way
Spinnaker does (a failed stage fails the run; skipped, ignored or halted-branch
stages do not) and emits the Airflow asset event ``gennaker.pipeline.<dag_id>.<status>``
through an asset alias; the listeners are scheduled on those assets.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseOperator

PUBLISH_TASK_ID = "gennaker_pipeline_status"
_FAILED = {"failed", "upstream_failed"}


def status_asset(dag_id: str, status: str) -> Asset:
    """The asset a listener schedules on: the end of ``dag_id`` in ``status``."""
    name = f"gennaker.pipeline.{dag_id}.{status}"
    return Asset(name=name, uri=f"gennaker://pipeline/{dag_id}/{status}", group="gennaker")


def status_alias(dag_id: str) -> AssetAlias:
    return AssetAlias(name=f"gennaker.pipeline.{dag_id}", group="gennaker")


class PublishPipelineStatusOperator(BaseOperator):
    """Emit ``succeeded`` or ``failed`` for this run of the pipeline."""

    ui_color = "#f1f3f4"

    def __init__(self, *, stage_task_ids: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_task_ids = list(stage_task_ids)

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        found = ti.get_task_states(dag_id=ti.dag_id, task_ids=self.stage_task_ids, run_ids=[ti.run_id])
        states = found.get(ti.run_id, {}) if isinstance(found, dict) else {}
        failed = sorted(t for t, s in states.items() if s in _FAILED)
        status = "failed" if failed else "succeeded"
        alias = status_alias(ti.dag_id)
        context["outlet_events"][alias].add(
            status_asset(ti.dag_id, status), extra={"run_id": ti.run_id, "failed_stages": failed}
        )
        self.log.info("pipeline %s %s%s", ti.dag_id, status, f" (failed: {', '.join(failed)})" if failed else "")
        return {"status": status, "failedStages": failed}
