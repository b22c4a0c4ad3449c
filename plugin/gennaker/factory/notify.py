"""Notifications (email, webhook) on pipeline and stage events, as Airflow callbacks."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterable
from typing import Any

from airflow.sdk import BaseNotifier

from gennaker.spec.models import Notification

log = logging.getLogger(__name__)

_EVENT_CALLBACK = {
    "starting": "on_execute_callback",
    "complete": "on_success_callback",
    "failed": "on_failure_callback",
}


class GennakerNotifier(BaseNotifier):
    """Send one notification for one event. A failure to notify is logged, never raised."""

    template_fields = ("message",)

    def __init__(self, *, kind: str, to: list[str], url: str | None, event: str, message: str | None) -> None:
        super().__init__()
        self.kind = kind
        self.to = to
        self.url = url
        self.event = event
        self.message = message or ""

    def _summary(self, context: Any) -> dict[str, Any]:
        ti = context.get("ti") or context.get("task_instance")
        dag_run = context.get("dag_run")
        return {
            "pipeline": getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
            "runId": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
            "stage": getattr(ti, "task_id", None) if self.event != "pipeline" else None,
            "event": self.event,
            "message": self.message,
        }

    def notify(self, context: Any) -> None:
        summary = self._summary(context)
        try:
            if self.kind == "webhook" and self.url:
                body = json.dumps(summary, default=str).encode()
                req = urllib.request.Request(
                    self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
            elif self.kind == "email":
                from airflow.providers.smtp.notifications.smtp import SmtpNotifier

                what = summary["stage"] or summary["pipeline"]
                subject = f"[gennaker] {summary['pipeline']}: {what} {self.event}"
                html = f"<p>{subject}</p><p>run {summary['runId']}</p><p>{self.message}</p>"
                SmtpNotifier(to=self.to, subject=subject, html_content=html).notify(context)
        except Exception:
            log.exception("gennaker: could not send %s notification for %s", self.kind, summary)


def _callbacks(notifications: Iterable[Notification], events: Iterable[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in notifications:
        for event in n.when:
            if event not in events:
                continue
            notifier = GennakerNotifier(kind=n.type, to=list(n.to), url=n.url, event=event, message=n.message)
            out.setdefault(_EVENT_CALLBACK[event], []).append(notifier)
    return out


def task_callbacks(notifications: Iterable[Notification]) -> dict[str, list[Any]]:
    """Stage notifications: starting, complete, failed."""
    return _callbacks(notifications, ("starting", "complete", "failed"))


def dag_callbacks(notifications: Iterable[Notification]) -> dict[str, list[Any]]:
    """Pipeline notifications: complete and failed (Airflow has no DAG-level start callback)."""
    return _callbacks(notifications, ("complete", "failed"))


def stage_callbacks(
    stage_notifications: Iterable[Notification], pipeline_notifications: Iterable[Notification], first: bool
) -> dict[str, list[Any]]:
    """A stage's callbacks; a first stage also announces the pipeline's start (no DAG-level start hook)."""
    out = task_callbacks(stage_notifications)
    if first:
        for key, notifiers in _callbacks(pipeline_notifications, ("starting",)).items():
            out.setdefault(key, []).extend(notifiers)
    return out
