"""Per-cluster locks: two pipelines deploying one cluster never interleave.

A deploy, a promote and an automatic rollback take the lock of their cluster
(``<account>/<region>/<cluster>``) before their first change and keep it until their
last; whoever else wants it waits (deferred, in the triggerer) and says whom it waits
for. The lock is a row of the ``gennaker_locks`` table in gennaker's shared database
(:mod:`gennaker.db`: by default Airflow's metadata database), which every worker,
triggerer and API server of the deployment reaches, on one machine or many (Celery,
Kubernetes), so it holds across pipelines, runs, processes and hosts.

- **Owner.** A lock is owned by a task of a DAG run (``dag/run/task``), not by a
  process: a retried or restarted task takes its own lock back at once and carries on.
- **Lease.** A lock expires ``lease`` after it was last taken, so a run that vanished
  (its worker killed and no retry) does not block the cluster forever; a holder renews
  it each time it resumes. The lease is the stage's timeout (default one hour).
- **Atomic.** Taking is one conditional ``UPDATE`` (the row is free, expired or ours),
  else an ``INSERT`` that fails on the primary key when someone holds it: of two
  processes asking at once, on SQLite, PostgreSQL or MySQL, one gets it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, case, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gennaker.db import tables
from gennaker.db.engine import open_engine

DEFAULT_LEASE = timedelta(hours=1)
_TRIES = 5  # a lock freed between our UPDATE and INSERT: try again (each try ends in a decision but for that race)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, since when, and until when at the latest."""

    resource: str
    owner: str
    note: str
    acquired: datetime
    expires: float  # epoch seconds

    def describe(self) -> str:
        since = self.acquired.strftime("%H:%M:%S UTC")
        return f"{self.owner} ({self.note}, since {since})" if self.note else f"{self.owner} (since {since})"


def cluster_resource(account: str, region: str, cluster: str) -> str:
    """The lock name of a cluster in an account and region."""
    return f"cluster:{account}/{region}/{cluster}"


class ClusterLocks:
    """The lock table. Cheap to build (the engine is one per process); every call is its own transaction.

    :param path: empty (the default): the shared database (:func:`gennaker.db.engine.state_db_url`),
        which ``gennaker db migrate`` must have prepared. A SQLite file's path: a private lock table in
        that file, created on first use (tests, tools of one machine).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        # ``path`` stays a string: the deploy stage hands ``str(locks.path)`` to its trigger ("" = shared).
        self.path = str(path) if path else ""
        self._engine = open_engine(self.path)  # fails here with "run `gennaker db migrate`", not at the first lock

    def engine(self) -> Engine:
        """The engine of the lock table (one per process and database)."""
        return self._engine

    def acquire(self, resource: str, owner: str, *, note: str = "", lease: timedelta = DEFAULT_LEASE) -> Holder | None:
        """Take (or renew) the lock; ``None`` when this owner holds it now, else the holder to wait for."""
        t = tables.locks
        holder: Holder | None = None
        for _ in range(_TRIES):
            now = time.time()
            expires = now + lease.total_seconds()
            with self.engine().begin() as conn:
                # ``acquired`` first: MySQL evaluates SET left to right, and it must see the old owner.
                taken = conn.execute(
                    update(t)
                    .where(and_(t.c.resource == resource, or_(t.c.owner == owner, t.c.expires <= now)))
                    .ordered_values(
                        (t.c.acquired, case((t.c.owner == owner, t.c.acquired), else_=_now_text())),
                        (t.c.owner, owner),
                        (t.c.note, note),
                        (t.c.expires, expires),
                    )
                ).rowcount
            if taken:
                return None
            try:
                with self.engine().begin() as conn:
                    conn.execute(
                        insert(t).values(
                            resource=resource, owner=owner, note=note, acquired=_now_text(), expires=expires
                        )
                    )
                return None
            except IntegrityError:  # someone holds it (or took it a moment ago): who?
                holder = self._row(resource)
            if holder is not None and holder.owner != owner and holder.expires > time.time():
                return holder
        return holder  # pragma: no cover - the lock changed hands _TRIES times in a row

    def release(self, resource: str, owner: str) -> bool:
        """Give the lock up if this owner holds it; whether it did."""
        t = tables.locks
        with self.engine().begin() as conn:
            return bool(conn.execute(delete(t).where(and_(t.c.resource == resource, t.c.owner == owner))).rowcount)

    def holder(self, resource: str) -> Holder | None:
        """The current holder, or ``None`` when the lock is free (or its lease ran out)."""
        held = self._row(resource)
        if held is None or held.expires <= time.time():
            return None
        return held

    def _row(self, resource: str) -> Holder | None:
        t = tables.locks
        with self.engine().connect() as conn:
            row: Any = conn.execute(
                select(t.c.owner, t.c.note, t.c.acquired, t.c.expires).where(t.c.resource == resource)
            ).first()
        if row is None:
            return None
        return Holder(resource, row[0], row[1], datetime.fromisoformat(row[2]), float(row[3]))


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat()


__all__ = ["DEFAULT_LEASE", "ClusterLocks", "Holder", "cluster_resource"]
