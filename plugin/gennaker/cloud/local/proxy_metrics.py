"""The local load balancer's metrics: per server group and second, written to the ``lb_metrics`` table.

Per server group and second: requests, errors (5xx answers and proxy errors: 502/504), latency sum, max,
p50/p90/p99 and a histogram, flushed every second into the ``lb_metrics`` table (:data:`METRICS_SCHEMA`) by
:class:`MetricsRecorder`, read by :func:`read_metrics`. A request counts in the second it ended, for the group
that answered it (or the last one tried). Rows are pruned by :mod:`gennaker.cloud.local.retention` (older than
2 days by default, and a deleted load balancer's at once), with or without a proxy running.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gennaker.cloud.local import retention
from gennaker.cloud.local.state import StateStore
from gennaker.errors import InvalidRequest

logger = logging.getLogger("gennaker.cloud.local.proxy")

METRICS_TABLE = "lb_metrics"
HISTOGRAM_BOUNDS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Upper bounds of the latency histogram's buckets; one more bucket counts everything above the last."""


METRICS_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {METRICS_TABLE} (
    account TEXT NOT NULL, region TEXT NOT NULL, load_balancer TEXT NOT NULL, server_group TEXT NOT NULL,
    ts INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
    latency_sum_ms REAL NOT NULL, latency_max_ms REAL NOT NULL,
    latency_p50_ms REAL, latency_p90_ms REAL, latency_p99_ms REAL, histogram TEXT NOT NULL,
    PRIMARY KEY (account, region, load_balancer, server_group, ts))""",
    f"CREATE INDEX IF NOT EXISTS {METRICS_TABLE}_server_group ON {METRICS_TABLE} (account, region, server_group, ts)",
    f"CREATE INDEX IF NOT EXISTS {METRICS_TABLE}_ts ON {METRICS_TABLE} (ts)",  # the retention's age prune
)
"""The metrics table: one row per load balancer, server group and second (``ts``, unix seconds).

``histogram`` is a JSON list of counts, one per bound of :data:`HISTOGRAM_BOUNDS_MS` plus
one for slower requests, so buckets can be merged over any window.
"""


@dataclass(frozen=True)
class MetricBucket:
    """One second of one server group's traffic through one load balancer (a row of ``lb_metrics``)."""

    account: str
    region: str
    load_balancer: str
    """The load balancer's name; several joined by ``,`` when :func:`read_metrics` merged them."""
    server_group: str
    ts: int
    """The second (unix time) the requests ended in."""
    requests: int
    errors: int
    latency_sum_ms: float
    latency_max_ms: float
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    histogram: tuple[int, ...]

    @property
    def latency_avg_ms(self) -> float | None:
        """Mean latency, None without requests."""
        return self.latency_sum_ms / self.requests if self.requests else None


def ensure_metrics_table(store: StateStore) -> None:
    """Create the ``lb_metrics`` table and its index if they do not exist."""
    with store.transaction() as db:
        for statement in METRICS_SCHEMA:
            db.execute(statement)


def forget_metrics(store: StateStore, account: str, region: str, load_balancer: str) -> int:
    """Delete a deleted load balancer's rows (the retention would, later); how many there were."""
    with store.transaction() as db:
        return retention.forget_metrics_of(db, account, region, load_balancer)


def metrics_max_age_seconds() -> float:
    """How long ``lb_metrics`` rows are kept (``GENNAKER_LB_METRICS_RETENTION_HOURS``; 2 days)."""
    try:
        return retention.Retention.from_env().lb_metrics_max_age.total_seconds()
    except InvalidRequest as error:  # a bad setting must not stop the proxy: keep the default
        logger.warning("%s; keeping metrics for the default time", error)
        return retention.Retention().lb_metrics_max_age.total_seconds()


