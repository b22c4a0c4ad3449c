"""Clusters API benchmark: one application with 1,000 server groups and 10,000 instances.

It writes those records (no process runs for them) into a fresh ``GENNAKER_HOME``, builds
Airflow's real API server app (``airflow.api_fastapi.app.create_app``, gennaker's plugin
mounted, the simple auth manager) over a fresh metadata database in a temporary
``AIRFLOW_HOME`` with 100 DAG rows, logs in as ``admin`` and times, in this one process
and through Airflow's middlewares (JWT, gzip):

- ``GET /gennaker/api/applications/bench/clusters`` (about 0.7 MB of JSON, gzipped by Airflow);
- as the baseline, Airflow's own ``GET /api/v2/dags?limit=100``.

Scenarios (each: ``--requests`` requests after one warm-up request):

- ``warm``: the default cache TTL (5 s): requests are served from the account's snapshot;
- ``refreshing``: TTL 0.05 s: nearly every request finds the snapshot stale and is served
  it while a background thread reads the 11,000 records again and renders the response
  anew (the worst case of a busy page);
- ``cold``: the first request, which reads the account (once, reported alone).

It then checks that no supervisor was started for the records-only groups.

Run:     .venv/bin/python tests/benchmarks/clusters_api.py [--requests 50] [--groups 1000] [--instances 10]
Prints:  median and p95 per scenario, the ratio to the baseline's; exits 1 if a p95 is 300 ms or more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TARGET_P95_MS = 300.0


def _configure(home: Path, gennaker_home: Path) -> None:
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "_AIRFLOW_PROCESS_CONTEXT": "server",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API_AUTH__JWT_SECRET": "gennaker-benchmark-" + "x" * 48,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "GENNAKER_HOME": str(gennaker_home),
        }
    )
    (home / "passwords.json").write_text(json.dumps({"admin": "admin", "viewer": "viewer"}))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _time(client: Any, path: str, headers: dict[str, str], count: int) -> list[float]:
    client.get(path, headers=headers)  # warm-up
    took = []
    for _ in range(count):
        start = time.perf_counter()
        r = client.get(path, headers=headers)
        took.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--groups", type=int, default=1000, help="server groups (10 per cluster)")
    parser.add_argument("--instances", type=int, default=10, help="instances per server group")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="gennaker-clusters-bench-"))
    home, gennaker_home = root / "airflow", root / "gennaker"
    home.mkdir()
    _configure(home, gennaker_home)
    sys.path.insert(0, str(REPO / "tests" / "web"))
    try:
        return _run(args, gennaker_home)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(args: argparse.Namespace, gennaker_home: Path) -> int:
    import logging

    logging.disable(logging.INFO)
    from airflow.api_fastapi.app import create_app
    from airflow.utils.db import initdb
    from clusters_helpers import add_pipeline, write_records  # tests/web
    from fastapi.testclient import TestClient

    from gennaker.web.app import get_app
    from gennaker.web.service import ClustersService, Settings

    per_cluster = 10
    started = time.perf_counter()
    made = write_records(
        gennaker_home,
        "bench",
        clusters=max(1, args.groups // per_cluster),
        groups_per_cluster=per_cluster,
        instances_per_group=args.instances,
    )
    print(
        f"wrote {len(made)} server groups, {len(made) * args.instances} instances in "
        f"{time.perf_counter() - started:.1f} s"
    )
    initdb()
    for i in range(5):
        add_pipeline(f"bench.pipeline{i}", ["bench", "gennaker"])
    for i in range(95):
        add_pipeline(f"other{i}.deploy", [f"other{i}", "gennaker"])
    app = create_app()
    results: dict[str, list[float]] = {}
    with TestClient(app) as client:
        r = client.post("/auth/token", json={"username": "admin", "password": "admin"})
        assert r.status_code == 201, r.text
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        clusters = "/gennaker/api/applications/bench/clusters"

        service = ClustersService(Settings(ttl=5.0, max_stale=60.0))
        get_app().state.service = service
        start = time.perf_counter()
        first = client.get(clusters, headers=headers)
        results["cold (first request)"] = [(time.perf_counter() - start) * 1000]
        body = first.json()
        groups = sum(len(c["serverGroups"]) for c in body["clusters"])
        instances = sum(c["instanceCounts"]["total"] for c in body["clusters"])
        assert groups == len(made) and instances == len(made) * args.instances, (groups, instances)
        print(f"response: {len(first.content) / 1e6:.2f} MB of JSON, {groups} server groups, {instances} instances")

        results["baseline GET /api/v2/dags?limit=100"] = _time(client, "/api/v2/dags?limit=100", headers, args.requests)
        results["warm (TTL 5 s)"] = _time(client, clusters, headers, args.requests)
        reads_before = service.cache.reads("local")

        refreshing = ClustersService(Settings(ttl=0.05, max_stale=60.0))
        get_app().state.service = refreshing
        results["refreshing (TTL 0.05 s)"] = _time(client, clusters, headers, args.requests)
        background = refreshing.cache.reads("local")
        refreshing.close()
        service.close()

    run = gennaker_home / "local" / "run"
    started_any = sorted(p.name for p in run.rglob("*")) if run.exists() else []
    assert not started_any, f"reads started processes: {started_any[:5]}"

    base = statistics.median(results["baseline GET /api/v2/dags?limit=100"])
    print(f"\n{'scenario':40} {'median ms':>10} {'p95 ms':>10} {'median / baseline':>18}")
    worst = 0.0
    for name, took in results.items():
        median, p95 = statistics.median(took), _percentile(took, 0.95)
        if not name.startswith(("baseline", "cold")):
            worst = max(worst, p95)
        print(f"{name:40} {median:10.1f} {p95:10.1f} {median / base:17.2f}x")
    print(
        f"\nwarm: the account was read {reads_before} time(s) for {args.requests + 2} requests; "
        f"refreshing: {background} background read(s) for {args.requests + 1} requests"
    )
    verdict = "met" if worst < TARGET_P95_MS else "MISSED"
    print(f"target: p95 < {TARGET_P95_MS:.0f} ms -> {verdict} (worst p95 {worst:.1f} ms)")
    return 0 if worst < TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
