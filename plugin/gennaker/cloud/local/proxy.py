"""The local provider's load balancer: an HTTP reverse proxy on 127.0.0.1, one process per load balancer.

Run as ``python -m gennaker.cloud.local.proxy --home H --account A --region R --load-balancer NAME``,
normally through :func:`ensure_running` (idempotent; detached; log in
``<home>/local/logs/lb-<name>.log``) and :func:`stop`. The process:

- listens on ``127.0.0.1:<port>`` for every listener of the load balancer (listeners added
  or removed later are opened and closed as the state changes). Every listener speaks plain
  HTTP/1.1, also one declared ``HTTPS`` or ``TCP`` (no TLS locally; logged once);
- re-reads its routing table from the state store every 0.25 s (one snapshot read of a few
  rows, parsed again only when a row changed), so enable, disable, resize, health and
  weight changes take effect within about a quarter second;
- serves the **Up** instances of the **enabled** server groups in the load balancer's
  account and region that name it in ``ServerGroup.load_balancers`` or belong to one of
  ``LoadBalancer.clusters``. An instance is reached at ``Instance.port``, else the
  listener's ``target_port``, else the listener's port;
- **weights**: ``LoadBalancer.weights`` maps a server group to an integer share out of
  100 (a canary takes e.g. 10); groups without an entry share what is left of 100
  equally; when every serving group has an entry the weights are relative. Only groups
  with an Up instance take part. A weight of 0 takes no traffic while a group with a
  positive weight can serve; if none can, the rest share equally (better than a 503).
  A group is picked by smooth weighted round robin (nginx's: exact shares, evenly
  spread; the rotation survives a rebuilt table), then one of its Up instances round robin;
- **never drops a request on enable/disable**: each request is routed with the table of
  the moment it arrived, so requests in flight to a group being disabled finish there
  (draining), and only new ones follow the new table. When the connection to the chosen
  instance fails (refused: it just went away) the request is sent to another instance,
  at most :data:`MAX_ATTEMPTS` in all, and that instance is passed over for
  :data:`EJECT_SECONDS`. An Up instance whose recorded process has ended (the supervisor's
  record of it: ``/proc/<pid>`` and its start time, checked at every refresh) gets nothing
  more, even while its row says Up, until its supervisor reports it Up again. A request is
  re-sent only if its body was buffered (every body
  up to :data:`MAX_BUFFERED_BODY`; there is none for GET/HEAD/OPTIONS), and, once it
  reached an instance that then failed before answering, only for idempotent methods
  (GET, HEAD, OPTIONS, PUT, DELETE, TRACE). Nothing to route to is a ``503`` with a plain
  message; every attempt failing is a ``502``; an instance not answering within
  :data:`UPSTREAM_TIMEOUT` a ``504``;
- forwards method, path, headers (hop-by-hop ones dropped; ``Host`` kept as the client
  sent it, as an ALB does, so the app builds the right links; ``X-Forwarded-For``
  appended, ``X-Forwarded-Proto: http``, ``X-Forwarded-Port``) and body, streams the
  answer back (re-chunked when its length is unknown) and adds
  ``X-Gennaker-Server-Group`` and ``X-Gennaker-Instance``. Connections to instances are
  kept alive per client connection (handler thread);
- **firewalls**: the local load balancer passes client addresses through to the
  instances, like an AWS NLB with client IP preservation, so a server group's own
  firewalls (``ServerGroup.firewalls``, looked up in the account and region, or
  ``global``) decide which clients may reach its instances: a group admits a client on
  a listener port when a ``tcp``/``all`` CIDR rule of one of its firewalls covers the
  client's address and that port. A group naming no firewall admits everyone (the
  default: nothing to enforce). Requests go only to groups that admit the client; if no
  serving group does, the client gets ``403`` and a log line. ``source_firewall`` rules
  never match a client address, and a named firewall that does not exist admits nobody;
- **metrics**: per server group and second, requests, errors (5xx answers and proxy
  errors: 502/504), latency sum, max, p50/p90/p99 and a histogram, flushed every second
  into the ``lb_metrics`` table (:data:`METRICS_SCHEMA`), read by :func:`read_metrics`.
  A request counts in the second it ended, for the group that answered it (or the last
  one tried). Requests refused before a group was chosen (403, 503) are not counted.
  Rows are pruned by :mod:`gennaker.cloud.local.retention` (older than 2 days by default, and a
  deleted load balancer's at once), with or without a proxy running;
- runs a watchdog thread that restarts the dead supervisors of the groups it serves
  (:mod:`local_watchdog`; never one stopped with ``stop()`` or of a group being destroyed);
- exits cleanly on SIGTERM or SIGINT: stops accepting, lets in-flight requests finish
  (at most ``--drain-timeout`` seconds), flushes metrics, exits 0. It exits the same
  way by itself when its load balancer is deleted from the store.

One proxy per load balancer: the process holds an exclusive ``flock`` on
``<home>/local/run/lb-<account>-<region>-<name>.pid`` for its lifetime (the file holds
its pid once it listens), so a stale pid file is one nobody has locked, whatever pid it
names. :func:`ensure_running` and :func:`stop` serialise on a second lock file next to it.

The API::

    ensure_running(store, home, account, region, name, *, timeout=30.0) -> pid
    stop(store, home, account, region, name, *, timeout=35.0) -> bool     # False: none ran
    running_pid(home, account, region, name) -> pid | None
    log_file(home, name) -> Path
    read_metrics(store, account, region, server_group, start, end, *, load_balancer=None)
        -> list[MetricBucket]                                              # start <= ts < end
    histogram_quantile(histogram, q, max_ms=None) -> float | None          # over merged buckets
    ListenerPortInUse (an InvalidRequest): "port 8080 on 127.0.0.1 is in use by another
        program; choose another port in the load balancer's listeners"

``home`` is the gennaker home (None: :func:`~gennaker.cloud.local.state.gennaker_home`); the
proxy opens ``store.path``, which need not lie under it.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import fcntl
import http.client
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import select
import signal
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, cast

from gennaker.cloud.local import logfiles, privfiles, procenv, retention
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.local.supervisor import SupervisorPaths, process_ended
from gennaker.cloud.model import Firewall, Health, Instance, LoadBalancer, ServerGroup
from gennaker.cloud.naming import parse_server_group_name
from gennaker.errors import CloudError, InvalidRequest, NotFound, ProviderUnavailable
from gennaker.paths import gennaker_home

logger = logging.getLogger("gennaker.cloud.local.proxy")

HOST = "127.0.0.1"
"""Where the local load balancers listen."""
REFRESH_SECONDS = 0.25
"""How often the routing table is re-read from the store."""
FLUSH_SECONDS = 1.0
"""How often finished one-second metric buckets are written to the store."""
MAX_ATTEMPTS = 5
"""Instances one request may be sent to (the first one and the retries)."""
EJECT_SECONDS = 2.0
"""How long an instance whose connection failed is passed over (unless nothing else is left)."""
CONNECT_TIMEOUT = 2.0
UPSTREAM_TIMEOUT = 60.0
"""How long an instance may take to answer (then 504)."""
CLIENT_IDLE_TIMEOUT = 75.0
"""How long an idle keep-alive client connection stays open."""
MAX_BUFFERED_BODY = 16 * 1024 * 1024
"""Request bodies up to this size are buffered (and so can be re-sent); larger ones are streamed."""
DRAIN_SECONDS = 30.0
"""Default bound on the wait for in-flight requests at shutdown."""
START_TIMEOUT = 30.0
METRICS_TABLE = "lb_metrics"
HISTOGRAM_BOUNDS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Upper bounds of the latency histogram's buckets; one more bucket counts everything above the last."""

