"""The ``manualJudgment`` stage on Airflow's human-in-the-loop operator."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk.exceptions import AirflowFailException

from gennaker.errors import GennakerError
from gennaker.operators.gate import StageMixin


class JudgmentStopped(AirflowFailException, GennakerError):
    """The person chose an option that stops the pipeline."""


class ManualJudgmentOperator(StageMixin, HITLOperator):
    """Ask a person to choose an option; the choice is the output ``judgment``.

    Choosing one of ``fail_on`` fails the stage (then ``onFailure`` applies).
    The question waits in Airflow's "awaiting input" state, holding no worker slot.
    """

    ui_color = "#fce8e6"
    gennaker_stage_type = "manualJudgment"

    def __init__(self, *, fail_on: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_on = list(fail_on or [])

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        payload = super().execute_complete(context, event)
        chosen = list(payload["chosen_options"])
        by = payload.get("responded_by_user") or {}
        who = by.get("name") or by.get("id") or "the timeout default"
        self.log.info("judgment: %s (by %s)", ", ".join(chosen), who)
        result = {
            "judgment": chosen[0] if chosen else None,
            "chosenOptions": chosen,
            "respondedBy": by.get("id") if by else None,
            "input": payload.get("params_input") or {},
        }
        stops = [c for c in chosen if c in self.fail_on]
        if stops:
            context["ti"].xcom_push(key="return_value", value=result)
            raise JudgmentStopped(f"{who} chose {stops[0]!r}: stopping")
        return result
