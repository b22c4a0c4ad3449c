"""The ``checkPreconditions`` stage: expressions that must hold."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from gennaker.errors import GennakerError
from gennaker.operators.expressions import evaluate, is_true
from gennaker.operators.gate import StageMixin


class PreconditionFailed(AirflowFailException, GennakerError):
    """A precondition of a checkPreconditions stage is false."""


class CheckPreconditionsOperator(StageMixin, BaseOperator):
    """Evaluate every precondition; fail (naming each false one) unless all hold."""

    ui_color = "#fef7e0"
    gennaker_stage_type = "checkPreconditions"

    def __init__(self, *, preconditions: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preconditions = preconditions

    def run_stage(self, context: Any) -> dict[str, Any]:
        results = []
        failed = []
        for pre in self.preconditions:
            value = evaluate(self, pre["expression"], context)
            ok = is_true(value)
            results.append({"expression": pre["expression"], "value": str(value), "passed": ok})
            self.log.info("%s %s -> %r", "PASS" if ok else "FAIL", pre["expression"], value)
            if not ok:
                failed.append(pre.get("message") or f"precondition {pre['expression']!r} is false")
        if failed:
            raise PreconditionFailed("; ".join(failed))
        return {"results": results}
