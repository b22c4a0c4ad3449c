"""How long the local state keeps what it records: events, operations, lb_metrics (and the audit trail's policy).

Every table that grows with use has a retention by age and by count, so a busy machine's
``state.db`` stays bounded without anyone running a cleanup job:

=====================  ====================================  ==========================================
table                  kept                                  never pruned
=====================  ====================================  ==========================================
``events``             30 days, newest 100,000 rows          the newest rows
``operations``         30 days, newest 100,000 rows          operations still RUNNING
``web_actions``        30 days, newest 100,000 rows          the newest rows (the audit trail of earlier
                                                             versions; now ``gennaker_audit``, below)
``lb_metrics``         2 days, newest 1,000,000 rows;        the newest rows of a live load balancer
                       rows of deleted load balancers
=====================  ====================================  ==========================================

The Clusters page's audit trail lives in gennaker's shared database (``gennaker_audit``,
:mod:`gennaker.web.audit`) and keeps the same 30 days / 100,000 rows with this module's
:class:`Retention` and :data:`PRUNE_INTERVAL_SECONDS`: :meth:`AuditLog.prune` runs as it writes.

Set through the environment of every Airflow component (they share the state file):
``GENNAKER_RETENTION_DAYS``, ``GENNAKER_RETENTION_ROWS``, ``GENNAKER_LB_METRICS_RETENTION_HOURS``
and ``GENNAKER_LB_METRICS_RETENTION_ROWS``.

Pruning is part of writing: :meth:`StateStore.transaction` calls :func:`maybe_prune` after
its outermost commit, which prunes at most once per :data:`PRUNE_INTERVAL_SECONDS` per
process and state file (and at the first write, when the store opens). So it works with
no load-balancer proxy running; deleting a load balancer also drops its metrics at once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from gennaker.errors import InvalidRequest

if TYPE_CHECKING:
    from gennaker.cloud.local.state_db import StateFile

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 60.0
"""At most one prune per process and state file in this many seconds."""
METRICS_TABLE = "lb_metrics"  # proxy_metrics.METRICS_TABLE (the proxy imports the store, so not imported here)
AUDIT_TABLE = "web_actions"  # the audit trail's table before it moved to gennaker_audit: kept bounded while it stays
FINISHED_OPERATIONS = ("SUCCEEDED", "FAILED")


@dataclass(frozen=True)
class Retention:
    """What the local state keeps: by age and by count (see the module docstring)."""

    max_age: timedelta = timedelta(days=30)
    max_rows: int = 100_000
    lb_metrics_max_age: timedelta = timedelta(days=2)
    lb_metrics_max_rows: int = 1_000_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Retention:
        """The defaults, changed by ``GENNAKER_RETENTION_*`` / ``GENNAKER_LB_METRICS_RETENTION_*``."""
        env = os.environ if environ is None else environ
        default = cls()
        return cls(
            max_age=timedelta(days=_number(env, "GENNAKER_RETENTION_DAYS", default.max_age.days)),
            max_rows=_number(env, "GENNAKER_RETENTION_ROWS", default.max_rows),
            lb_metrics_max_age=timedelta(
                hours=_number(
                    env, "GENNAKER_LB_METRICS_RETENTION_HOURS", int(default.lb_metrics_max_age / timedelta(hours=1))
                )
            ),
            lb_metrics_max_rows=_number(env, "GENNAKER_LB_METRICS_RETENTION_ROWS", default.lb_metrics_max_rows),
        )


def _number(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {text!r}") from None
    if value < 1:
        raise InvalidRequest(f"{name} must be at least 1, not {value}")
    return value


_due: dict[tuple[int, str], float] = {}
_due_lock = threading.Lock()


def maybe_prune(store: StateFile) -> None:
    """Prune ``store`` if this process has not in the last :data:`PRUNE_INTERVAL_SECONDS`; never raises."""
    key = (os.getpid(), str(store.path))
    now = time.monotonic()
    with _due_lock:
        if now < _due.get(key, 0.0):
            return
        _due[key] = now + PRUNE_INTERVAL_SECONDS
    try:
        prune(store)
    except Exception as error:  # a prune that fails (a lock held too long) must not fail the write that ran it
        log.warning("pruning %s failed (tried again within %gs): %s", store.path, PRUNE_INTERVAL_SECONDS, error)


def prune(store: StateFile, policy: Retention | None = None, now: datetime | None = None) -> dict[str, int]:
    """Delete what the retention no longer keeps, in one transaction; the rows deleted per table."""
    policy = policy or Retention.from_env()
    now = now or datetime.now(timezone.utc)
    cutoff = _ts(now - policy.max_age)
    deleted: dict[str, int] = {}
    with store.transaction() as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        deleted["events"] = _prune_log(db, "events", "id", "at", cutoff, policy.max_rows)
        deleted["operations"] = _prune_operations(db, cutoff, policy.max_rows)
        if AUDIT_TABLE in tables:
            deleted[AUDIT_TABLE] = _prune_log(db, AUDIT_TABLE, "seq", "at", cutoff, policy.max_rows)
        if METRICS_TABLE in tables:
            deleted[METRICS_TABLE] = _prune_metrics(db, now, policy)
    return deleted


def forget_metrics_of(db: sqlite3.Connection, account: str, region: str, load_balancer: str) -> int:
    """Delete a load balancer's ``lb_metrics`` rows (it was deleted); how many there were."""
    try:
        return db.execute(
            f"DELETE FROM {METRICS_TABLE} WHERE account = ? AND region = ? AND load_balancer = ?",
            (account, region, load_balancer),
        ).rowcount
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return 0  # no proxy ever recorded a request
        raise


