"""Bulk reads of the local state for :meth:`LocalProvider.inventory` and :meth:`LocalProvider.history`.

:meth:`StateStore.list_server_groups` reads a group's instances with one query per
group: fine for a stage, slow for a page of 1,000 groups. Here the whole account is read
in two queries inside one snapshot (a consistent view that never waits for writers), and
the rows become the same :class:`ServerGroup` models. A cluster's history reads the
``events`` audit log by account and server-group kinds.

These queries know the tables of ``gennaker.cloud.local.state`` (schema version
:data:`KNOWN_SCHEMA`); on a store of another version they fall back to the store's own
methods (slower, same result), and ``tests/web`` checks both give the same answer. No
read here starts a process: unlike :meth:`LocalProvider.instances`, nothing reconciles
supervisors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from gennaker.cloud.local.state import SCHEMA_VERSION, StateStore
from gennaker.cloud.model import ClusterEvent, HistoryKind, Instance, ServerGroup
from gennaker.cloud.naming import parse_server_group_name

KNOWN_SCHEMA = 1
"""The ``gennaker.cloud.local.state`` schema these queries were written for."""

HISTORY_EVENTS: dict[str, HistoryKind] = {
    "serverGroup.created": "created",
    "serverGroup.resized": "resized",
    "serverGroup.enabled": "enabled",
    "serverGroup.disabled": "disabled",
    "serverGroup.destroying": "destroying",
    "serverGroup.destroyed": "destroyed",
    "instance.terminated": "instanceTerminated",
}
"""Recorded events that change a server group, and their name in a history. The supervisor's own events
(restarts, and the process stops that follow a terminate, which carry no idempotency key) are left out."""
HISTORY_KINDS = tuple(HISTORY_EVENTS)


def read_server_groups(store: StateStore, account: str) -> list[ServerGroup]:
    """Every server group of ``account`` (all regions) with its instances, oldest first."""
    if SCHEMA_VERSION != KNOWN_SCHEMA:
        return store.list_server_groups(account=account)
    with store.snapshot() as db:
        groups = db.execute(
            "SELECT body FROM server_groups WHERE account = ? ORDER BY created, rowid", (account,)
        ).fetchall()
        rows = db.execute(
            "SELECT region, server_group, body FROM instances WHERE account = ? ORDER BY rowid", (account,)
        ).fetchall()
    instances: dict[tuple[str, str], list[Instance]] = {}
    for region, group, body in rows:
        instances.setdefault((region, group), []).append(Instance.model_validate_json(body))
    result = []
    for (body,) in groups:
        data = json.loads(body)
        data["instances"] = instances.get((data["region"], data["name"]), [])
        result.append(ServerGroup.model_validate(data))
    return result


def read_cluster_events(
    store: StateStore, account: str, cluster: str, *, before: int | None = None, limit: int = 200
) -> list[ClusterEvent]:
    """The cluster's server-group events in ``account``, newest first, ids below ``before``, with their operations."""
    found: list[ClusterEvent] = []
    for row in _event_rows(store, account, before):
        event = _cluster_event(row, cluster)
        if event is not None:
            operation = store.find_operation(event.key) if event.key else None
            found.append(event.replace(operation=operation) if operation is not None else event)
            if len(found) >= limit:
                break
    return found


def _event_rows(store: StateStore, account: str, before: int | None) -> Sequence[Sequence[Any]]:
    if SCHEMA_VERSION != KNOWN_SCHEMA:
        rows = [
            (e.id, e.at.isoformat(), e.kind, e.subject, e.key, e.message, json.dumps(e.data))
            for e in store.events(limit=1_000_000)
            if e.account == account and e.kind in HISTORY_KINDS and (before is None or e.id < before)
        ]
        return rows[::-1]
    marks = ", ".join("?" for _ in HISTORY_KINDS)
    with store.snapshot() as db:
        return db.execute(
            f"SELECT id, at, kind, subject, key, message, data FROM events "
            f"WHERE account = ? AND kind IN ({marks}) AND id < ? ORDER BY id DESC",
            (account, *HISTORY_KINDS, before if before is not None else 2**62),
        ).fetchall()


def _cluster_event(row: Sequence[Any], cluster: str) -> ClusterEvent | None:
    event_id, at, kind, subject, key, message, data = row
    instance_id = None
    group = subject
    if kind == "instance.terminated":
        if not key:
            return None  # the supervisor stopping the process; the request's own event carries the key
        instance_id = subject
        group = str(json.loads(data or "{}").get("server_group") or "")
    try:
        names = parse_server_group_name(group)
    except ValueError:
        return None
    if names.cluster != cluster or names.sequence is None:
        return None
    return ClusterEvent(
        id=int(event_id),
        at=_when(at),
        kind=HISTORY_EVENTS[kind],
        server_group=group,
        instance_id=instance_id,
        message=str(message),
        key=key,
    )


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


__all__ = ["HISTORY_EVENTS", "HISTORY_KINDS", "KNOWN_SCHEMA", "read_cluster_events", "read_server_groups"]
