"""The canary's report and its link: what the report page (:mod:`gennaker.canary.report`) shows, kept in XCom.

:class:`CanaryReportLink` is the task's "Canary report" button; :class:`CanaryReporting`
writes the report as the stage goes and puts its outputs together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperatorLink

from gennaker.operators.canary_common import LINK_NAME, ROLES, CanaryStage
from gennaker.strategies.canary import duration_words


class CanaryReportLink(BaseOperatorLink):
    """The task's "Canary report" button in the Airflow UI: the report page of gennaker's app."""

    name = LINK_NAME

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from gennaker.canary.report import report_url

        return report_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, getattr(ti_key, "map_index", -1))


class CanaryReporting(CanaryStage):
    """The canary stage's report (XCom) and outputs."""

    def stage_output(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return self.outputs(result)

    def outputs(self, result: Mapping[str, Any]) -> dict[str, Any]:
        last = (result.get("intervals") or [{}])[-1]
        out = {
            "score": result.get("score"),
            "verdict": result.get("verdict"),
            "passed": bool(result.get("passed")),
            "message": result.get("message"),
            "metrics": dict(last.get("metrics") or {}),
            "scores": list(result.get("scores") or []),
            "intervals": len(result.get("windows") or []),
            "stoppedAt": result.get("stoppedAt"),
            "baseline": result.get("baseline"),
            "canary": result.get("canary"),
            "baselineImage": result.get("baselineImage"),
            "canaryImage": result.get("canaryImage"),
            "cluster": result.get("cluster"),
            "report": result.get("report"),
        }
        if "judgment" in result:
            out.update(judgment=result.get("judgment"), judgedBy=result.get("judgedBy"))
        return out

    def save_report(
        self,
        context: Any,
        result: Mapping[str, Any],
        *,
        fresh: bool = False,
        status: str | None = None,
        last: Mapping[str, Any] | None = None,
        warnings: Sequence[str] = (),
        error: str | None = None,
        message: str | None = None,
    ) -> None:
        """Update the report (XCom :data:`gennaker.canary.report.REPORT_KEY`) with what ``result`` says now."""
        from gennaker.canary.report import REPORT_KEY

        ti = context["ti"]
        report: dict[str, Any] = {}
        if not fresh:
            found = ti.xcom_pull(task_ids=self.task_id, key=REPORT_KEY)
            if isinstance(found, Mapping):
                report = dict(found)
        region = result.get("region", "")
        report.update(
            stage=self.stage_id,
            dagId=ti.dag_id,
            runId=ti.run_id,
            taskId=ti.task_id,
            status=status or report.get("status") or "running",
            verdict=result.get("verdict"),
            score=result.get("score"),
            message=message or result.get("message"),
            thresholds=dict(self.thresholds),
            live=result.get("live"),
            trafficPercent=self.traffic_percent if result.get("mode") == "deploy" else None,
            source=result.get("source"),
            startedAt=result.get("startedAt"),
            planned=len(result.get("windows") or []),
            plan={
                "lifetime": duration_words(self.lifetime),
                "interval": duration_words(min(self.interval, self.lifetime)),
                "warmup": duration_words(self.warmup),
                "lookback": f"sliding {duration_words(self.lookback)}" if self.lookback else "growing",
            },
            queries=dict(self.queries),
            intervals=list(result.get("intervals") or []),
            updatedAt=self.now().isoformat(),
        )
        if fresh or "baseline" not in report:
            for role in ROLES:
                if result.get(role):
                    report[role] = {
                        "serverGroup": result.get(role),
                        "image": self._image_words(str(result.get(f"{role}Image")), region),
                        "note": "as live " + str(result["live"]) if role == "baseline" and result.get("live") else "",
                    }
        if last is not None:
            report["last"] = dict(last)
        if warnings:
            report["warnings"] = sorted(set(report.get("warnings") or []) | set(warnings))
        if error:
            report["error"] = error
        if "judgment" in result:
            report["judgment"] = {"choice": result.get("judgment"), "by": result.get("judgedBy")}
        ti.xcom_push(key=REPORT_KEY, value=report)


__all__ = ["CanaryReportLink", "CanaryReporting"]
