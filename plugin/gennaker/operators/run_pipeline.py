"""The ``runPipeline`` stage: start another pipeline and wait for it in the triggerer."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

from gennaker.operators.gate import StageMixin


class RunPipelineOperator(StageMixin, TriggerDagRunOperator):
    """Trigger ``pipeline`` (a dag_id) with ``parameters`` as its conf; wait deferred for its result."""

    ui_color = "#e6f4ea"
    gennaker_stage_type = "runPipeline"

    # Airflow's operator metaclass applies default_args only to an __init__ the class defines itself.
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
