"""``canary``: the new version next to the live one on a share of live traffic, judged interval by interval.

Spinnaker's ``kayentaCanary`` stage with its deployment of baseline and canary:

=================  ====================================================================================
phase              what happens
=================  ====================================================================================
start              find what to compare. After a deploy (the nearest one before the stage): the
                   *baseline* is the live image (the image of the deploy's ``previousServerGroup``),
                   the *canary* the new one (the deploy's ``imageId``). With ``baseline`` and
                   ``canary`` named in the spec: those two existing server groups, and nothing is
                   deployed or re-routed
create             two new server groups of ``capacity`` instances each, in their own clusters
                   ``<app>-<stack>-baseline`` and ``<app>-<stack>-canary`` (Frigga's detail; with a
                   detail ``<detail>-baseline``), so they never count as the live cluster's newest or
                   previous. They copy the live group's health check, firewalls and environment (the
                   canary the new group's), name the live group's load balancers, start out of
                   service and are waited on until healthy
traffic            the load balancers give each ``trafficPercent`` of the requests (weights); the live
                   group keeps the rest. Both see the same traffic at the same time
wait / judge       one judgement per interval (Orca's windows: after the warm-up, every ``interval``
                   until ``lifetime``; the window grows from the start, or slides over ``lookback``;
                   the baseline's is shifted back by ``baselineOffset``). Each wait is deferred to
                   the triggerer (no worker slot); each judgement reads both series from the metric
                   source and runs Kayenta's judge. The first score at or below ``marginal`` stops
                   the canary; otherwise the last score decides
cleanup            destroy the baseline and canary groups, then clear their load balancer weights
verdict            a final score at or above ``pass`` passes; at or below ``marginal`` fails; in
                   between fails too, or with ``marginal: judge`` asks a person (Airflow's
                   human-in-the-loop, as ``manualJudgment``: continue or stop)
=================  ====================================================================================

**Always cleans up.** A failure in any phase (an unhealthy group, an unreachable metric
source, a timeout) destroys what the stage made before the task fails (:meth:`tear_down`);
a task killed while it runs does the same from ``on_kill``. A task that is deferred when
a person marks it (or its run) failed never runs again, so the factory adds a teardown
task after every deploying canary, ``<stage>.cleanup`` (:class:`CanaryCleanupOperator`):
Airflow runs teardowns whatever happened upstream, and does not skip them when a run is
marked failed (it keeps the run going until they end). It destroys every server group of
the baseline and canary clusters that the canary task of this run created (the groups'
``created_by``), and clears their weights.

**Retries.** A retried canary starts over: its idempotency keys carry the try number, so
it makes new baseline and canary groups instead of finding the ones the failed try destroyed.

Outputs (XCom ``return_value``, also when the canary fails; ``stages.<id>.score`` in
expressions): ``score`` (the final one), ``verdict`` (``Pass``, ``Marginal`` or ``Fail``),
``passed``, ``message``, ``metrics`` (metric -> classification of the last judgement),
``scores`` (one per interval judged), ``intervals`` (planned), ``stoppedAt``, ``baseline``,
``canary``, ``baselineImage``, ``canaryImage``, ``cluster``, ``report`` (its URL) and, after a
manual judgment, ``judgment`` and ``judgedBy``. The report (:mod:`gennaker.canary.report`) is
kept in XCom ``gennaker.canary.report`` and linked from the task ("Canary report").
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.exceptions import TaskAwaitingInput

from gennaker.operators.deploy import DONE, DeliveryOperator
from gennaker.operators.server_group import (
    PENDING_KEY,
    CloudStageFailed,
    CloudStageOperator,
    ServerGroupNotFound,
)

if TYPE_CHECKING:
    from gennaker.canary.sources import MetricSource, Scope, Series
    from gennaker.cloud.model import LoadBalancer, Operation, ServerGroup
    from gennaker.cloud.provider import IdempotencyKey

ROLE_TAG = "gennaker:canary-role"
OF_TAG = "gennaker:canary-of"
ROLES = ("baseline", "canary")
CONTINUE, STOP = "continue", "stop"
LINK_NAME = "Canary report"
RESWEEP_SECONDS = 10.0
"""How long the cleanup task waits before looking again when the canary did not succeed (a killed
canary's process may still be finishing a call)."""
CLEANUP_WAIT_SECONDS = 60.0


class CanaryFailed(CloudStageFailed):
    """The canary scored too low, a person stopped it, or it cannot be judged (the message says which)."""


class CanaryInterrupted(CloudStageFailed):
    """The cleanup task found what a stopped canary had left behind (and destroyed it)."""


def role_detail(detail: str, role: str) -> str:
    """The detail of the baseline's or canary's cluster: ``baseline``, or ``<detail>-baseline``."""
    return f"{detail}-{role}" if detail else role


def role_clusters(application: str, stack: str, detail: str) -> list[str]:
    """The baseline and canary clusters of a live cluster (``hello-prod`` -> ``hello-prod-baseline``, ...)."""
    from gennaker.cloud.naming import cluster_name

    return [cluster_name(application, stack, role_detail(detail, role)) for role in ROLES]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _words(seconds: float) -> str:
    """``90`` -> ``1m30s``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m" + (f"{rest}s" if rest else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h" + (f"{minutes}m" if minutes else "")


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """The data of judgement ``index`` (1-based): the baseline's (control) and the canary's (experiment)."""

    index: int
    control_start: datetime
    control_end: datetime
    experiment_start: datetime
    experiment_end: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "controlStart": self.control_start.isoformat(),
            "controlEnd": self.control_end.isoformat(),
            "experimentStart": self.experiment_start.isoformat(),
            "experimentEnd": self.experiment_end.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        return cls(
            index=int(data["index"]),
            control_start=datetime.fromisoformat(data["controlStart"]),
            control_end=datetime.fromisoformat(data["controlEnd"]),
            experiment_start=datetime.fromisoformat(data["experimentStart"]),
            experiment_end=datetime.fromisoformat(data["experimentEnd"]),
        )

    @property
    def due(self) -> datetime:
        """When both windows have ended."""
        return max(self.control_end, self.experiment_end)

    def describe(self) -> str:
        text = f"{self.experiment_start:%H:%M:%S}-{self.experiment_end:%H:%M:%S}"
        if self.control_start != self.experiment_start:
            text += f" (baseline {self.control_start:%H:%M:%S}-{self.control_end:%H:%M:%S})"
        return text


def plan_windows(
    start: datetime,
    *,
    lifetime: timedelta,
    interval: timedelta,
    warmup: timedelta = timedelta(0),
    lookback: timedelta | None = None,
    baseline_offset: timedelta = timedelta(0),
) -> list[Window]:
    """The judgements of a real-time canary that starts at ``start``.

    The judge's :func:`gennaker.canary.plan_intervals` (Orca's ``RunCanaryIntervalsStage``)
    to the second instead of the minute: ``floor(lifetime / interval)`` judgements (an
    unset or too long interval means one); judgement ``i`` ends at ``start + warmup + i *
    interval`` and starts at ``start + warmup`` (growing) or ``lookback`` before its end
    (sliding); the baseline's window is shifted back by ``baseline_offset``. For whole
    minutes the windows are exactly ``plan_intervals``'.
    """
    if lifetime <= timedelta(0):
        raise ValueError("the canary lifetime must be positive")
    if interval <= timedelta(0) or interval > lifetime:
        interval = lifetime
    first = start + warmup
    windows = []
    for index in range(1, lifetime // interval + 1):
        end = first + index * interval
        begin = end - lookback if lookback else first
        windows.append(
            Window(
                index=index,
                control_start=begin - baseline_offset,
                control_end=end - baseline_offset,
                experiment_start=begin,
                experiment_end=end,
            )
        )
    return windows


# --------------------------------------------------------------------------- the link


class CanaryReportLink(BaseOperatorLink):
    """The task's "Canary report" button in the Airflow UI: the report page of gennaker's app."""

    name = LINK_NAME

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from gennaker.canary.report import report_url

        return report_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, getattr(ti_key, "map_index", -1))


# --------------------------------------------------------------------------- the stage


class CanaryOperator(DeliveryOperator):
    """Run baseline and canary side by side on live traffic, judge them each interval, always clean up."""

    gennaker_stage_type = "canary"
    template_fields: Sequence[str] = ("account", "region", "baseline_name", "canary_name")
    first_phase = "start"
    operator_extra_links = (CanaryReportLink(),)
    ui_color = "#fff4e5"

    def __init__(
        self,
        *,
        canary_config: Mapping[str, Any],
        queries: Mapping[str, str],
        source_stage: str | None = None,
        baseline: str | None = None,
        canary: str | None = None,
        capacity: int = 1,
        traffic_percent: int = 10,
        lifetime: float = 1800.0,
        interval: float = 300.0,
        warmup: float = 0.0,
        lookback: float | None = None,
        baseline_offset: float = 0.0,
        thresholds: Mapping[str, float] | None = None,
        marginal: str = "fail",
        metric_source: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (baseline is None) != (canary is None):
            raise ValueError("give both baseline and canary server groups, or neither")
        if baseline is None and source_stage is None:
            raise ValueError("give a source (deploy) stage, or baseline and canary server groups")
        if marginal not in ("fail", "judge"):
            raise ValueError(f"marginal must be 'fail' or 'judge', not {marginal!r}")
        self.canary_config = dict(canary_config)
        self.queries = dict(queries)
        self.source_stage = source_stage
        self.baseline_name = baseline
        self.canary_name = canary
        self.capacity = int(capacity)
        self.traffic_percent = int(traffic_percent)
        self.lifetime = float(lifetime)
        self.interval = float(interval)
        self.warmup = float(warmup)
        self.lookback = float(lookback) if lookback else None
        self.baseline_offset = float(baseline_offset)
        self.thresholds = {"pass": 75.0, "marginal": 50.0, **dict(thresholds or {})}
        self.marginal_action = marginal
        self.metric_source = dict(metric_source or {"type": "local"})
        self._live: tuple[Any, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ plumbing

    def key(self, context: Any, purpose: str) -> IdempotencyKey:
        """Keys of this try: a retried canary starts over with its own groups and weights."""
        try_number = getattr(context["ti"], "try_number", 1) or 1
        return super().key(context, f"{purpose}@try{try_number}")

    def drive(
        self, context: Any, result: dict[str, Any], event: tuple[str | None, dict[str, Any]] | None = None
    ) -> Any:
        self._live = (context, result)  # for on_kill
        return super().drive(context, result, event)

    def stage_output(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return self.outputs(result)

    def make_source(self) -> MetricSource:
        from gennaker.canary.sources import MetricSourceError, metric_source

        try:
            return metric_source(self.metric_source, self.get_provider)
        except MetricSourceError as error:
            raise CanaryFailed(f"stage {self.stage_id!r}: {error}") from error

    def score_thresholds(self) -> Any:
        from gennaker.canary import ScoreThresholds

        return ScoreThresholds(marginal=float(self.thresholds["marginal"]), pass_score=float(self.thresholds["pass"]))

    def scope(self, name: str, region: str) -> Scope:
        from gennaker.canary.sources import Scope
        from gennaker.cloud.naming import parse_server_group_name

        names = parse_server_group_name(name)
        return Scope(
            server_group=name, cluster=names.cluster, application=names.app, account=self.account, region=region
        )

    def find_load_balancers(self, names: Sequence[str], region: str) -> list[LoadBalancer]:
        with self.cloud_call("list the load balancers"):
            found = self.get_provider().list_load_balancers(application=None, region=region)
        return [lb for lb in found if lb.name in names]

    def weigh(self, context: Any, result: Mapping[str, Any], weights: Mapping[str, int], purpose: str) -> list[Any]:
        """Give the canary's load balancers ``weights`` for baseline and canary (empty: take theirs away)."""
        ours = {result.get(role) for role in ROLES} - {None}
        ops = []
        for lb in self.find_load_balancers(result.get("loadBalancers") or [], result["region"]):
            new = {k: v for k, v in lb.weights.items() if k not in ours} | dict(weights)
            if new == lb.weights:
                continue
            with self.cloud_call(f"set the weights of load balancer {lb.name}"):
                ops.append(
                    self.get_provider().upsert_load_balancer(
                        lb.replace(weights=new), self.key(context, f"{purpose}-{lb.name}")
                    )
                )
        return ops

    def _image_words(self, image_id: str, region: str) -> str:
        try:
            image = self.get_provider().get_image(image_id, region=region)
        except Exception:
            return image_id
        return f"{image.package} {image.version} ({image_id})"

    # ------------------------------------------------------------------ start

    def phase_start(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.canary.report import report_url
        from gennaker.canary.sources import MetricSourceError, step_of

        ti = context["ti"]
        result["report"] = report_url(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))
        ti.xcom_push(key=CanaryReportLink().xcom_key, value=result["report"])  # the link works while it runs
        source = self.make_source()
        try:
            for name, query in self.queries.items():
                try:
                    source.check(query)
                except MetricSourceError as error:
                    raise CanaryFailed(f"stage {self.stage_id!r}: metric {name!r}: {error}") from error
            result["source"] = source.describe()
            result["settle"] = source.settle
            result["sampleStep"] = step_of(self.metric_source, source).total_seconds()
        finally:
            source.close()
        result["created"] = []
        region = result["region"]
        if self.baseline_name:
            baseline = self.group(str(self.baseline_name), region)
            canary = self.group(str(self.canary_name), region)
            result.update(
                mode="analysis",
                baseline=baseline.name,
                canary=canary.name,
                baselineImage=baseline.image_id,
                canaryImage=canary.image_id,
            )
            self.log.info(
                "analysing existing server groups: baseline %s (%s) against canary %s (%s); "
                "nothing is deployed and no traffic is moved",
                baseline.name,
                self._image_words(baseline.image_id, region),
                canary.name,
                self._image_words(canary.image_id, region),
            )
            self.goto(result, "begin")
            return
        upstream = ti.xcom_pull(task_ids=self.source_stage)
        if not isinstance(upstream, Mapping) or not upstream.get("imageId"):
            raise CloudStageFailed(
                f"stage {self.stage_id!r}: stage {self.source_stage!r} gave no image to canary (its output has "
                f"no imageId); did it run?"
            )
        previous = upstream.get("previousServerGroup")
        if not previous:
            raise CanaryFailed(
                f"stage {self.stage_id!r}: nothing to compare with: {upstream.get('serverGroup')} is the first "
                f"server group of {self.cluster} (no group was live when {self.source_stage!r} ran), so there is "
                f"no live version for a baseline; deploy the first version without a canary, or name existing "
                f"baseline and canary server groups"
            )
        live = self.group(str(previous), region)
        load_balancers = [lb.name for lb in self.load_balancers(live)]
        if not load_balancers:
            raise CanaryFailed(
                f"stage {self.stage_id!r}: the live server group {live.name} is behind no load balancer, so there "
                f"is no live traffic to share with a canary"
            )
        if not live.enabled:
            self.log.warning("the live server group %s is disabled: the canary may see no traffic", live.name)
        result.update(
            mode="deploy",
            live=live.name,
            newServerGroup=upstream.get("serverGroup"),
            baselineImage=live.image_id,
            canaryImage=str(upstream["imageId"]),
            loadBalancers=load_balancers,
        )
        self.goto(result, "create")

    # ------------------------------------------------------------------ deploy baseline and canary

    def phase_create(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.cloud.model import Capacity, ServerGroupSpec

        region = result["region"]
        live = self.group(result["live"], region)
        try:
            new = self.group(result["newServerGroup"], region) if result.get("newServerGroup") else live
        except ServerGroupNotFound:
            new = live
        provider = self.get_provider()
        ops: dict[str, Operation] = {}
        for role, image, like in (("baseline", result["baselineImage"], live), ("canary", result["canaryImage"], new)):
            spec = ServerGroupSpec(
                application=self.application,
                stack=self.stack,
                detail=role_detail(self.detail, role),
                account=self.account,
                region=region,
                image_id=image,
                capacity=Capacity.fixed(self.capacity),
                enabled=False,
                load_balancers=tuple(result["loadBalancers"]),
                firewalls=tuple(like.firewalls),
                health_check=dict(like.health_check),
                environment=dict(like.environment),
                tags={ROLE_TAG: role, OF_TAG: result["cluster"]},
            )
            with self.cloud_call(f"create the {role} server group"):
                op = provider.create_server_group(spec, self.key(context, f"create-{role}"))
            name = op.result.get("server_group")
            if not name:
                raise CloudStageFailed(f"creating the {role} server group gave no name: {op.message}")
            result[role] = str(name)
            if name not in result["created"]:
                result["created"].append(str(name))
            self._keep(context, {"result": result})  # the cleanup task finds them even if this process dies now
            ops[role] = op
        self.log.info(
            "creating baseline %s (%s, as live %s) and canary %s (%s), %s each, out of service until healthy",
            result["baseline"],
            self._image_words(result["baselineImage"], region),
            live.name,
            result["canary"],
            self._image_words(result["canaryImage"], region),
            f"{self.capacity} instance" + ("" if self.capacity == 1 else "s"),
        )
        self.goto(result, "canary_healthy")
        self.wait_health(context, result, self.group(result["baseline"], region), [ops["baseline"]])

    def phase_canary_healthy(self, context: Any, result: dict[str, Any]) -> None:
        self.goto(result, "traffic")
        self.wait_health(context, result, self.group(result["canary"], result["region"]), [])

    def phase_traffic(self, context: Any, result: dict[str, Any]) -> None:
        share = self.traffic_percent
        ops = self.weigh(context, result, {result["baseline"]: share, result["canary"]: share}, "weights")
        result["weighted"] = True
        provider = self.get_provider()
        for role in ROLES:
            with self.cloud_call(f"enable {result[role]}"):
                ops.append(
                    provider.enable_server_group(
                        result[role], self.key(context, f"enable-{role}"), region=result["region"]
                    )
                )
        self.log.info(
            "traffic: %d%% to baseline %s, %d%% to canary %s, the rest (%d%%) stays on live %s (load balancer %s)",
            share,
            result["baseline"],
            share,
            result["canary"],
            100 - 2 * share,
            result["live"],
            ", ".join(result["loadBalancers"]),
        )
        self.goto(result, "begin")
        self.wait_ops(context, result, ops)

    # ------------------------------------------------------------------ intervals

    def phase_begin(self, context: Any, result: dict[str, Any]) -> None:
        now = _utcnow()
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
        lookback = f"a sliding {_words(self.lookback)} window" if self.lookback else "a growing window"
        self.log.info(
            "canary analysis starts: %d interval%s of %s (lifetime %s, warm-up %s, %s), metrics from %s; "
            "the first judgement at %s",
            len(windows),
            "" if len(windows) == 1 else "s",
            _words(min(self.interval, self.lifetime)),
            _words(self.lifetime),
            _words(self.warmup),
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
        seconds = (moment - _utcnow()).total_seconds()
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
            _score(judged.score),
            _score(self.thresholds["pass"]),
            _score(self.thresholds["marginal"]),
            ", ".join(f"{name} {label}" for name, label in labels.items()),
        )
        for r in judged.results:
            if r.label.value != "Pass":
                self.log.info(
                    "  %s %s: baseline mean %s (%d points), canary mean %s (%d points)%s",
                    r.name,
                    r.label.value,
                    _score(r.control_stats.mean),
                    r.control_stats.count,
                    _score(r.experiment_stats.mean),
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
                    _score(judged.score),
                    _score(self.thresholds["marginal"]),
                )
            result["stoppedAt"] = i + 1
            self.goto(result, "cleanup")
        elif i + 1 < n:
            result["next"] = i + 1
            self.goto(result, "wait")
        else:
            self.goto(result, "cleanup")

    # ------------------------------------------------------------------ clean up and decide

    def phase_cleanup(self, context: Any, result: dict[str, Any]) -> None:
        ops = self.destroy_ours(context, result)
        if ops:
            self.log.info(
                "destroying baseline %s and canary %s: the canary is over", result["baseline"], result["canary"]
            )
        self.goto(result, "unweight")
        self.wait_ops(context, result, ops)

    def phase_unweight(self, context: Any, result: dict[str, Any]) -> None:
        ops = []
        if result.get("weighted"):
            ops = self.weigh(context, result, {}, "weights-clear")
            result["weighted"] = False
            self.log.info("cleared the canary's load balancer weights: live %s takes all the traffic", result["live"])
        result["cleanedUp"] = True
        self.goto(result, "verdict")
        self.wait_ops(context, result, ops)

    def destroy_ours(self, context: Any, result: Mapping[str, Any]) -> list[Any]:
        """Destroy the baseline and canary groups this stage created (not those it was given)."""
        provider = self.get_provider()
        ops = []
        for role in ROLES:
            name = result.get(role)
            if not name or name not in (result.get("created") or []):
                continue
            with self.cloud_call(f"destroy the {role} server group {name}"):
                ops.append(
                    provider.destroy_server_group(name, self.key(context, f"destroy-{role}"), region=result["region"])
                )
        return ops

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
            f"The canary of {result.get('cluster')} scored **{_score(result['score'])}**: above marginal "
            f"{_score(self.thresholds['marginal'])} but below pass {_score(self.thresholds['pass'])}.\n\n"
            + "\n".join(f"- {name}: {label}" for name, label in labels.items())
            + f"\n\nReport: {result.get('report')}\n\n*continue* lets the pipeline go on (e.g. promote); "
            f"*stop* fails the canary."
        )
        upsert_hitl_detail(
            ti_id=context["task_instance"].id,
            options=[CONTINUE, STOP],
            subject=f"Canary {self.stage_id}: marginal score {_score(result['score'])}, continue?",
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
            self.log.info("%s chose to continue despite the marginal score %s", who, _score(result["score"]))
            result["passed"] = True
            self.save_report(context, result, status="passed", message=f"marginal; {who} chose to continue")
            self.goto(result, DONE)
            return
        why = result.get("judgmentError") or f"{who} chose {result.get('judgment')!r}"
        result["passed"] = False
        self.save_report(context, result, status="failed", message=f"marginal; {why}")
        context["ti"].xcom_push(key="return_value", value=self.outputs(result))
        raise CanaryFailed(f"canary marginal (score {_score(result['score'])}) and stopped: {why}")

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

    # ------------------------------------------------------------------ failure, kill

    def on_failure_undo(self, context: Any, result: dict[str, Any], error: BaseException) -> None:
        if isinstance(error, TaskAwaitingInput):
            return  # not a failure: waiting for a person
        summary = ""
        if result.get("created") and not result.get("cleanedUp"):
            summary = self.tear_down(context, result)
        if not result.get("verdict"):  # else the report says it already
            try:
                self.save_report(context, result, status="failed", error=f"{type(error).__name__}: {error}")
            except Exception as problem:  # the report must not hide the failure
                self.log.warning("could not update the canary report: %s", problem)
        if summary:
            error.args = (f"{error}; {summary}", *error.args[1:])

    def tear_down(self, context: Any, result: dict[str, Any]) -> str:
        """Destroy what the stage made and take its weights away, now, without waiting; what was done, in words."""
        done = []
        try:
            self.destroy_ours(context, result)
            done.append(f"destroying {', '.join(n for n in (result.get(r) for r in ROLES) if n)}")
        except Exception as error:  # keep going: the weights, and the cleanup task, still follow
            self.log.error("could not destroy the canary's server groups: %s", error)
            done.append(f"could NOT destroy the canary's server groups ({error}); the cleanup task will try again")
        if result.get("weighted"):
            try:
                self.weigh(context, result, {}, "weights-clear")
                result["weighted"] = False
                done.append("cleared the load balancer weights")
            except Exception as error:
                self.log.error("could not clear the canary's load balancer weights: %s", error)
                done.append(f"could NOT clear the load balancer weights ({error})")
        result["cleanedUp"] = True
        text = "cleaned up: " + "; ".join(done)
        self.log.warning("%s", text)
        return text

    def on_kill(self) -> None:
        live = self._live
        if live is None:
            return
        context, result = live
        if result.get("created") and not result.get("cleanedUp"):
            self.log.warning("the canary task is being stopped: cleaning up its server groups")
            try:
                self.tear_down(context, result)
            except Exception as error:  # the cleanup task tries again
                self.log.error("cleanup on kill failed: %s", error)

    # ------------------------------------------------------------------ report

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
                "lifetime": _words(self.lifetime),
                "interval": _words(min(self.interval, self.lifetime)),
                "warmup": _words(self.warmup),
                "lookback": f"sliding {_words(self.lookback)}" if self.lookback else "growing",
            },
            queries=dict(self.queries),
            intervals=list(result.get("intervals") or []),
            updatedAt=_utcnow().isoformat(),
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