def _prune_log(db: sqlite3.Connection, table: str, order: str, at: str, cutoff: str, max_rows: int) -> int:
    """Rows older than ``cutoff``, then all but the newest ``max_rows`` (the newest row always stays)."""
    newest = db.execute(f"SELECT MAX({order}) FROM {table}").fetchone()[0]
    if newest is None:
        return 0
    count = db.execute(f"DELETE FROM {table} WHERE {at} < ? AND {order} < ?", (cutoff, newest)).rowcount
    count += db.execute(
        f"DELETE FROM {table} WHERE {order} <= (SELECT {order} FROM {table} ORDER BY {order} DESC LIMIT 1 OFFSET ?)",
        (max_rows,),
    ).rowcount
    return count


def _prune_operations(db: sqlite3.Connection, cutoff: str, max_rows: int) -> int:
    """Finished operations older than ``cutoff`` or beyond the newest ``max_rows``; RUNNING ones stay."""
    finished = ", ".join("?" for _ in FINISHED_OPERATIONS)
    count = db.execute(
        f"DELETE FROM operations WHERE status IN ({finished}) AND updated < ?", (*FINISHED_OPERATIONS, cutoff)
    ).rowcount
    count += db.execute(
        f"DELETE FROM operations WHERE status IN ({finished}) AND rowid IN "
        "(SELECT rowid FROM operations ORDER BY started DESC, rowid DESC LIMIT -1 OFFSET ?)",
        (*FINISHED_OPERATIONS, max_rows),
    ).rowcount
    return count


def _prune_metrics(db: sqlite3.Connection, now: datetime, policy: Retention) -> int:
    """Buckets older than the metrics' age, of load balancers that no longer exist, beyond the count."""
    oldest = int((now - policy.lb_metrics_max_age).timestamp())
    count = db.execute(f"DELETE FROM {METRICS_TABLE} WHERE ts < ?", (oldest,)).rowcount
    count += db.execute(
        f"DELETE FROM {METRICS_TABLE} WHERE NOT EXISTS (SELECT 1 FROM load_balancers AS lb WHERE "
        f"lb.account = {METRICS_TABLE}.account AND lb.region = {METRICS_TABLE}.region AND "
        f"lb.name = {METRICS_TABLE}.load_balancer)"
    ).rowcount
    row = db.execute(
        f"SELECT ts FROM {METRICS_TABLE} ORDER BY ts DESC LIMIT 1 OFFSET ?", (policy.lb_metrics_max_rows,)
    ).fetchone()
    if row is not None:
        count += db.execute(f"DELETE FROM {METRICS_TABLE} WHERE ts <= ?", (row[0],)).rowcount
    return count


def _ts(moment: datetime) -> str:
    """The stored form of a time (``state_db.ts``, which imports this module): sortable UTC text."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = ["PRUNE_INTERVAL_SECONDS", "Retention", "forget_metrics_of", "maybe_prune", "prune"]