EXIT_PORT_IN_USE = 3
EXIT_NOT_FOUND = 4
EXIT_ALREADY_RUNNING = 5

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

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_REPLACED = frozenset({"content-length", "expect", "host", "x-forwarded-for", "x-forwarded-proto"})
_RESPONSE_REPLACED = frozenset({"x-gennaker-server-group", "x-gennaker-instance"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")


class ListenerPortInUse(InvalidRequest):
    """A listener's port on 127.0.0.1 is taken by a program other than this load balancer's proxy."""

    default_hint = "choose another port in the load balancer's listeners"

    def __init__(self, port: int, *, hint: str | None = None) -> None:
        super().__init__(f"port {port} on {HOST} is in use by another program", hint=hint)
        self.port = port

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


# --------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------- routing


_Rule = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int, int]


@dataclass
class _Backend:
    """A serving server group with at least one Up instance."""

    group: str
    weight: float
    instances: tuple[Instance, ...]
    turn: Iterator[int]


class RoutingTable:
    """Where one load balancer sends requests, built from one read of the store. Thread-safe."""

    def __init__(
        self,
        lb: LoadBalancer,
        groups: Sequence[ServerGroup],
        firewalls: Mapping[str, Firewall],
        previous: RoutingTable | None = None,
        *,
        ended: frozenset[str] = frozenset(),
    ) -> None:
        """``previous``: the table this one replaces; its rotation state carries over, so shares stay
        exact even when the table is rebuilt more often than a low request rate goes round.
        ``ended``: instances whose process is gone, whatever their rows say (not sent anything).
        """
        self.lb = lb
        self.ended = ended
        self.serving = tuple(g for g in groups if g.enabled and serves(lb, g))
        up = {
            g.name: tuple(i for i in g.instances if i.health is Health.UP and i.id not in ended) for g in self.serving
        }
        available = [g.name for g in self.serving if up[g.name]]
        weights = share_weights(lb.weights, available)
        before = {b.group: b for b in previous.backends} if previous is not None else {}
        self.backends: tuple[_Backend, ...] = tuple(
            _Backend(n, weights[n], up[n], itertools.count(next(before[n].turn)) if n in before else itertools.count())
            for n in available
        )
        self.missing_firewalls: set[str] = set()
        self._policies: dict[str, tuple[_Rule, ...] | None] = {}
        for group in self.serving:
            self._policies[group.name] = self._policy(group, firewalls)
        self._open = all(policy is None for policy in self._policies.values())
        self._lock = threading.Lock()
        carried = {b.group: previous._current.get(b.group, 0.0) if previous else 0.0 for b in self.backends}
        mean = sum(carried.values()) / len(carried) if carried else 0.0
        self._current: dict[str, float] = {
            name: value - mean for name, value in carried.items()
        }  # smooth WRR wants sum 0
        self._firewalls = {name: firewalls[name] for g in self.serving for name in g.firewalls if name in firewalls}
        self._admitted: dict[tuple[str, int], frozenset[str]] = {}

    def _policy(self, group: ServerGroup, firewalls: Mapping[str, Firewall]) -> tuple[_Rule, ...] | None:
        if not group.firewalls:
            return None
        rules: list[_Rule] = []
        for name in group.firewalls:
            firewall = firewalls.get(name)
            if firewall is None:
                self.missing_firewalls.add(name)
                continue
            for rule in firewall.rules:
                if rule.cidr is not None and rule.protocol in ("tcp", "all"):
                    rules.append((ipaddress.ip_network(rule.cidr, strict=False), rule.port_from, rule.port_to))
        return tuple(rules)

    def admitted(self, address: str, port: int) -> frozenset[str] | None:
        """The serving groups whose firewalls let ``address`` in on ``port``; None: every group (no firewalls)."""
        if self._open:
            return None
        key = (address, port)
        cached = self._admitted.get(key)
        if cached is not None:
            return cached
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        names = frozenset(
            name
            for name, policy in self._policies.items()
            if policy is None
            or (
                ip is not None
                and any(ip.version == net.version and ip in net and lo <= port <= hi for net, lo, hi in policy)
            )
        )
        if len(self._admitted) > 4096:
            self._admitted.clear()
        self._admitted[key] = names
        return names

    def choose(
        self, admitted: frozenset[str] | None, exclude: set[str], avoid: frozenset[str]
    ) -> tuple[str, Instance] | None:
        """A server group by weight, then one of its Up instances round robin; None if nothing is left.

        ``exclude``: instance ids tried already; ``avoid``: instances recently failing,
        chosen only when nothing else is left.
        """
        for skip in (exclude | avoid, exclude) if avoid else (exclude,):
            candidates = [
                b
                for b in self.backends
                if (admitted is None or b.group in admitted) and any(i.id not in skip for i in b.instances)
            ]
            if not candidates:
                continue
            backend = self._pick(candidates)
            count = len(backend.instances)
            start = next(backend.turn)
            for step in range(count):
                instance = backend.instances[(start + step) % count]
                if instance.id not in skip:
                    return backend.group, instance
        return None

    def _pick(self, candidates: list[_Backend]) -> _Backend:
        """Smooth weighted round robin among ``candidates``."""
        if len(candidates) == 1:
            return candidates[0]
        positive = [b for b in candidates if b.weight > 0]
        weights = {b.group: b.weight for b in positive} if positive else {b.group: 1.0 for b in candidates}
        with self._lock:
            total = 0.0
            best: _Backend | None = None
            for backend in positive or candidates:
                weight = weights[backend.group]
                self._current[backend.group] += weight
                total += weight
                if best is None or self._current[backend.group] > self._current[best.group]:
                    best = backend
            assert best is not None
            self._current[best.group] -= total
            return best

    def describe(self) -> str:
        """One line for the log: who serves, with which weight and how many Up instances."""
        if not self.serving:
            return "no enabled server group serves it"
        parts = []
        by_name = {b.group: b for b in self.backends}
        for group in self.serving:
            backend = by_name.get(group.name)
            share = f"weight {backend.weight:g}, " if backend is not None else ""
            up = len(backend.instances) if backend is not None else 0
            firewalls = f", firewalls {','.join(group.firewalls)}" if group.firewalls else ""
            parts.append(f"{group.name} ({share}{up}/{len(group.instances)} up{firewalls})")
        text = "serving " + ", ".join(parts)
        for name, firewall in sorted(self._firewalls.items()):
            rules = [
                f"{r.protocol} {r.cidr or 'members of ' + str(r.source_firewall)} ports {r.port_from}-{r.port_to}"
                for r in firewall.rules
            ]
            text += f"; firewall {name} admits {', '.join(rules) or 'nobody'}"
        if self.missing_firewalls:
            text += f"; missing firewalls (admit nobody): {', '.join(sorted(self.missing_firewalls))}"
        if self.ended:
            text += f"; not sending to {', '.join(sorted(self.ended))}: their processes have ended"
        return text


def serves(lb: LoadBalancer, group: ServerGroup) -> bool:
    """The group names the load balancer, or belongs to one of its clusters (same account and region)."""
    return (
        group.account == lb.account
        and group.region == lb.region
        and (lb.name in group.load_balancers or group.cluster in lb.clusters)
    )


def share_weights(weights: Mapping[str, int], groups: Sequence[str]) -> dict[str, float]:
    """Each group's share: its weight, or an equal part of what the weighted ones leave of 100.

    When every group has a weight, weights are relative. If all come to 0, all share equally.
    """
    explicit = {name: float(weights[name]) for name in groups if name in weights}
    rest = [name for name in groups if name not in weights]
    shares = dict(explicit)
    if rest:
        left = max(0.0, 100.0 - sum(explicit.values())) / len(rest)
        shares.update(dict.fromkeys(rest, left))
    if groups and sum(shares.values()) <= 0:
        return dict.fromkeys(groups, 1.0)
    return shares


_Raw = tuple[str, tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]


def _read_raw(store: StateStore, account: str, region: str, name: str) -> _Raw | None:
    """The rows the routing table is built from, in one snapshot; None if the load balancer is gone."""
    with store.snapshot() as db:
        lb = db.execute(
            "SELECT body FROM load_balancers WHERE account = ? AND region = ? AND name = ?", (account, region, name)
        ).fetchone()
        if lb is None:
            return None
        groups = db.execute(
            "SELECT body FROM server_groups WHERE account = ? AND region = ? ORDER BY created, rowid",
            (account, region),
        ).fetchall()
        instances = db.execute(
            "SELECT server_group, body FROM instances WHERE account = ? AND region = ? ORDER BY rowid",
            (account, region),
        ).fetchall()
        firewalls = db.execute(
            "SELECT name, region, body FROM firewalls WHERE account = ? AND region IN (?, 'global') "
            "ORDER BY name, region = 'global'",
            (account, region),
        ).fetchall()
    return lb[0], tuple(groups), tuple(instances), tuple(firewalls)


_Parsed = tuple[LoadBalancer, list[ServerGroup], dict[str, Firewall]]


def _build_table(raw: _Raw, previous: RoutingTable | None = None) -> RoutingTable:
    return RoutingTable(*_parse(raw), previous)


def _parse(raw: _Raw) -> _Parsed:
    """The load balancer, the server groups attached to it (with their instances) and the firewalls."""
    lb = LoadBalancer.from_dict(json.loads(raw[0]))
    bodies = [json.loads(row[0]) for row in raw[1]]
    attached = [
        body
        for body in bodies
        if lb.name in body.get("load_balancers", ()) or parse_server_group_name(body["name"]).cluster in lb.clusters
    ]
    wanted = {body["name"] for body in attached}
    instances: dict[str, list[Any]] = {}
    for group_name, body in raw[2]:
        if group_name in wanted:
            instances.setdefault(group_name, []).append(json.loads(body))
    groups = [ServerGroup.from_dict({**body, "instances": instances.get(body["name"], [])}) for body in attached]
    firewalls: dict[str, Firewall] = {}
    for fw_name, _region, body in raw[3]:
        firewalls.setdefault(fw_name, Firewall.from_dict(json.loads(body)))  # the region's own before 'global'
    return lb, groups, firewalls


def ended_processes(home: Path, lb: LoadBalancer, groups: Sequence[ServerGroup]) -> frozenset[str]:
    """The Up instances of serving groups whose recorded process has ended (the supervisor's records tell)."""
    ended = set()
    for group in groups:
        if not (group.enabled and serves(lb, group)):
            continue
        try:
            paths = SupervisorPaths.of(home, group.account, group.region, group.name)
        except InvalidRequest:
            continue
        for instance in group.instances:
            if instance.health is Health.UP and process_ended(paths, instance.id) is not None:
                ended.add(instance.id)
    return frozenset(ended)


# --------------------------------------------------------------------------- the HTTP side


class _ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UpstreamFailure(Exception):
    """A request to an instance failed before any of its answer was relayed.

    ``connect``: no connection could be opened (refused: the instance is gone);
    ``sent``: the whole request had been written (the instance may have acted on it).
    """

    def __init__(self, error: BaseException, *, sent: bool, connect: bool = False, timeout: bool = False) -> None:
        super().__init__(str(error) or type(error).__name__)
        self.error, self.sent, self.connect, self.timeout = error, sent, connect, timeout


class _ListenerServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, port: int, proxy: ProxyProcess) -> None:
        self.port = port
        self.proxy = proxy
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS lookup): not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.port

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        logger.exception("error serving %s on port %d", client_address, self.port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gennaker-lb"
    timeout = CLIENT_IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self._upstreams: dict[str, http.client.HTTPConnection] = {}
        self._outgoing: list[tuple[str, str]] = []
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            for conn in self._upstreams.values():
                conn.close()
            self._upstreams.clear()

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.client_address[0], format % args)

    @property
    def _server(self) -> _ListenerServer:
        return cast(_ListenerServer, self.server)

    def _proxy(self) -> None:
        proxy = self._server.proxy
        proxy.enter()
        try:
            self._handle(proxy, time.monotonic())
        finally:
            proxy.leave()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _proxy

    def _handle(self, proxy: ProxyProcess, started: float) -> None:
        port = self._server.port
        client = self.client_address[0]
        table = proxy.table
        admitted = table.admitted(client, port)
        if admitted is not None and not admitted and table.serving:
            proxy.denied(client, port, table)
            self.close_connection = True
            self._reply(403, f"{client} may not reach load balancer {table.lb.name} on port {port} (firewall)")
            return
        try:
            body, streamed = self._read_body()
        except _ClientError as error:
            self.close_connection = True
            self._reply(error.status, str(error))
            return
        replayable = streamed is None
        self._outgoing = self._request_headers()
        tried: set[str] = set()
        failure: _UpstreamFailure | None = None
        group = ""
        for _attempt in range(MAX_ATTEMPTS):
            table = proxy.table  # retries may use a newer table
            pick = table.choose(admitted, tried, proxy.avoided())
            if pick is None:
                break
            group, instance = pick
            tried.add(instance.id)
            target = (instance.host, _target_port(instance, table.lb, port))
            try:
                response, conn, key = self._send(target, body, streamed, replayable)
            except _ClientError as error:  # the client's streamed body broke off
                self.close_connection = True
                self._reply(error.status, str(error))
                return
            except _UpstreamFailure as error:
                failure = error
                if error.connect:
                    proxy.eject(instance.id)
                logger.warning(
                    "%s %s to %s %s (%s:%d) failed: %s", self.command, self.path, group, instance.id, *target, error
                )
                if error.timeout or not replayable or (error.sent and self.command not in _IDEMPOTENT):
                    break
                continue
            status, ok = self._relay(response, conn, key, group, instance)
            proxy.metrics.record(group, (time.monotonic() - started) * 1000, status >= 500 or not ok)
            if proxy.access_log:
                logger.info("%s %s %s %d %s %s", client, self.command, self.path, status, group, instance.id)
            return
        if failure is None:
            self._reply(503, f"load balancer {table.lb.name} has no healthy instance to send the request to")
            return
        proxy.metrics.record(group, (time.monotonic() - started) * 1000, True)
        if failure.timeout:
            self._reply(504, f"load balancer {table.lb.name}: {group} did not answer within {UPSTREAM_TIMEOUT:g}s")
        else:
            self._reply(502, f"load balancer {table.lb.name}: no instance answered ({len(tried)} tried: {failure})")

    # ------------------------------------------------------------------- request

    def _read_body(self) -> tuple[bytes | None, int | None]:
        """``(buffered body, None)``, or ``(None, length)`` for a body too large to buffer, or ``(None, None)``."""
        coding = self.headers.get("Transfer-Encoding")
        length_text = self.headers.get("Content-Length")
        if coding is not None:
            if coding.split(",")[-1].strip().lower() != "chunked":
                raise _ClientError(501, f"transfer coding {coding!r} is not supported")
            return self._read_chunked(), None
        if length_text is None:
            return None, None
        try:
            length = int(length_text)
        except ValueError:
            raise _ClientError(400, f"bad Content-Length {length_text!r}") from None
        if length < 0:
            raise _ClientError(400, f"bad Content-Length {length_text!r}")
        if length > MAX_BUFFERED_BODY:
            return None, length
        body = self.rfile.read(length)
        if len(body) < length:
            raise _ClientError(400, "the request body ended early")
        return body, None

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise _ClientError(400, "the chunked request body ended early")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ClientError(400, "bad chunk size in the request body") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: dropped
                return b"".join(parts)
            total += size
            if total > MAX_BUFFERED_BODY:
                raise _ClientError(413, f"chunked request bodies are limited to {MAX_BUFFERED_BODY} bytes")
            data = self.rfile.read(size)
            if len(data) < size:
                raise _ClientError(400, "the chunked request body ended early")
            parts.append(data)
            self.rfile.readline()

    def _request_headers(self) -> list[tuple[str, str]]:
        port = self._server.port
        drop = _HOP_BY_HOP | _REQUEST_REPLACED | _connection_tokens(self.headers.get_all("Connection") or [])
        headers = [("Host", self.headers.get("Host") or f"{HOST}:{port}")]
        headers += [
            (k, v) for k, v in self.headers.items() if k.lower() not in drop and k.lower() != "x-forwarded-port"
        ]
        forwarded_for = [*(self.headers.get_all("X-Forwarded-For") or []), self.client_address[0]]
        headers += [
            ("X-Forwarded-For", ", ".join(forwarded_for)),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Port", str(port)),
        ]
        return headers

    def _send(
        self, target: tuple[str, int], body: bytes | None, streamed: int | None, replayable: bool
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, str]:
        key = f"{target[0]}:{target[1]}"
        conn = self._upstreams.pop(key, None)
        if conn is not None and (conn.sock is None or _stale(conn.sock)):
            conn.close()
            conn = None
        if conn is not None:
            try:
                return self._exchange(conn, body, streamed), conn, key
            except _UpstreamFailure as failure:
                # A kept-alive connection the instance closed meanwhile: once more on a new one.
                if failure.timeout or not replayable or (failure.sent and self.command not in _IDEMPOTENT):
                    raise
        conn = http.client.HTTPConnection(target[0], target[1], timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except OSError as error:
            conn.close()
            raise _UpstreamFailure(error, sent=False, connect=True) from error
        assert conn.sock is not None
        conn.sock.settimeout(UPSTREAM_TIMEOUT)
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._exchange(conn, body, streamed), conn, key

    def _exchange(
        self, conn: http.client.HTTPConnection, body: bytes | None, streamed: int | None
    ) -> http.client.HTTPResponse:
        sent = False
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self._outgoing:
                conn.putheader(name, value)
            if body is not None or streamed is not None:
                conn.putheader("Content-Length", str(len(body) if body is not None else streamed))
            conn.endheaders(body)
            if streamed:
                self._stream_body(conn, streamed)
            sent = True
            return conn.getresponse()
        except _ClientError:
            conn.close()
            raise
        except TimeoutError as error:
            conn.close()
            raise _UpstreamFailure(error, sent=sent, timeout=True) from error
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            raise _UpstreamFailure(error, sent=sent) from error

    def _stream_body(self, conn: http.client.HTTPConnection, length: int) -> None:
        left = length
        while left:
            data = self.rfile.read(min(left, 65536))
            if not data:
                self.close_connection = True
                raise _ClientError(400, "the request body ended early")
            conn.send(data)
            left -= len(data)

    # ------------------------------------------------------------------- response

    def _relay(
        self,
        response: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        key: str,
        group: str,
        instance: Instance,
    ) -> tuple[int, bool]:
        """Stream the instance's answer to the client; ``(status, the instance's side went fine)``."""
        status = response.status
        drop = _HOP_BY_HOP | _RESPONSE_REPLACED | _connection_tokens(response.headers.get_all("Connection") or [])
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in drop]
        has_body = self.command != "HEAD" and status >= 200 and status not in (204, 304)
        length = None if response.chunked else response.length
        rechunk = False
        if has_body and length is None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            if self.request_version >= "HTTP/1.1":
                headers.append(("Transfer-Encoding", "chunked"))
                rechunk = True
            else:
                self.close_connection = True
        self.send_response_only(status, response.reason)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("X-Gennaker-Server-Group", group)
        self.send_header("X-Gennaker-Instance", instance.id)
        if self.close_connection or self._server.proxy.draining:
            self.send_header("Connection", "close")
        upstream_ok = True
        sent = 0
        try:
            self.end_headers()
            while has_body:
                try:
                    chunk = response.read1(65536)
                except (OSError, http.client.HTTPException):
                    upstream_ok = False
                    break
                if not chunk:
                    break
                sent += len(chunk)
                self.wfile.write(b"%X\r\n%s\r\n" % (len(chunk), chunk) if rechunk else chunk)
            if has_body and length is not None and sent != length:
                upstream_ok = False
            if upstream_ok:
                response.read()  # b"": marks the answer complete, so the connection can be reused
            if rechunk and upstream_ok:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            self.close_connection = True
            conn.close()
            return status, True
        if not upstream_ok:
            logger.warning("%s (%s) broke off its answer to %s %s", instance.id, group, self.command, self.path)
            self.close_connection = True
            conn.close()
        elif conn.sock is not None and response.isclosed() and len(self._upstreams) < 16:
            self._upstreams[key] = conn
        else:
            conn.close()
        return status, upstream_ok

    def _reply(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection or self._server.proxy.draining:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _connection_tokens(values: Sequence[str]) -> frozenset[str]:
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


def _stale(sock: socket.socket) -> bool:
    """A kept-alive connection the other side closed (or wrote to unasked) is readable."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _target_port(instance: Instance, lb: LoadBalancer, port: int) -> int:
    if instance.port:
        return instance.port
    for listener in lb.listeners:
        if listener.port == port:
            return listener.target_port or port
    return port


# --------------------------------------------------------------------------- the process


class ProxyProcess:
    """The proxy's process: listeners, the routing table refresher, the metrics flusher, shutdown."""

    def __init__(
        self,
        store: StateStore,
        home: Path,
        account: str,
        region: str,
        name: str,
        *,
        drain_seconds: float = DRAIN_SECONDS,
        access_log: bool = False,
    ) -> None:
        self.store, self.home = store, home
        self.account, self.region, self.name = account, region, name
        self.drain_seconds = drain_seconds
        self.access_log = access_log
        self.metrics = MetricsRecorder(account, region, name)
        self.table: RoutingTable = cast(RoutingTable, None)  # set by _refresh before any listener opens
        self.draining = False
        self._raw: _Raw | None = None
        self._parsed: _Parsed | None = None
        self._described = ""
        self._servers: dict[int, _ListenerServer] = {}
        self._retry_bind: dict[int, float] = {}
        self._stop = threading.Event()
        self._signals = 0
        self._inflight = 0
        self._idle = threading.Condition()
        self._ejected: dict[str, float] = {}
        self._ejected_lock = threading.Lock()
        self._throttle: dict[Any, float] = {}
        self._warned_protocols: set[int] = set()

    # ------------------------------------------------------------------- requests in flight, ejection, logs

    def enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def leave(self) -> None:
        with self._idle:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def eject(self, instance_id: str) -> None:
        with self._ejected_lock:
            self._ejected[instance_id] = time.monotonic() + EJECT_SECONDS

    def avoided(self) -> frozenset[str]:
        if not self._ejected:
            return frozenset()
        now = time.monotonic()
        with self._ejected_lock:
            for instance_id in [i for i, until in self._ejected.items() if until <= now]:
                del self._ejected[instance_id]
            return frozenset(self._ejected)

    def denied(self, client: str, port: int, table: RoutingTable) -> None:
        if self._once(("denied", client, port), 10.0):
            groups = ", ".join(f"{g.name} ({','.join(g.firewalls) or 'none'})" for g in table.serving)
            logger.warning(
                "firewall: denied %s on port %d; no serving group's firewalls admit it: %s", client, port, groups
            )

    def _once(self, key: Any, seconds: float) -> bool:
        now = time.monotonic()
        if self._throttle.get(key, 0.0) > now:
            return False
        self._throttle[key] = now + seconds
        return True

    # ------------------------------------------------------------------- lifecycle

    def run(self, pid_file: Path) -> int:
        """Serve until SIGTERM/SIGINT or the load balancer's deletion; the exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        lock = _lock_pid_file(pid_file)
        if lock is None:
            _fatal(f"another proxy for load balancer {self.name} holds {pid_file} (pid {_read_pid(pid_file)})")
            return EXIT_ALREADY_RUNNING
        with contextlib.suppress(FileNotFoundError):
            pid_file.with_suffix(".stopped").unlink()  # running again: a watchdog restarts it if it dies
        try:
            return self._serve(lock)
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(lock, 0)
            os.close(lock)

    def _serve(self, lock: int) -> int:
        ensure_metrics_table(self.store)
        if not self._refresh():
            _fatal(f"load balancer {self.name} not found in account {self.account}, region {self.region}")
            return EXIT_NOT_FOUND
        for listener in self.table.lb.listeners:
            try:
                self._listen(listener.port)
            except ListenerPortInUse as error:
                _fatal(str(error))
                self._close_listeners()
                return EXIT_PORT_IN_USE
            except CloudError as error:
                _fatal(str(error))
                self._close_listeners()
                return 1
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        ports = ", ".join(str(p) for p in sorted(self._servers)) or "none yet"
        logger.info(
            "load balancer %s (%s/%s) listening on %s port(s) %s", self.name, self.account, self.region, HOST, ports
        )
        flusher = threading.Thread(target=self._flush_loop, name="metrics", daemon=True)
        flusher.start()
        watchdog = self._start_watchdog()
        reason = "stopped by a signal"
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                if not self._refresh():
                    reason = "its load balancer was deleted"
                    break
            except Exception as error:  # a locked or broken store: keep serving the last table
                if self._once("refresh", 10.0):
                    logger.warning("could not re-read the routing table (keeping the last one): %s", error)
                continue
            self._sync_listeners()
        watchdog.stop()
        logger.info("stopping: %s; draining %d request(s) in flight", reason, self._inflight)
        self.draining = True
        self._close_listeners()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=self.drain_seconds)
            left = self._inflight
        if left:
            logger.warning("%d request(s) still in flight after %gs; exiting anyway", left, self.drain_seconds)
        self._stop.set()
        flusher.join(timeout=5)
        try:
            self.metrics.flush(self.store, final=True)
        except Exception as error:
            logger.warning("could not write the last metrics: %s", error)
        if reason != "stopped by a signal":
            with contextlib.suppress(Exception):
                self.store.record_event(
                    "loadBalancer.proxyStopped",
                    self.name,
                    f"proxy of load balancer {self.name} exited: {reason}",
                    account=self.account,
                    data={"pid": os.getpid(), "region": self.region},
                )
        logger.info("exited")
        return 0

    def _start_watchdog(self) -> Any:
        """A thread that restarts the dead supervisors of the server groups this load balancer serves."""
        from gennaker.cloud.local import watchdog as local_watchdog  # it imports this module

        def check() -> None:
            parsed = self._parsed
            if parsed is not None:
                groups = [(g.account, g.region, g.name) for g in parsed[1]]
                local_watchdog.revive(self.store, self.home, groups=groups, balancers=())

        return local_watchdog.Watchdog(check, name="watchdog").start()

    def _table_or_none(self) -> RoutingTable | None:
        return self.table if self._raw is not None else None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(128 + signum)  # a second signal: do not wait for the drain
        self._stop.set()

    def _refresh(self) -> bool:
        """Re-read the routing table; False if the load balancer no longer exists.

        Also rebuilt when an Up instance's process ends: it gets nothing more even while its
        row still says Up (its supervisor may be dead), until the supervisor starts it again.
        """
        raw = _read_raw(self.store, self.account, self.region, self.name)
        if raw is None:
            return False
        parsed = _parse(raw) if raw != self._raw or self._parsed is None else self._parsed
        ended = ended_processes(self.home, parsed[0], parsed[1])
        previous = self._table_or_none()
        if raw != self._raw or previous is None or ended != previous.ended:
            table = RoutingTable(*parsed, previous, ended=ended)
            self.table, self._raw, self._parsed = table, raw, parsed
            described = table.describe()
            if described != self._described:
                logger.info("routing: %s", described)
                self._described = described
            for listener in table.lb.listeners:
                if listener.protocol != "HTTP" and listener.port not in self._warned_protocols:
                    self._warned_protocols.add(listener.port)
                    logger.warning("listener %d is %s: served as plain HTTP locally", listener.port, listener.protocol)
        return True

    def _listen(self, port: int) -> None:
        try:
            server = _ListenerServer(port, self)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ListenerPortInUse(port) from error
            if error.errno == errno.EACCES:
                raise InvalidRequest(
                    f"cannot listen on port {port} on {HOST}: permission denied",
                    hint="ports below 1024 need privileges; choose another port in the load balancer's listeners",
                ) from error
            raise InvalidRequest(f"cannot listen on port {port} on {HOST}: {error}") from error
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"listener-{port}", daemon=True
        )
        thread.start()
        self._servers[port] = server

    def _sync_listeners(self) -> None:
        wanted = {listener.port for listener in self.table.lb.listeners}
        now = time.monotonic()
        for port in sorted(wanted - set(self._servers)):
            if self._retry_bind.get(port, 0.0) > now:
                continue
            try:
                self._listen(port)
                self._retry_bind.pop(port, None)
                logger.info("listening on %s:%d", HOST, port)
            except CloudError as error:
                self._retry_bind[port] = now + 5.0
                logger.error("%s (retrying every 5s)", error)
        for port in sorted(set(self._servers) - wanted):
            server = self._servers.pop(port)
            logger.info("closing listener %s:%d (requests in flight finish)", HOST, port)
            threading.Thread(target=_close_server, args=(server,), daemon=True).start()
        for port in list(self._retry_bind):
            if port not in wanted:
                del self._retry_bind[port]

    def _close_listeners(self) -> None:
        for server in self._servers.values():
            _close_server(server)
        self._servers.clear()

    def _flush_loop(self) -> None:
        next_prune = 0.0
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                self.metrics.flush(self.store)
                if time.monotonic() >= next_prune:
                    self.metrics.prune(self.store, time.time() - metrics_max_age_seconds())
                    next_prune = time.monotonic() + 60.0
            except Exception as error:
                if self._once("flush", 10.0):
                    logger.warning("could not write metrics (kept for the next try): %s", error)


def _close_server(server: _ListenerServer) -> None:
    server.shutdown()
    server.server_close()


def _fatal(message: str) -> None:
    """The line :func:`ensure_running` reads back from the log when the process fails to start."""
    logger.error("fatal: %s", message)


# --------------------------------------------------------------------------- pid files and locks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _pid_file(home: Path, account: str, region: str, name: str) -> Path:
    return home / "local" / "run" / f"lb-{_slug(account)}-{_slug(region)}-{_slug(name)}.pid"


def stopped_file(home: str | os.PathLike[str] | None, account: str, region: str, name: str) -> Path:
    """Present after :func:`stop`: a watchdog leaves this proxy stopped (the next start removes it)."""
    return _pid_file(_home(home), account, region, name).with_suffix(".stopped")


def has_run(home: str | os.PathLike[str] | None, account: str, region: str, name: str) -> bool:
    """A proxy of this load balancer ran in this home once (a watchdog restarts only those)."""
    return _pid_file(_home(home), account, region, name).exists()


def log_file(home: str | os.PathLike[str] | None, name: str) -> Path:
    """``<home>/local/logs/lb-<name>.log``: where a load balancer's proxy logs."""
    return _home(home) / "local" / "logs" / f"lb-{_slug(name)}.log"


def _home(home: str | os.PathLike[str] | None) -> Path:
    return Path(home).expanduser() if home is not None else gennaker_home()


def _lock_pid_file(path: Path) -> int | None:
    """The pid file's descriptor, locked exclusively; None if another process holds it.

    Retried briefly: :func:`running_pid` takes a shared lock for an instant to look.
    """
    fd = privfiles.open_private(path, os.O_RDWR)
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.02)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _probe(path: Path) -> tuple[bool, int | None]:
    """``(a proxy holds the pid file, the pid in it)``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read_pid(path)
        return False, _read_pid(path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _start_lock(pid_file: Path) -> Iterator[None]:
    """Serialise :func:`ensure_running` and :func:`stop` of one load balancer across processes and threads."""
    fd = privfiles.open_private(pid_file.with_suffix(".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_children: dict[int, subprocess.Popen[bytes]] = {}
"""Proxies this process started: reaped once they exit, so none lingers as a zombie."""


def _reap() -> None:
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            _children.pop(pid, None)


def running_pid(home: str | os.PathLike[str] | None, account: str, region: str, name: str) -> int | None:
    """The pid of the load balancer's running proxy, or None."""
    held, pid = _probe(_pid_file(_home(home), account, region, name))
    return pid if held else None


