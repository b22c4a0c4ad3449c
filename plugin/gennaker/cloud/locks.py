"""Per-cluster locks: two pipelines deploying one cluster never interleave.

A deploy, a promote and an automatic rollback take the lock of their cluster
(``<account>/<region>/<cluster>``) before their first change and keep it until their
last; whoever else wants it waits (deferred, in the triggerer) and says whom it waits
for. The lock lives in ``<gennaker home>/locks.db``, one SQLite file that every worker
and the triggerer on the machine (or on a shared volume) open, so it holds across
pipelines, runs and processes.

- **Owner.** A lock is owned by a task of a DAG run (``dag/run/task``), not by a
  process: a retried or restarted task takes its own lock back at once and carries on.
- **Lease.** A lock expires ``lease`` after it was last taken, so a run that vanished
  (its worker killed and no retry) does not block the cluster forever; a holder renews
  it each time it resumes. The lease is the stage's timeout (default one hour).
- **Atomic.** Taking and releasing are ``BEGIN IMMEDIATE`` transactions: of two
  processes asking at once, one gets it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gennaker.cloud.local import privfiles
from gennaker.paths import gennaker_home

DEFAULT_LEASE = timedelta(hours=1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS locks (
    resource TEXT PRIMARY KEY, owner TEXT NOT NULL, note TEXT NOT NULL,
    acquired TEXT NOT NULL, expires REAL NOT NULL)
"""


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
    """The lock table. Cheap to build; every call opens and closes its own connection."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else gennaker_home() / "locks.db"
        privfiles.private_file(self.path)  # 0600 (its -wal and -shm take its mode) in 0700 folders
        with self._connect() as conn:
            conn.execute(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            yield conn
        finally:
            conn.close()

    def acquire(self, resource: str, owner: str, *, note: str = "", lease: timedelta = DEFAULT_LEASE) -> Holder | None:
        """Take (or renew) the lock; ``None`` when this owner holds it now, else the holder to wait for."""
        now = time.time()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT owner, note, acquired, expires FROM locks WHERE resource = ?", (resource,)
                ).fetchone()
                if row is not None and row[0] != owner and row[3] > now:
                    conn.execute("COMMIT")
                    return Holder(resource, row[0], row[1], datetime.fromisoformat(row[2]), row[3])
                acquired = row[2] if row is not None and row[0] == owner else _now_text()
                conn.execute(
                    "INSERT INTO locks (resource, owner, note, acquired, expires) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (resource) DO UPDATE SET owner = excluded.owner, note = excluded.note, "
                    "acquired = excluded.acquired, expires = excluded.expires",
                    (resource, owner, note, acquired, now + lease.total_seconds()),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return None

    def release(self, resource: str, owner: str) -> bool:
        """Give the lock up if this owner holds it; whether it did."""
        with self._connect() as conn:
            cur = conn.execute("DELETE FROM locks WHERE resource = ? AND owner = ?", (resource, owner))
            return cur.rowcount > 0

    def holder(self, resource: str) -> Holder | None:
        """The current holder, or ``None`` when the lock is free (or its lease ran out)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT owner, note, acquired, expires FROM locks WHERE resource = ?", (resource,)
            ).fetchone()
        if row is None or row[3] <= time.time():
            return None
        return Holder(resource, row[0], row[1], datetime.fromisoformat(row[2]), row[3])


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat()


__all__ = ["DEFAULT_LEASE", "ClusterLocks", "Holder", "cluster_resource"]
