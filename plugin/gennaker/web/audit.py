"""The audit trail of the Clusters page's actions: who did what, when, and how it ended.

One table, ``web_actions``, in the local state store's SQLite file
(``$GENNAKER_HOME/local/state.db``, shared by every API server worker, the scheduler's
workers and the triggerer). It is created with ``CREATE TABLE IF NOT EXISTS`` and leaves
the store's ``user_version`` alone, so ``gennaker.cloud.local.state`` keeps owning its own
migrations. Writes go through :meth:`StateStore.transaction` (``BEGIN IMMEDIATE``, busy
timeout), reads through :meth:`StateStore.snapshot`.

An entry is written when the action starts (status ``RUNNING``, or ``FORBIDDEN`` when the
caller may not act) and updated when it ends: ``SUCCEEDED``, ``FAILED`` (an operation
failed), ``REFUSED`` (the provider refused the request: a traffic guard, a server group
being destroyed, ...). A rollback that was still waiting when its API server worker
stopped reads as ``INTERRUPTED``. The entry's id is the ``run_id`` of the idempotency keys
of the action's cloud calls (``ui/<id>/<action>/<purpose>``), which is how the cluster
history names the user behind a change. Entries older than 30 days, or beyond the newest
100,000, are pruned as the store writes (:mod:`gennaker.cloud.local.retention`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import utcnow
from gennaker.web.models import AuditEntry

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS web_actions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, at TEXT NOT NULL,
        user TEXT NOT NULL, action TEXT NOT NULL, application TEXT NOT NULL, account TEXT NOT NULL,
        cluster TEXT, server_group TEXT, status TEXT NOT NULL, worker TEXT NOT NULL, body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS web_actions_application ON web_actions (application, seq)",
)

FINAL = frozenset({"SUCCEEDED", "FAILED", "REFUSED", "FORBIDDEN", "INTERRUPTED"})
UI_DAG_ID = "ui"
"""The ``dag_id`` of the idempotency keys of the Clusters page's actions."""


def new_action_id() -> str:
    """A fresh, time-ordered action id (also the ``run_id`` of its idempotency keys)."""
    return f"{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"


def this_worker() -> str:
    """``host:pid`` of this API server worker (a RUNNING rollback belongs to it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class AuditLog:
    """The ``web_actions`` table of one state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        with store.transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)

    def start(self, entry: AuditEntry) -> AuditEntry:
        """Record an action as it starts (or as it is refused before it could start)."""
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO web_actions (id, at, user, action, application, account, cluster, server_group, status, "
                "worker, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.id,
                    _ts(entry.at),
                    entry.user,
                    entry.action,
                    entry.application,
                    entry.account,
                    entry.cluster,
                    entry.server_group,
                    entry.status,
                    this_worker(),
                    entry.model_dump_json(),
                ),
            )
        return entry

    def finish(self, action_id: str, **changes: Any) -> AuditEntry:
        """Record how an action went on or ended (``status``, ``message``, ``operation_ids``, ...)."""
        with self.store.transaction() as db:
            entry = self._get(db, action_id)
            if changes.get("status") in FINAL and "finished_at" not in changes:
                changes["finished_at"] = utcnow()
            entry = entry.model_copy(update=changes)
            entry = AuditEntry.model_validate(entry.model_dump())  # validated, as a new row would be
            db.execute(
                "UPDATE web_actions SET status = ?, body = ? WHERE id = ?",
                (entry.status, entry.model_dump_json(), action_id),
            )
        return entry

    def get(self, action_id: str) -> AuditEntry:
        """One entry (KeyError if there is none)."""
        with self.store.snapshot() as db:
            return self._get(db, action_id)

    def users(self, action_ids: Iterable[str]) -> dict[str, str]:
        """Who did each of these actions (ids without an entry are left out)."""
        ids = sorted(set(action_ids))
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        with self.store.snapshot() as db:
            rows = db.execute(f"SELECT id, user FROM web_actions WHERE id IN ({marks})", ids).fetchall()
        return {str(row[0]): str(row[1]) for row in rows}

    def list(
        self,
        application: str,
        *,
        accounts: Iterable[str] | None = None,
        cluster: str | None = None,
        server_group: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> tuple[list[AuditEntry], int | None]:
        """An application's entries, newest first, and the ``before`` of the next page (None at the end)."""
        where = ["application = ?", "seq < ?"]
        params: list[Any] = [application, before if before is not None else 2**62]
        if accounts is not None:
            names = sorted(set(accounts))
            where.append(f"account IN ({', '.join('?' for _ in names)})")
            params.extend(names)
        if cluster is not None:
            where.append("cluster = ?")
            params.append(cluster)
        if server_group is not None:
            where.append("server_group = ?")
            params.append(server_group)
        with self.store.snapshot() as db:
            rows = db.execute(
                f"SELECT seq, status, worker, body FROM web_actions WHERE {' AND '.join(where)} "
                "ORDER BY seq DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        entries = [_shown(AuditEntry.model_validate_json(body), status, worker) for _seq, status, worker, body in rows]
        more = len(rows) > limit
        return entries[:limit], (int(rows[limit - 1][0]) if more else None)

    def _get(self, db: Any, action_id: str) -> AuditEntry:
        row = db.execute("SELECT body FROM web_actions WHERE id = ?", (action_id,)).fetchone()
        if row is None:
            raise KeyError(action_id)
        return AuditEntry.model_validate_json(row[0])


def _shown(entry: AuditEntry, status: str, worker: str) -> AuditEntry:
    """A RUNNING entry whose API server worker on this host is gone will not finish: INTERRUPTED."""
    if status != "RUNNING" or not _dead_here(worker):
        return entry
    return entry.model_copy(update={"status": "INTERRUPTED", "message": f"{entry.message} (its API server stopped)"})


def _dead_here(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's worker: we cannot tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = ["FINAL", "UI_DAG_ID", "AuditLog", "new_action_id", "this_worker"]