def ensure_running(
    store: StateStore,
    home: str | os.PathLike[str] | None,
    account: str,
    region: str,
    name: str,
    *,
    timeout: float = START_TIMEOUT,
) -> int:
    """Start the load balancer's proxy unless it runs; its pid once it listens on every listener.

    Idempotent across threads and processes. Raises :class:`NotFound` if the load
    balancer is not in the store, :class:`ListenerPortInUse` if a listener's port is
    taken by another program, :class:`ProviderUnavailable` if it did not start within
    ``timeout`` seconds.
    """
    home_path = _home(home)
    _reap()
    store.get_load_balancer(account, region, name)
    pid_file = _pid_file(home_path, account, region, name)
    with _start_lock(pid_file):
        held, pid = _probe(pid_file)
        deadline = time.monotonic() + timeout
        while held and pid is None and time.monotonic() < deadline:  # started by hand, not listening yet
            time.sleep(0.05)
            held, pid = _probe(pid_file)
        if held and pid is not None:
            return pid
        log_path = log_file(home_path, name)
        privfiles.private_dir(log_path.parent)
        logfiles.LogLimits.from_env()  # a bad setting is a clear error here, not a proxy that dies at once
        offset = log_path.stat().st_size if log_path.exists() else 0
        env = procenv.service_env()  # minimal: never the caller's environment (Airflow's secrets)
        command = [
            sys.executable,
            "-m",
            "gennaker.cloud.local.proxy",
            "--home",
            str(home_path),
            "--state",
            str(store.path),
            "--account",
            account,
            "--region",
            region,
            "--load-balancer",
            name,
        ]
        with logfiles.open_log(log_path) as log:  # O_APPEND: the proxy rotates it by copy-truncate
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=home_path,
                env=env,
                start_new_session=True,
            )
        _children[proc.pid] = proc
        while _read_pid(pid_file) != proc.pid:
            code = proc.poll()
            if code is not None:
                _children.pop(proc.pid, None)
                raise _start_error(code, name, log_path, offset)
            if time.monotonic() > deadline:
                _kill_group(proc.pid)
                proc.wait()
                _children.pop(proc.pid, None)
                raise ProviderUnavailable(
                    f"the proxy of load balancer {name} did not start listening within {timeout:g}s; see {log_path}"
                )
            time.sleep(0.02)
    lb = store.get_load_balancer(account, region, name)
    ports = ", ".join(str(listener.port) for listener in lb.listeners)
    store.record_event(
        "loadBalancer.proxyStarted",
        name,
        f"proxy of load balancer {name} listening on {HOST} port(s) {ports or 'none'} (pid {proc.pid})",
        account=account,
        data={"pid": proc.pid, "region": region, "log": str(log_path)},
    )
    return proc.pid


