"""Refused attempts in the audit trail: who tried which action on what, never what they sent.

An action refused by validation (422), by permission (403: ``FORBIDDEN``) or because a
pipeline holds the cluster's lock (409) still gets an audit row, so an operator sees the
attempts. The row keeps the user, the action, the target (each part cut to
:data:`MAX_FIELD` characters) and the HTTP status; it keeps no parameters and no reason:
a refused request's body is untrusted text of any size, and the row must not become a
way to store it (or to grow the state file) on the server.
"""

from __future__ import annotations

from gennaker.cloud.model import utcnow
from gennaker.cloud.naming import parse_server_group_name
from gennaker.errors import InvalidRequest
from gennaker.web import models as m
from gennaker.web.audit import new_action_id

MAX_FIELD = 64
"""The longest user or target part a refused attempt's row keeps (longer ones are cut and end with '…')."""
MAX_MESSAGE = 500

ACTION_ROUTES: dict[str, m.ActionName] = {
    "resize": "resize",
    "enable": "enable",
    "disable": "disable",
    "destroy": "destroy",
    "terminate_instance": "terminateInstance",
    "rollback": "rollback",
}
"""Route function name -> audited action name."""


def bounded(value: str | None, limit: int = MAX_FIELD) -> str | None:
    """``value`` cut to ``limit`` characters (the last one an ellipsis when cut)."""
    if value is None or len(value) <= limit:
        return value
    return value[: limit - 1] + "…"


def _cluster(server_group: str | None) -> str | None:
    if not server_group:
        return None
    try:
        return parse_server_group_name(server_group).cluster
    except InvalidRequest:
        return None


def refused_entry(
    user: str,
    action: m.ActionName,
    *,
    application: str,
    account: str,
    region: str | None = None,
    cluster: str | None = None,
    server_group: str | None = None,
    instance_id: str | None = None,
    status: m.AuditStatus,
    http_status: int,
    message: str,
) -> m.AuditEntry:
    """The audit row of a refused attempt: bounded target, no parameters, no reason, already finished."""
    server_group = bounded(server_group)
    now = utcnow()
    return m.AuditEntry(
        id=new_action_id(),
        at=now,
        user=bounded(user) or "unknown",
        action=action,
        application=bounded(application) or "",
        account=bounded(account) or "",
        region=bounded(region),
        cluster=bounded(cluster) or _cluster(server_group),
        server_group=server_group,
        instance_id=bounded(instance_id),
        parameters={},
        reason="",
        status=status,
        http_status=http_status,
        message=bounded(message, MAX_MESSAGE) or "",
        operation_ids=[],
        finished_at=now,
    )


__all__ = ["ACTION_ROUTES", "MAX_FIELD", "bounded", "refused_entry"]
