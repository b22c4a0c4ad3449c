"""The ``wait`` stage: sleep in the triggerer, holding no worker slot."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

from gennaker.operators.gate import StageMixin, utc_in


class WaitStageOperator(StageMixin, BaseOperator):
    """Wait ``duration``, deferred to the triggerer."""

    ui_color = "#e8f0fe"
    gennaker_stage_type = "wait"

    def __init__(self, *, duration: timedelta, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.duration = duration

    def run_stage(self, context: Any) -> Any:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        if self.duration.total_seconds() <= 0:
            return {"waited": 0}
        until = utc_in(self.duration)
        self.log.info("waiting %s, until %s (no worker slot held)", self.duration, until.isoformat())
        # The trigger ends the task itself: resuming on a worker after a short wait races the executor's
        # report of the deferring run, and Airflow 3.3 then fails the task ("state mismatch").
        context["ti"].xcom_push(key="return_value", value={"waited": self.duration.total_seconds()})
        self.defer(trigger=DateTimeTrigger(moment=until, end_from_trigger=True), method_name="waited")

    def waited(self, context: Any, event: Any = None) -> dict[str, Any]:
        self.log.info("waited %s", self.duration)
        return {"waited": self.duration.total_seconds()}