def _start_error(code: int, name: str, log_path: Path, offset: int) -> CloudError:
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        text = ""
    fatal = [line.split("fatal: ", 1)[1] for line in text.splitlines() if "fatal: " in line]
    message = fatal[-1] if fatal else f"exited with status {code}"
    if code == EXIT_PORT_IN_USE:
        found = re.search(r"port (\d+) on", message)
        if found:
            return ListenerPortInUse(int(found.group(1)))
    if code == EXIT_NOT_FOUND:
        return NotFound(message)
    return CloudError(f"the proxy of load balancer {name} did not start: {message}", hint=f"see {log_path}")


def stop(
    store: StateStore | None,
    home: str | os.PathLike[str] | None,
    account: str,
    region: str,
    name: str,
    *,
    timeout: float = DRAIN_SECONDS + 5.0,
) -> bool:
    """Stop the load balancer's proxy (SIGTERM: it drains in-flight requests); False if none ran.

    After ``timeout`` seconds its process group is killed.
    """
    pid_file = _pid_file(_home(home), account, region, name)
    _reap()
    with _start_lock(pid_file):
        pid_file.with_suffix(".stopped").write_text(f"{time.time()}\n")  # no watchdog starts it again
        held, pid = _probe(pid_file)
        if not held or pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _probe(pid_file)[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        if _probe(pid_file)[0]:
            logger.warning("proxy %d of load balancer %s did not stop within %gs; killing it", pid, name, timeout)
            _kill_group(pid)
        child = _children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
    if store is not None:
        store.record_event(
            "loadBalancer.proxyStopped",
            name,
            f"proxy of load balancer {name} stopped (pid {pid})",
            account=account,
            data={"pid": pid, "region": region},
        )
    return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gennaker.cloud.local.proxy --home H --account A --region R --load-balancer NAME``."""
    parser = argparse.ArgumentParser(
        prog="python -m gennaker.cloud.local.proxy", description="gennaker's local load balancer"
    )
    parser.add_argument("--home", help="gennaker home (default: $GENNAKER_HOME, else $AIRFLOW_HOME/gennaker)")
    parser.add_argument("--state", help="the state store (default: <home>/local/state.db)")
    parser.add_argument("--account", default="local")
    parser.add_argument("--region", default="local")
    parser.add_argument("--load-balancer", required=True, dest="name")
    parser.add_argument("--drain-timeout", type=float, default=DRAIN_SECONDS, help="seconds to wait for requests")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    home = _home(args.home)
    os.umask(0o077)  # what the proxy creates (pid files, its log's rotated copies) is its user's alone
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{args.account}/{args.region}/{args.name} pid {os.getpid()}] %(message)s",
    )
    store = StateStore(Path(args.state) if args.state else home / "local" / "state.db")
    proxy = ProxyProcess(
        store,
        home,
        args.account,
        args.region,
        args.name,
        drain_seconds=args.drain_timeout,
        access_log=args.access_log,
    )
    own_log = log_file(home, args.name)
    rotator = logfiles.Rotator(lambda: [own_log], logfiles.LogLimits.from_env()).start()
    try:
        return proxy.run(_pid_file(home, args.account, args.region, args.name))
    except Exception as error:
        logger.exception("the proxy failed")
        _fatal(f"{type(error).__name__}: {error}")
        return 1
    finally:
        rotator.stop()


__all__ = [
    "HISTOGRAM_BOUNDS_MS",
    "METRICS_SCHEMA",
    "METRICS_TABLE",
    "ListenerPortInUse",
    "MetricBucket",
    "MetricsRecorder",
    "ProxyProcess",
    "RoutingTable",
    "ensure_metrics_table",
    "ensure_running",
    "histogram_quantile",
    "log_file",
    "main",
    "read_metrics",
    "running_pid",
    "serves",
    "share_weights",
    "stop",
]


if __name__ == "__main__":
    sys.exit(main())
