"""The audit trail of the Clusters page's actions: who did what, when, and how it ended.

One table, ``gennaker_audit``, in gennaker's shared database (:mod:`gennaker.db`: by
default Airflow's metadata database), so every API server worker of every machine writes
and reads the same trail; ``gennaker db migrate`` creates it (until then the page answers
"run `gennaker db migrate`"). Each write is one transaction.

An entry is written when the action starts (status ``RUNNING``, or ``FORBIDDEN`` when the
caller may not act) and updated when it ends: ``SUCCEEDED``, ``FAILED`` (an operation
failed), ``REFUSED`` (the provider refused the request: a traffic guard, a server group
being destroyed, ...). A rollback that was still waiting when its API server worker
stopped reads as ``INTERRUPTED``. The entry's id is the ``run_id`` of the idempotency keys
of the action's cloud calls (``ui/<id>/<action>/<purpose>``), which is how the cluster
history names the user behind a change. Entries older than 30 days, or beyond the newest
100,000, are pruned as the trail is written (:meth:`AuditLog.prune`, at most once a minute
per process; the policy is :class:`gennaker.cloud.local.retention.Retention`'s, with its
``GENNAKER_RETENTION_*`` settings).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, update

from gennaker.cloud.local import retention
from gennaker.cloud.model import utcnow
from gennaker.db import tables
from gennaker.db.engine import open_engine
from gennaker.web.models import AuditEntry

log = logging.getLogger(__name__)

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
    """The ``gennaker_audit`` table.

    :param path: empty (the default): the shared database, which ``gennaker db migrate`` must have
        prepared. A SQLite file's path: a private trail in that file, created on first use (tests).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = str(path) if path else ""
        self.engine: Engine = open_engine(self.path)

    def start(self, entry: AuditEntry) -> AuditEntry:
        """Record an action as it starts (or as it is refused before it could start)."""
        with self.engine.begin() as db:
            db.execute(
                tables.audit.insert().values(
                    id=entry.id,
                    at=_ts(entry.at),
                    user=entry.user,
                    action=entry.action,
                    application=entry.application,
                    account=entry.account,
                    cluster=entry.cluster,
                    server_group=entry.server_group,
                    status=entry.status,
                    worker=this_worker(),
                    body=entry.model_dump_json(),
                )
            )
        self.maybe_prune()
        return entry

    def finish(self, action_id: str, **changes: Any) -> AuditEntry:
        """Record how an action went on or ended (``status``, ``message``, ``operation_ids``, ...)."""
        t = tables.audit
        with self.engine.begin() as db:
            entry = _get(db, action_id)
            if changes.get("status") in FINAL and "finished_at" not in changes:
                changes["finished_at"] = utcnow()
            entry = entry.model_copy(update=changes)
            entry = AuditEntry.model_validate(entry.model_dump())  # validated, as a new row would be
            db.execute(update(t).where(t.c.id == action_id).values(status=entry.status, body=entry.model_dump_json()))
        return entry

    def get(self, action_id: str) -> AuditEntry:
        """One entry (KeyError if there is none)."""
        with self.engine.connect() as db:
            return _get(db, action_id)

    def users(self, action_ids: Iterable[str]) -> dict[str, str]:
        """Who did each of these actions (ids without an entry are left out)."""
        ids = sorted(set(action_ids))
        if not ids:
            return {}
        t = tables.audit
        with self.engine.connect() as db:
            rows = db.execute(select(t.c.id, t.c.user).where(t.c.id.in_(ids))).all()
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
        t = tables.audit
        query = select(t.c.seq, t.c.status, t.c.worker, t.c.body).where(t.c.application == application)
        if before is not None:
            query = query.where(t.c.seq < before)
        if accounts is not None:
            query = query.where(t.c.account.in_(sorted(set(accounts))))
        if cluster is not None:
            query = query.where(t.c.cluster == cluster)
        if server_group is not None:
            query = query.where(t.c.server_group == server_group)
        with self.engine.connect() as db:
            rows = db.execute(query.order_by(t.c.seq.desc()).limit(limit + 1)).all()
        entries = [_shown(AuditEntry.model_validate_json(body), status, worker) for _seq, status, worker, body in rows]
        more = len(rows) > limit
        return entries[:limit], (int(rows[limit - 1][0]) if more else None)

    def prune(self, policy: retention.Retention | None = None, now: datetime | None = None) -> int:
        """Delete entries older than the policy's age, then all but its newest rows (the newest stays); how many."""
        policy = policy or retention.Retention.from_env()
        now = now or datetime.now(timezone.utc)
        cutoff = _ts(now - policy.max_age)
        t = tables.audit
        with self.engine.begin() as db:
            newest = db.execute(select(func.max(t.c.seq))).scalar()
            if newest is None:
                return 0
            count = db.execute(delete(t).where(t.c.at < cutoff, t.c.seq < newest)).rowcount
            # The edge first, then a plain DELETE: MySQL refuses a DELETE whose subquery reads its own table.
            edge = db.execute(select(t.c.seq).order_by(t.c.seq.desc()).limit(1).offset(policy.max_rows)).scalar()
            if edge is not None:
                count += db.execute(delete(t).where(t.c.seq <= edge)).rowcount
        return int(count)

    def maybe_prune(self) -> None:
        """Prune if this process has not in the last ``retention.PRUNE_INTERVAL_SECONDS``; never raises."""
        key = (os.getpid(), self.engine.url.render_as_string(hide_password=False))
        now = time.monotonic()
        with _due_lock:
            if now < _due.get(key, 0.0):
                return
            _due[key] = now + retention.PRUNE_INTERVAL_SECONDS
        try:
            self.prune()
        except Exception as error:  # a prune that fails must not fail the action that wrote the entry
            log.warning("pruning the audit trail failed (tried again later): %s", error)


_due: dict[tuple[int, str], float] = {}
_due_lock = threading.Lock()


def _get(db: Connection, action_id: str) -> AuditEntry:
    row = db.execute(select(tables.audit.c.body).where(tables.audit.c.id == action_id)).first()
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