def read_metrics(
    store: StateStore,
    account: str,
    region: str,
    server_group: str,
    start: datetime | float,
    end: datetime | float,
    *,
    load_balancer: str | None = None,
) -> list[MetricBucket]:
    """A server group's one-second buckets with ``start <= ts < end``, oldest first.

    ``start`` and ``end`` are datetimes or unix seconds. Without ``load_balancer``, the
    buckets of one second through several load balancers are merged (quantiles are then
    estimated from the merged histogram). Seconds without traffic have no bucket.
    """
    low, high = math.ceil(_unix(start)), math.ceil(_unix(end))
    sql = (
        f"SELECT load_balancer, ts, requests, errors, latency_sum_ms, latency_max_ms, latency_p50_ms, "
        f"latency_p90_ms, latency_p99_ms, histogram FROM {METRICS_TABLE} "
        f"WHERE account = ? AND region = ? AND server_group = ? AND ts >= ? AND ts < ?"
    )
    params: list[Any] = [account, region, server_group, low, high]
    if load_balancer is not None:
        sql += " AND load_balancer = ?"
        params.append(load_balancer)
    try:
        with store.snapshot() as db:
            rows = db.execute(sql + " ORDER BY ts, load_balancer", params).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise
    buckets: list[MetricBucket] = []
    for row in rows:
        bucket = MetricBucket(
            account=account,
            region=region,
            load_balancer=row[0],
            server_group=server_group,
            ts=row[1],
            requests=row[2],
            errors=row[3],
            latency_sum_ms=row[4],
            latency_max_ms=row[5],
            latency_p50_ms=row[6],
            latency_p90_ms=row[7],
            latency_p99_ms=row[8],
            histogram=tuple(json.loads(row[9])),
        )
        if buckets and buckets[-1].ts == bucket.ts:
            buckets[-1] = _merge_buckets(buckets[-1], bucket)
        else:
            buckets.append(bucket)
    return buckets


