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

The stage is put together here from its parts: :mod:`~gennaker.operators.canary_common`
(settings, plumbing, failures), :mod:`~gennaker.operators.canary_groups` (start, create,
traffic, cleanup), :mod:`~gennaker.operators.canary_judging` (intervals, judgement,
verdict) and :mod:`~gennaker.operators.canary_report`; the windows and clusters it plans
are :mod:`gennaker.strategies.canary`'s. The teardown task is below.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import TaskAwaitingInput

from gennaker.operators.base import PENDING_KEY, CloudStageOperator
from gennaker.operators.canary_common import (
    CONTINUE,
    LINK_NAME,
    OF_TAG,
    ROLE_TAG,
    STOP,
    CanaryFailed,
    CanaryInterrupted,
)
from gennaker.operators.canary_groups import CanaryGroups
from gennaker.operators.canary_judging import CanaryJudging
from gennaker.operators.canary_report import CanaryReportLink
from gennaker.strategies.canary import ROLES, Window, plan_windows, role_clusters, role_detail

if TYPE_CHECKING:
    from gennaker.cloud.model import ServerGroup

RESWEEP_SECONDS = 10.0
"""How long the cleanup task waits before looking again when the canary did not succeed (a killed
canary's process may still be finishing a call)."""
CLEANUP_WAIT_SECONDS = 60.0


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CanaryOperator(CanaryGroups, CanaryJudging):
    """Run baseline and canary side by side on live traffic, judge them each interval, always clean up."""

    gennaker_stage_type = "canary"
    template_fields: Sequence[str] = ("account", "region", "baseline_name", "canary_name")
    first_phase = "start"
    operator_extra_links = (CanaryReportLink(),)
    ui_color = "#fff4e5"

    def now(self) -> datetime:
        return _utcnow()  # this module's clock, which tests set

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
    "CONTINUE",
    "LINK_NAME",
    "OF_TAG",
    "ROLES",
    "ROLE_TAG",
    "STOP",
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
