"""Per-cluster locks: one holder at a time, owners re-enter, leases run out, many processes agree.

The lock table is the shared one (``gennaker_locks``), here in the test's SQLite file
(the ``state_db`` fixture points GENNAKER_STATE_DB at it).
"""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta

from gennaker.cloud.locks import ClusterLocks, cluster_resource

R = cluster_resource("local", "local", "hello-prod")


def test_one_holder_and_the_owner_reenters(state_db: str) -> None:
    locks = ClusterLocks()
    assert R == "cluster:local/local/hello-prod"
    assert locks.acquire(R, "a/run1/deploy", note="deploy stage") is None
    held = locks.acquire(R, "b/run9/deploy")
    assert held is not None and held.owner == "a/run1/deploy" and "deploy stage" in held.describe()
    assert locks.acquire(R, "a/run1/deploy") is None  # a retry of the same task takes it back
    assert not locks.release(R, "b/run9/deploy")  # only the owner releases
    assert locks.release(R, "a/run1/deploy")
    assert locks.holder(R) is None
    assert locks.acquire(R, "b/run9/deploy") is None


def test_a_lease_runs_out(state_db: str) -> None:
    locks = ClusterLocks()
    assert locks.acquire(R, "gone/run/deploy", lease=timedelta(seconds=0.2)) is None
    assert locks.acquire(R, "next/run/deploy") is not None
    time.sleep(0.3)
    assert locks.holder(R) is None
    assert locks.acquire(R, "next/run/deploy") is None


def test_locks_of_other_clusters_are_independent(state_db: str) -> None:
    locks = ClusterLocks()
    assert locks.acquire(R, "a") is None
    assert locks.acquire(cluster_resource("local", "local", "hello-staging"), "b") is None


def _contend(owner: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    # A spawned process: it finds the database as any worker does, through GENNAKER_STATE_DB.
    out.put((owner, ClusterLocks().acquire(R, owner) is None))


def test_of_many_processes_asking_at_once_exactly_one_gets_it(state_db: str) -> None:
    ClusterLocks()
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_contend, args=(f"run{i}", out)) for i in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    winners = [owner for owner, won in results if won]
    assert len(winners) == 1
    holder = ClusterLocks().holder(R)
    assert holder is not None and holder.owner == winners[0]