def histogram_quantile(histogram: Sequence[int], q: float, max_ms: float | None = None) -> float | None:
    """Estimate the ``q`` quantile (0..1) from a latency histogram (linear within a bucket); None if empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = max(1.0, q * total)
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            lower = HISTOGRAM_BOUNDS_MS[index - 1] if index else 0.0
            if index >= len(HISTOGRAM_BOUNDS_MS):
                return max_ms if max_ms is not None else lower
            upper = HISTOGRAM_BOUNDS_MS[index]
            estimate = lower + (upper - lower) * (rank - seen) / count
            return min(estimate, max_ms) if max_ms is not None else estimate
        seen += count
    return max_ms  # pragma: no cover - rank <= total always lands in a bucket


def _merge_buckets(a: MetricBucket, b: MetricBucket) -> MetricBucket:
    histogram = tuple(x + y for x, y in itertools.zip_longest(a.histogram, b.histogram, fillvalue=0))
    latency_max = max(a.latency_max_ms, b.latency_max_ms)
    return MetricBucket(
        a.account,
        a.region,
        ",".join(sorted({*a.load_balancer.split(","), *b.load_balancer.split(",")})),
        a.server_group,
        a.ts,
        a.requests + b.requests,
        a.errors + b.errors,
        a.latency_sum_ms + b.latency_sum_ms,
        latency_max,
        histogram_quantile(histogram, 0.5, latency_max),
        histogram_quantile(histogram, 0.9, latency_max),
        histogram_quantile(histogram, 0.99, latency_max),
        histogram,
    )


def _unix(moment: datetime | float) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)


class _Bucket:
    """One server group's traffic in one second, in memory."""

    __slots__ = ("errors", "histogram", "latencies", "latency_max", "latency_sum", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.latency_max = 0.0
        self.latencies: list[float] = []
        self.histogram = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)

    def add(self, latency_ms: float, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        self.latency_sum += latency_ms
        self.latency_max = max(self.latency_max, latency_ms)
        self.latencies.append(latency_ms)
        self.histogram[bisect.bisect_left(HISTOGRAM_BOUNDS_MS, latency_ms)] += 1

    def merge(self, other: _Bucket) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_sum += other.latency_sum
        self.latency_max = max(self.latency_max, other.latency_max)
        self.latencies.extend(other.latencies)
        self.histogram = [x + y for x, y in zip(self.histogram, other.histogram, strict=True)]

    def quantile(self, q: float) -> float | None:
        """Exact (nearest rank) from the latencies kept in memory."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class MetricsRecorder:
    """Per-second buckets per server group, in memory, written to ``lb_metrics`` by :meth:`flush`."""

    def __init__(self, account: str, region: str, load_balancer: str) -> None:
        self.account, self.region, self.load_balancer = account, region, load_balancer
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, int], _Bucket] = {}

    def record(self, server_group: str, latency_ms: float, error: bool, now: float | None = None) -> None:
        second = int(time.time() if now is None else now)
        with self._lock:
            bucket = self._buckets.get((server_group, second))
            if bucket is None:
                bucket = self._buckets[(server_group, second)] = _Bucket()
            bucket.add(latency_ms, error)

    def flush(self, store: StateStore, *, final: bool = False) -> int:
        """Write the finished seconds (all of them if ``final``); returns the rows written.

        Buckets stay in memory if the write fails, for the next flush. A row that exists
        already (a restart within a second) is merged with.
        """
        current = int(time.time())
        with self._lock:
            done = {key: b for key, b in self._buckets.items() if final or key[1] < current}
            for key in done:
                del self._buckets[key]
        if not done:
            return 0
        try:
            with store.transaction() as db:
                for (group, second), bucket in sorted(done.items(), key=lambda item: item[0][1]):
                    self._write(db, group, second, bucket)
        except Exception:
            with self._lock:
                for key, bucket in done.items():
                    kept = self._buckets.get(key)
                    if kept is None:
                        self._buckets[key] = bucket
                    else:
                        kept.merge(bucket)
            raise
        return len(done)

    def _write(self, db: sqlite3.Connection, group: str, second: int, bucket: _Bucket) -> None:
        key = (self.account, self.region, self.load_balancer, group, second)
        row = db.execute(
            f"SELECT requests, errors, latency_sum_ms, latency_max_ms, histogram FROM {METRICS_TABLE} "
            "WHERE account = ? AND region = ? AND load_balancer = ? AND server_group = ? AND ts = ?",
            key,
        ).fetchone()
        requests, errors = bucket.requests, bucket.errors
        latency_sum, latency_max, histogram = bucket.latency_sum, bucket.latency_max, bucket.histogram
        if row is None:
            quantiles = [bucket.quantile(q) for q in (0.5, 0.9, 0.99)]
        else:
            requests, errors, latency_sum = requests + row[0], errors + row[1], latency_sum + row[2]
            latency_max = max(latency_max, row[3])
            histogram = [x + y for x, y in itertools.zip_longest(histogram, json.loads(row[4]), fillvalue=0)]
            quantiles = [histogram_quantile(histogram, q, latency_max) for q in (0.5, 0.9, 0.99)]
        db.execute(
            f"INSERT OR REPLACE INTO {METRICS_TABLE} (account, region, load_balancer, server_group, ts, requests, "
            "errors, latency_sum_ms, latency_max_ms, latency_p50_ms, latency_p90_ms, latency_p99_ms, histogram) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, requests, errors, latency_sum, latency_max, *quantiles, json.dumps(histogram)),
        )

    def prune(self, store: StateStore, older_than: float) -> None:
        """Forget this load balancer's buckets before ``older_than`` (unix seconds)."""
        with store.transaction() as db:
            db.execute(
                f"DELETE FROM {METRICS_TABLE} WHERE account = ? AND region = ? AND load_balancer = ? AND ts < ?",
                (self.account, self.region, self.load_balancer, int(older_than)),
            )


__all__ = [
    "HISTOGRAM_BOUNDS_MS",
    "METRICS_SCHEMA",
    "METRICS_TABLE",
    "MetricBucket",
    "MetricsRecorder",
    "ensure_metrics_table",
    "forget_metrics",
    "histogram_quantile",
    "metrics_max_age_seconds",
    "read_metrics",
]
