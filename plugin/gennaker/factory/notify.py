"""Notifications (email, webhook) on pipeline and stage events, as Airflow callbacks."""

from __future__ import annotations

import html
import json
import logging
import urllib.request
from collections.abc import Iterable, Mapping
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

                subject, html_body = email_content(summary)
                SmtpNotifier(to=self.to, subject=subject, html_content=html_body).notify(context)
        except Exception:
            log.exception("gennaker: could not send %s notification for %s", self.kind, summary)


def _one_line(value: Any) -> str:
    # A newline in a header would start a header of the sender's choosing (Bcc: ...): none get through.
    text = "".join(ch if ch.isprintable() else " " for ch in str(value if value is not None else ""))
    return " ".join(text.split())


def email_content(summary: Mapping[str, Any]) -> tuple[str, str]:
    """An email's subject (one line, no control characters) and HTML body (every value escaped).

    The run id and the message can come from whoever triggered the run (a run id of the
    REST API, a message templated from the run's parameters): they are data, not markup.
    """
    what = summary.get("stage") or summary.get("pipeline")
    subject = _one_line(f"[gennaker] {summary.get('pipeline')}: {what} {summary.get('event')}")
    message = html.escape(str(summary.get("message") or "")).replace("\n", "<br>")
    body = f"<p>{html.escape(subject)}</p><p>run {html.escape(str(summary.get('runId')))}</p><p>{message}</p>"
    return subject, body


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
