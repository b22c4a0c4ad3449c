"""The canary's intervals and judgement: wait for each window, judge it with Kayenta's judge, decide.

One judgement per interval (Orca's windows, :func:`gennaker.strategies.canary.plan_windows`);
each wait is deferred to the triggerer; the first score at or below ``marginal`` stops the
canary, otherwise the last score decides; a marginal score may ask a person
(``marginal: judge``, Airflow's human-in-the-loop).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import TaskAwaitingInput

from gennaker.operators.canary_common import CONTINUE, STOP, CanaryFailed, score_words
from gennaker.operators.canary_report import CanaryReporting
from gennaker.operators.delivery import DONE
from gennaker.strategies.canary import Window, duration_words, plan_windows

if TYPE_CHECKING:
    from gennaker.canary.sources import Series


class CanaryJudging(CanaryReporting):
    """The phases from the first interval to the verdict (and a person's judgment of a marginal score)."""

    # ------------------------------------------------------------------ intervals

    def phase_begin(self, context: Any, result: dict[str, Any]) -> None:
        now = self.now()
        windows = plan_windows(
            now,
            lifetime=timedelta(seconds=self.lifetime),
            interval=timedelta(seconds=self.interval),
            warmup=timedelta(seconds=self.warmup),
            lookback=timedelta(seconds=self.lookback) if self.lookback else None,
            baseline_offset=timedelta(seconds=self.baseline_offset),
        )
        result.update(startedAt=now.isoformat(), windows=[w.to_dict() for w in windows], next=0, scores=[])
        result["intervals"] = []
        lookback = f"a sliding {duration_words(self.lookback)} window" if self.lookback else "a growing window"
        self.log.info(
            "canary analysis starts: %d interval%s of %s (lifetime %s, warm-up %s, %s), metrics from %s; "
            "the first judgement at %s",
            len(windows),
            "" if len(windows) == 1 else "s",
            duration_words(min(self.interval, self.lifetime)),
            duration_words(self.lifetime),
            duration_words(self.warmup),
            lookback,
            result["source"],
            f"{windows[0].due:%H:%M:%S} UTC",
        )
        self.save_report(context, result, fresh=True)
        self.goto(result, "wait")

    def phase_wait(self, context: Any, result: dict[str, Any]) -> None:
        windows = result["windows"]
        i = int(result["next"])
        window = Window.from_dict(windows[i])
        moment = window.due + timedelta(seconds=float(result.get("settle") or 0.0))
        seconds = (moment - self.now()).total_seconds()
        self.goto(result, "judge")
        self.delay(context, result, seconds, f"until interval {i + 1}/{len(windows)} ends ({window.describe()} UTC)")

    def phase_judge(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.canary import CanaryJudgeError, MetricSetPair, interval_continues, judge_canary
        from gennaker.canary.sources import MetricSourceError

        windows = result["windows"]
        i = int(result["next"])
        n = len(windows)
        window = Window.from_dict(windows[i])
        region = result["region"]
        step = timedelta(seconds=float(result["sampleStep"]))
        baseline, canary = self.scope(result["baseline"], region), self.scope(result["canary"], region)
        pairs = []
        series: dict[str, dict[str, Any]] = {}
        source = self.make_source()
        try:
            for name, query in self.queries.items():
                control = source.fetch(query, baseline, window.control_start, window.control_end, step)
                experiment = source.fetch(query, canary, window.experiment_start, window.experiment_end, step)
                pairs.append(MetricSetPair(name, _floats(control), _floats(experiment)))
                series[name] = {"control": _chart(control), "experiment": _chart(experiment)}
        except MetricSourceError as error:
            raise CanaryFailed(f"interval {i + 1}/{n}: {error}") from error
        finally:
            source.close()
        try:
            judged = judge_canary(self.canary_config, self.score_thresholds(), pairs)
        except CanaryJudgeError as error:
            raise CanaryFailed(f"interval {i + 1}/{n}: the judge refused: {error}") from error
        labels = {r.name: r.label.value for r in judged.results}
        self.log.info(
            "interval %d/%d: score %s (pass %s, marginal %s): %s",
            i + 1,
            n,
            score_words(judged.score),
            score_words(self.thresholds["pass"]),
            score_words(self.thresholds["marginal"]),
            ", ".join(f"{name} {label}" for name, label in labels.items()),
        )
        for r in judged.results:
            if r.label.value != "Pass":
                self.log.info(
                    "  %s %s: baseline mean %s (%d points), canary mean %s (%d points)%s",
                    r.name,
                    r.label.value,
                    score_words(r.control_stats.mean),
                    r.control_stats.count,
                    score_words(r.experiment_stats.mean),
                    r.experiment_stats.count,
                    f"; {r.reason}" if r.reason else "",
                )
        if judged.reason:
            self.log.info("  %s", judged.reason)
        warnings = list(judged.warnings)
        few = [f"{r.name} ({r.control_stats.count})" for r in judged.results if r.control_stats.count < 50]
        if few:
            self.log.warning(
                "fewer than 50 baseline points for %s: the score is less certain (a longer interval or a smaller "
                "metricSource.step gives more)",
                ", ".join(few),
            )
        if all(r.label.value in ("Nodata", "NodataFailMetric") for r in judged.results):
            warnings.append("no data for baseline or canary: do they get traffic?")
            self.log.warning("no metric had data for both baseline and canary: do they get any traffic?")
        result["scores"].append(judged.score)
        result["intervals"].append(
            {
                "index": i + 1,
                "score": judged.score,
                "classification": judged.classification.value,
                "metrics": labels,
                "window": window.describe(),
            }
        )
        last = judged.to_dict()
        last["series"] = series
        self.save_report(context, result, last=last, warnings=warnings)
        if not interval_continues(judged.score, self.score_thresholds()):
            if i + 1 < n:
                self.log.warning(
                    "stopping the canary after interval %d of %d: score %s is not above marginal %s",
                    i + 1,
                    n,
                    score_words(judged.score),
                    score_words(self.thresholds["marginal"]),
                )
            result["stoppedAt"] = i + 1
            self.goto(result, "cleanup")
        elif i + 1 < n:
            result["next"] = i + 1
            self.goto(result, "wait")
        else:
            self.goto(result, "cleanup")

    def phase_verdict(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.canary import aggregate_interval_scores

        verdict = aggregate_interval_scores(result["scores"], self.score_thresholds())
        final = verdict.final_score
        if verdict.passed:
            label = "Pass"
        elif final > float(self.thresholds["marginal"]):
            label = "Marginal"  # above marginal, below pass
        else:
            label = "Fail"
        result.update(verdict=label, passed=verdict.passed, score=final, message=verdict.message)
        self.log.info("canary %s: %s", {"Pass": "passed", "Fail": "failed"}.get(label, "marginal"), verdict.message)
        if label == "Marginal" and self.marginal_action == "judge":
            self.save_report(context, result, status="marginal")
            self.goto(result, "ask")
            return
        self.save_report(context, result, status="passed" if verdict.passed else "failed")
        if not verdict.passed:
            context["ti"].xcom_push(key="return_value", value=self.outputs(result))
            word = "failed" if label == "Fail" else "marginal"
            raise CanaryFailed(f"canary {word}: {verdict.message} Report: {result.get('report')}")
        self.goto(result, DONE)

    def phase_ask(self, context: Any, result: dict[str, Any]) -> None:
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        labels = (result.get("intervals") or [{}])[-1].get("metrics") or {}
        body = (
            f"The canary of {result.get('cluster')} scored **{score_words(result['score'])}**: above marginal "
            f"{score_words(self.thresholds['marginal'])} but below pass {score_words(self.thresholds['pass'])}.\n\n"
            + "\n".join(f"- {name}: {label}" for name, label in labels.items())
            + f"\n\nReport: {result.get('report')}\n\n*continue* lets the pipeline go on (e.g. promote); "
            f"*stop* fails the canary."
        )
        upsert_hitl_detail(
            ti_id=context["task_instance"].id,
            options=[CONTINUE, STOP],
            subject=f"Canary {self.stage_id}: marginal score {score_words(result['score'])}, continue?",
            body=body,
            defaults=None,
            multiple=False,
            params={},
        )
        self.log.info("the score is marginal: asking a person to continue or stop (marginal: judge)")
        result["waiting"] = "judgment"
        self._keep(context, {"result": result})
        raise TaskAwaitingInput(method_name="resume", kwargs={"result": result})

    def on_event(self, context: Any, result: dict[str, Any], waiting: str | None, event: dict[str, Any]) -> None:
        if waiting != "judgment":
            super().on_event(context, result, waiting, event)
            return
        chosen = list(event.get("chosen_options") or [])
        by = event.get("responded_by_user") or {}
        result["judgment"] = chosen[0] if chosen else None
        result["judgedBy"] = (by.get("name") or by.get("id")) if isinstance(by, Mapping) else None
        if event.get("error"):
            result["judgment"] = None
            result["judgmentError"] = str(event.get("error"))
        self.goto(result, "judged")

    def phase_judged(self, context: Any, result: dict[str, Any]) -> None:
        who = result.get("judgedBy") or "nobody"
        if result.get("judgment") == CONTINUE:
            self.log.info("%s chose to continue despite the marginal score %s", who, score_words(result["score"]))
            result["passed"] = True
            self.save_report(context, result, status="passed", message=f"marginal; {who} chose to continue")
            self.goto(result, DONE)
            return
        why = result.get("judgmentError") or f"{who} chose {result.get('judgment')!r}"
        result["passed"] = False
        self.save_report(context, result, status="failed", message=f"marginal; {why}")
        context["ti"].xcom_push(key="return_value", value=self.outputs(result))
        raise CanaryFailed(f"canary marginal (score {score_words(result['score'])}) and stopped: {why}")


def _floats(series: Series) -> list[float]:
    return [math.nan if v is None else float(v) for v in series.values]


def _chart(series: Series) -> dict[str, Any]:
    from gennaker.canary.report import thin

    values, every = thin(series.values)
    return {"start": series.start.isoformat(), "step": series.step * every, "values": values}


__all__ = ["CanaryJudging"]