def _floats(series: Series) -> list[float]:
    return [math.nan if v is None else float(v) for v in series.values]


def _chart(series: Series) -> dict[str, Any]:
    from gennaker.canary.report import thin

    values, every = thin(series.values)
    return {"start": series.start.isoformat(), "step": series.step * every, "values": values}


def _score(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:g}" if abs(number) >= 1e-3 or number == 0 else f"{number:.3g}"


# --------------------------------------------------------------------------- the teardown


class CanaryCleanupOperator(CloudStageOperator):
    """``<stage>.cleanup``: a teardown after a deploying canary that destroys what the canary left behind.

    It runs whatever happened to the canary (success, failure, a timeout, the task or the run
    marked failed while the canary waited in the triggerer). It destroys every server group of
    the baseline and canary clusters that the canary task of this run created (their
    ``created_by``), and takes their weights off the account's load balancers. When the canary
    did not succeed it looks once more :data:`RESWEEP_SECONDS` later: a canary task stopped while
    it ran may still be finishing a call. When the canary was stopped from outside (it did not
    succeed and left something behind, or it failed without reaching its own end, e.g. while
    it waited for a person), it fails after cleaning up, and the factory makes it count for
    the run's state (``on_failure_fail_dagrun``), so a run marked failed mid-canary ends failed.
    """

    gennaker_stage_type = "canaryCleanup"
    template_fields: Sequence[str] = ("account", "region")
    ui_color = "#f1f3f4"

    def __init__(self, *, canary_task_id: str, application: str, clusters: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.canary_task_id = canary_task_id
        self.application = application
        self.clusters = list(clusters)

    def execute(self, context: Any) -> Any:
        # Not gated like a stage: it must run whatever happened before it.
        ti = context["ti"]
        found = ti.get_task_states(dag_id=ti.dag_id, task_ids=[self.canary_task_id], run_ids=[ti.run_id])
        states = found.get(ti.run_id, {}) if isinstance(found, Mapping) else {}
        state = states.get(self.canary_task_id)
        destroyed = self.sweep(context, 1)
        if state != "success":
            time.sleep(RESWEEP_SECONDS)
            destroyed += self.sweep(context, 2)
        out = {"canaryState": state, "destroyed": destroyed}
        if destroyed:
            self.log.warning(
                "canary %r (%s) had left %s behind: destroyed", self.canary_task_id, state, ", ".join(destroyed)
            )
        else:
            self.log.info("canary %r (%s) left nothing behind", self.canary_task_id, state)
        if state == "success" or not (destroyed or (state == "failed" and not self.finished(context))):
            return out
        # The canary was stopped from outside before it could finish: its task or run was marked failed (while it
        # ran, waited for an interval or for a person), it timed out while deferred, or its worker died. Failing
        # here fails the run (on_failure_fail_dagrun): marking a run failed skips the stages after the canary,
        # and a run whose other leaves are all skipped would count as a success once this teardown ends.
        context["ti"].xcom_push(key="return_value", value=out)
        done = (
            f"destroyed {', '.join(destroyed)} and took their load balancer weights away"
            if destroyed
            else "it had left nothing behind"
        )
        raise CanaryInterrupted(
            f"canary {self.canary_task_id!r} ended {state or 'without a state'} before it finished (stopped while "
            f"it ran or waited); {done}"
        )

    def finished(self, context: Any) -> bool:
        """Whether the canary reached its own end (its report says passed or failed), rather than being stopped."""
        from gennaker.canary.report import REPORT_KEY

        report = context["ti"].xcom_pull(task_ids=self.canary_task_id, key=REPORT_KEY)
        return isinstance(report, Mapping) and report.get("status") in ("passed", "failed")

    def known_names(self, context: Any) -> set[str]:
        """The baseline and canary names the canary task recorded (its output, or its pending state)."""
        ti = context["ti"]
        names: set[str] = set()
        for key in ("return_value", PENDING_KEY):
            value = ti.xcom_pull(task_ids=self.canary_task_id, key=key)
            if isinstance(value, Mapping):
                names |= {str(value[r]) for r in ROLES if value.get(r)}
                names |= {str(n) for n in value.get("created") or []}
        return names

    def sweep(self, context: Any, round_: int) -> list[str]:
        ti = context["ti"]
        provider = self.get_provider()
        region = self.region or provider.region
        ours: list[ServerGroup] = []
        for cluster in self.clusters:
            with self.cloud_call(f"list the server groups of {cluster}"):
                groups = provider.list_server_groups(self.application, cluster=cluster, region=region)
            for group in groups:
                made = group.created_by
                if (
                    made is not None
                    and (made.dag_id, made.run_id, made.task_id) == (ti.dag_id, ti.run_id, self.canary_task_id)
                    and not group.destroying
                ):
                    ours.append(group)
        ops = []
        for group in ours:
            with self.cloud_call(f"destroy {group.name}"):
                ops.append(
                    provider.destroy_server_group(group.name, self.key(context, f"destroy-{group.name}"), region=region)
                )
            self.log.info("destroying %s (made by canary %r of this run)", group.name, self.canary_task_id)
        names = {g.name for g in ours} | self.known_names(context)
        with self.cloud_call("list the load balancers"):
            balancers = provider.list_load_balancers(application=None, region=region)
        for lb in balancers:
            stale = sorted(set(lb.weights) & names)
            if not stale:
                continue
            weights = {k: v for k, v in lb.weights.items() if k not in names}
            with self.cloud_call(f"clear the canary's weights on load balancer {lb.name}"):
                ops.append(
                    provider.upsert_load_balancer(
                        lb.replace(weights=weights), self.key(context, f"weights-{lb.name}-{round_}")
                    )
                )
            self.log.info("took the weights of %s off load balancer %s", ", ".join(stale), lb.name)
        self.wait_inline(ops)
        return [g.name for g in ours]

    def wait_inline(self, ops: Sequence[Any]) -> None:
        deadline = time.monotonic() + CLEANUP_WAIT_SECONDS
        pending = list(ops)
        while pending and time.monotonic() < deadline:
            pending = [op for op in self.refresh(pending) if not op.done]
            if pending:
                time.sleep(0.5)
        for op in self.refresh(list(ops)) if ops else []:
            if op.done and not op.succeeded:
                self.log.error("%s failed: %s", op.kind, op.message)
        if pending:
            self.log.warning(
                "still running after %gs: %s", CLEANUP_WAIT_SECONDS, "; ".join(op.message for op in pending)
            )


__all__ = [
    "CanaryCleanupOperator",
    "CanaryFailed",
    "CanaryInterrupted",
    "CanaryOperator",
    "CanaryReportLink",
    "Window",
    "plan_windows",
    "role_clusters",
    "role_detail",
]
