"""Delivery benchmark: bake -> deploy -> promote on the local provider vs. the same number of no-op tasks.

One real Airflow (scheduler, DAG processor, triggerer, API server; SQLite + LocalExecutor,
started with tests/integration/conftest.py's helpers) in a temporary folder runs two DAGs:

- ``bench.deliver``, a gennaker spec of 4 stages in a chain: upsertLoadBalancer (a free
  port chosen at run time) -> bake (the demo service's wheel, built with
  ``scripts/build-hello.sh``, as an absolute path) -> deploy (redblack, 2 instances, dark:
  ``traffic: false``, health checked every 0.2 s) -> promote (enable the new group, disable
  the previous one);
- ``bench.noop``, a Python DAG file with 4 PythonOperator no-ops in a chain, same task ids.

After one warm-up run of each (it creates the load balancer's proxy, the pip tools and
the first server group), every round triggers: deliver with a version never baked before
("fresh": the bake really builds a venv and pip-installs the wheel), noop, deliver with the
warm-up's version ("reuse": same inputs, the bake returns the existing image), noop. Between
rounds the benchmark destroys the disabled server groups (outside the timed runs), so two
instances idle besides the new ones.

Measured (all on the machine's one clock):
- wall: the client's clock just before the trigger POST to the run's ``end_date`` (API);
- task: each task instance's ``end_date - start_date`` (API);
- provider work, read from the local provider's state (``<home>/local/state.db``), is what
  a cloud would spend anyway and is subtracted from the gennaker task:
  load-balancer = the upsert operation's duration (starting the proxy the first time; a
  no-op update later); bake = the bake operation's duration (copy and check the wheel,
  venv creation, pip install; a hash and a lookup when the image exists); deploy = the
  instances' start-up, first ``instance.started`` to last ``instance.up`` event of the new
  group; promote = the load balancer settle of the enable and of the disable (each
  operation's ``settle_until - started``, i.e. LB_SETTLE_SECONDS);
- gennaker's own = task - provider work; overhead = gennaker's own - the no-op task's median.

Run:  .venv/bin/python tests/benchmarks/pipeline.py [--runs 5] [--bake both|fresh|reuse] [--keep] [--py-spy]
Prints each run as it ends, then per bake kind the per-stage table (medians), the wall
times and their ratio, where each task's time goes by its log (start-up, the DAG file's
parse, the rest), and the timeline of one run of each DAG (every log line, seconds from the
task's start). ``--py-spy`` adds one deliver run per bake kind under py-spy (not in the
medians) and prints each gennaker task's wall time by step. Target: overhead <= 1 s per
stage ("target met"/"target missed"; the exit code is 0 either way, 1 only when something
fails or is interrupted). Every process it started is stopped at the end, on Ctrl-C too.
Takes about 7 minutes with the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from integration.conftest import (  # noqa: E402
    AIRFLOW,
    USERS,
    Airflow,
    _airflow_env,
    _free_port,
    _Process,
    _start,
    _stop,
    parse_time,
)
from localcloud import build_hello, describe, marked_processes  # noqa: E402

REPO = TESTS.parent
VENV_BIN = Path(sys.executable).parent
DELIVER = "bench.deliver"
NOOP = "bench.noop"
STAGES = ("load-balancer", "bake", "deploy", "promote")
CLUSTER = ("bench", "live")  # application, stack
TARGET = 1.0  # seconds of overhead per stage over a no-op task, beyond the provider's real work
WARM_VERSION = "0.9.0"
RUN_TIMEOUT = 300.0
STARTUP_TIMEOUT = 180.0
POLL = 0.5

SPEC = """\
# bench.deliver: written by tests/benchmarks/pipeline.py
application: bench
name: deliver
parameters:
  - {{name: artifact, default: "{artifact}"}}
artifacts: {{allow: ["file://{artifact_dir}/"]}}
concurrency: {{limit: 1}}
stages:
  - id: load-balancer
    type: upsertLoadBalancer
    cluster: {{stack: live}}
    listeners: [{{port: {port}}}]
  - id: bake
    type: bake
    package: hello-service
    artifact: "{{{{ params.artifact }}}}"
  - id: deploy
    type: deploy
    cluster: {{stack: live}}
    loadBalancers: [bench-live]
    capacity: {{min: 2, max: 2, desired: 2}}
    healthCheck: {{path: /health, interval: 0.2s, waitTimeout: 2m}}
    traffic: false
    strategy: {{type: redblack}}
  - id: promote
    type: promote
"""

NOOP_DAG = '''\
"""bench.noop: the baseline of tests/benchmarks/pipeline.py (an Airflow DAG of no-op tasks)."""

from datetime import datetime, timezone

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def noop() -> None:
    return None


with DAG(
    dag_id="bench.noop",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["bench"],
):
    previous = None
    for task_id in {stages!r}:
        task = PythonOperator(task_id=task_id, python_callable=noop)
        if previous is not None:
            previous >> task
        previous = task
'''


# --------------------------------------------------------------------------- results


@dataclass
class Run:
    """One measured run of one DAG."""

    kind: str  # fresh, reuse or noop
    dag_id: str
    run_id: str
    wall: float
    task: dict[str, float]
    provider: dict[str, float] = field(default_factory=dict)
    detail: dict[str, float] = field(default_factory=dict)  # named sub-measurements (supervisor launch, ...)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> PHASES -> seconds

    def own(self, stage: str) -> float:
        return self.task[stage] - self.provider.get(stage, 0.0)


class BenchError(RuntimeError):
    """Something failed: the benchmark stops (exit code 1)."""


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def seconds(a: datetime | None, b: datetime | None) -> float:
    if a is None or b is None:
        raise BenchError(f"missing time stamp ({a!r}, {b!r})")
    return (b - a).total_seconds()


# --------------------------------------------------------------------------- Airflow


def write_dags(dags: Path, port: int, artifact: Path) -> None:
    """The DAG folder: gennaker's DAG file with pipelines/bench.yaml, and the no-op DAG file."""
    (dags / "pipelines").mkdir(parents=True)
    shutil.copy(REPO / "dags" / "gennaker_pipelines.py", dags / "gennaker_pipelines.py")
    (dags / "pipelines" / "bench.yaml").write_text(
        SPEC.format(port=port, artifact=artifact, artifact_dir=artifact.parent)
    )
    (dags / "bench_noop.py").write_text(NOOP_DAG.format(stages=list(STAGES)))


def start_airflow(root: Path, logs: Path, processes: list[_Process]) -> Airflow:
    """Airflow's four processes on SQLite, as the integration tests run them (appended to ``processes``)."""
    home, dags, gennaker = root / "home", root / "dags", root / "gennaker"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps(USERS))
    port = _free_port()
    env = _airflow_env(home, dags, port, logs, gennaker)
    # Airflow's default; the tests' 5 s would re-parse both DAG files every 5 s during the measurements.
    env["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] = "30"
    with (logs / "db-migrate.log").open("wb") as out:
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, check=True)
    for name, args in (
        ("api-server", ["api-server", "--port", str(port), "--host", "127.0.0.1"]),
        ("scheduler", ["scheduler"]),
        ("dag-processor", ["dag-processor"]),
        ("triggerer", ["triggerer"]),
    ):
        processes.append(_start(name, args, env, root, logs))
    client = Airflow(
        url=f"http://127.0.0.1:{port}",
        root=root,
        dags_folder=dags,
        env=env,
        gennaker_home=gennaker,
        processes=processes,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        check_alive(processes)
        try:
            if client.http.get(f"{client.url}/api/v2/monitor/health", timeout=5).status_code == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"the API server did not answer within {STARTUP_TIMEOUT:.0f} s; see {logs}")
        time.sleep(POLL)
    for dag_id in (DELIVER, NOOP):
        wait_for_dag(client, dag_id, processes)
        r = client.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        if r.status_code != 200:
            raise BenchError(f"unpause {dag_id}: {r.status_code} {r.text}")
    return client


def check_alive(processes: Sequence[_Process]) -> None:
    for p in processes:
        if p.proc.poll() is not None:
            tail = p.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"airflow {p.name} exited with {p.proc.returncode}; end of {p.log}:\n{tail}")


def wait_for_dag(client: Airflow, dag_id: str, processes: Sequence[_Process]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while client.dag(dag_id) is None:
        check_alive(processes)
        if time.monotonic() > deadline:
            errors = client.import_errors()
            raise BenchError(f"{dag_id} was not parsed within {STARTUP_TIMEOUT:.0f} s; import errors: {errors}")
        time.sleep(POLL)


def trigger_and_wait(client: Airflow, dag_id: str, conf: Mapping[str, Any] | None = None) -> tuple[str, float]:
    """Trigger a run, wait for it to succeed; its run_id and wall time (trigger POST to the run's end_date)."""
    started = time.time()
    run_id = client.trigger(dag_id, dict(conf or {}))
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        run = client.run(dag_id, run_id)
        if run["state"] in ("success", "failed"):
            break
        check_alive(client.processes)
        if time.monotonic() > deadline:
            raise BenchError(f"{dag_id} {run_id} did not finish within {RUN_TIMEOUT:.0f} s: {run['state']}")
        time.sleep(POLL)
    if run["state"] != "success":
        states = client.task_states(dag_id, run_id)
        raise BenchError(f"{dag_id} {run_id} {run['state']}: {states}; task logs under {client.env['AIRFLOW_HOME']}")
    mismatches = client.state_mismatches(dag_id, run_id)
    if mismatches:
        raise BenchError(f"Airflow's scheduler failed task(s) of {run_id}: {mismatches}")
    end = parse_time(run["end_date"])
    assert end is not None
    return run_id, end.timestamp() - started


def measure(client: Airflow, kind: str, dag_id: str, run_id: str, wall: float) -> Run:
    """A finished run's task durations, and each task's phases read from its log."""
    tis = client.task_instances(dag_id, run_id)
    run = Run(kind, dag_id, run_id, wall, {t: seconds(tis[t].start, tis[t].end) for t in STAGES})
    run.notes += [f"{t} ran {ti.try_number} tries" for t, ti in tis.items() if ti.try_number > 1]
    for stage in STAGES:
        ti = tis[stage]
        entries = task_log(client, dag_id, run_id, stage, ti.try_number)
        if any("no worker slot held" in str(e.get("event")) for e in entries):
            run.notes.append(f"{stage} deferred to the triggerer")
        run.phases[stage] = phases(ti.start, ti.end, entries)
    return run


PHASES = ("start", "parse", "execute")
"""A task's time: start_date to the DAG file's parse, the parse (Airflow's "Filling up the DagBag" to its
"Worker startup parse complete"), then the rest (pre-execute, execute, the XCom push) to end_date."""


def phases(start: datetime | None, end: datetime | None, entries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    def at(text: str) -> datetime | None:
        return next((parse_time(e.get("timestamp")) for e in entries if str(e.get("event", "")).startswith(text)), None)

    filling, parsed = at("Filling up the DagBag"), at("Worker startup parse complete")
    if filling is None or parsed is None:
        return {}
    return {"start": seconds(start, filling), "parse": seconds(filling, parsed), "execute": seconds(parsed, end)}


def task_log(client: Airflow, dag_id: str, run_id: str, task_id: str, tries: int) -> list[dict[str, Any]]:
    """A task's structured log entries."""
    data = client.get(
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{tries}",
        params={"full_content": "true"},
        headers={"Accept": "application/json"},
    )
    return [m if isinstance(m, dict) else {"event": str(m)} for m in data["content"]]


# --------------------------------------------------------------------------- the local provider's records


class Cloud:
    """Reads the local provider's state for the provider work of a run; retires old server groups."""

    def __init__(self, home: Path) -> None:
        from gennaker.cloud.local.provider import LocalProvider

        self.provider = LocalProvider(home=home)
        self.store = self.provider.store

    def mark(self) -> int:
        """The newest event id now (events after it belong to what follows)."""
        events = self.store.events(after=0, limit=1_000_000)
        return events[-1].id if events else 0

    def provider_work(self, run_id: str, new_group: str, after: int) -> tuple[dict[str, float], dict[str, float]]:
        from gennaker.cloud.model import OperationKind
        from gennaker.cloud.provider import IdempotencyKey

        switch = (OperationKind.ENABLE_SERVER_GROUP, OperationKind.DISABLE_SERVER_GROUP)
        work = dict.fromkeys(STAGES, 0.0)
        detail: dict[str, float] = {}
        created = None
        for op in self.store.list_operations():
            key = IdempotencyKey.parse(op.key)
            if key.dag_id != DELIVER or key.run_id != run_id or key.task_id not in work:
                continue
            settle = op.result.get("settle_until")
            if op.kind in switch and settle is not None:
                work[key.task_id] += max(0.0, float(settle) - op.started.timestamp())
            elif op.kind in (OperationKind.BAKE, OperationKind.UPSERT_LOAD_BALANCER):
                work[key.task_id] += seconds(op.started, op.updated)
            elif op.kind is OperationKind.CREATE_SERVER_GROUP:
                created = op.started
        events = [
            e
            for e in self.store.events(after=after, limit=1_000_000)
            if e.kind in ("instance.started", "instance.up") and e.data.get("server_group") == new_group
        ]
        started = [e.at for e in events if e.kind == "instance.started"]
        up = [e.at for e in events if e.kind == "instance.up"]
        if not started or len(up) < 2:
            raise BenchError(f"{new_group}: expected 2 instances up, found events {[e.kind for e in events]}")
        work["deploy"] = seconds(min(started), max(up))
        if len(started) > 2:
            detail["instance restarts"] = len(started) - 2
        if created is not None:
            detail["supervisor launch (create -> first instance.started)"] = seconds(created, min(started))
        return work, detail

    def retire_disabled(self) -> None:
        """Destroy the cluster's disabled server groups (between runs: not measured)."""
        from gennaker.cloud.naming import cluster_name
        from gennaker.cloud.provider import IdempotencyKey

        app, stack = CLUSTER
        groups = self.provider.list_server_groups(app, cluster=cluster_name(app, stack, ""))
        run = uuid.uuid4().hex
        ops = [
            self.provider.destroy_server_group(g.name, IdempotencyKey("bench", run, "retire", f"destroy-{g.name}"))
            for g in groups
            if not g.enabled
        ]
        deadline = time.monotonic() + 60
        while ops and not all(self.provider.operation(op.id).done for op in ops):
            if time.monotonic() > deadline:
                raise BenchError(f"destroying the disabled groups took longer than 60 s: {ops}")
            time.sleep(0.2)

    def close(self) -> None:
        self.provider.close()


# --------------------------------------------------------------------------- the runs


def deliver(client: Airflow, cloud: Cloud, kind: str, wheel: Path) -> Run:
    mark = cloud.mark()
    run_id, wall = trigger_and_wait(client, DELIVER, {"artifact": str(wheel)})
    run = measure(client, kind, DELIVER, run_id, wall)
    out = client.xcom(DELIVER, run_id, "deploy") or {}
    run.provider, run.detail = cloud.provider_work(run_id, str(out.get("serverGroup") or ""), mark)
    reused = bool((client.xcom(DELIVER, run_id, "bake") or {}).get("reused"))
    if reused != (kind == "reuse"):
        run.notes.append(f"bake {'reused' if reused else 'baked'} an image, expected {kind}")
    return run


def noop(client: Airflow) -> Run:
    run_id, wall = trigger_and_wait(client, NOOP)
    return measure(client, "noop", NOOP, run_id, wall)


@contextmanager
def profiled(pid: int, out: Path) -> Iterator[None]:
    """py-spy samples ``pid`` and its subprocesses (the executor's workers and task processes) into ``out``."""
    # Wall-clock samples (--idle) of every thread, so sleeps and API calls count too.
    options = "record --subprocesses --idle --threads --rate 100 --format raw".split()
    command = [str(VENV_BIN / "py-spy"), *options]
    with out.with_suffix(".log").open("wb") as log:
        spy = subprocess.Popen(
            [*command, "--pid", str(pid), "--output", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    time.sleep(2)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def show_run(i: int, n: int, run: Run) -> None:
    tasks = " ".join(f"{s}={run.task[s]:.2f}" for s in STAGES)
    work = " ".join(f"{s}={run.provider[s]:.2f}" for s in STAGES if run.provider.get(s))
    extra = f"; provider work {work}" if work else ""
    notes = f"  [{'; '.join(run.notes)}]" if run.notes else ""
    print(f"  {i}/{n} {run.kind:<5} wall {run.wall:6.2f} s; tasks {tasks}{extra}{notes}", flush=True)


# Where a gennaker task's wall time goes, from py-spy's samples of its main thread: the first rule whose
# parts all occur in a sample's stack names it (the phase first, then the step).
PROFILE_RULES: tuple[tuple[str, str], ...] = (
    ("DagBag.process_file;_find_and_load", "parse: imports (gennaker.factory, spec models, operators)"),
    ("DagBag.process_file", "parse: build the DAG"),
    ("_execute_task;StageMixin._gate", "execute: gate (task states via the API)"),
    ("_execute_task;ClusterHook._build;_find_and_load", "execute: import the provider (gennaker.cloud.*)"),
    ("_execute_task;_find_and_load", "execute: other imports"),
    ("_execute_task;ClusterHook._build", "execute: build the provider (connection lookup)"),
    ("_execute_task;_await_start", "execute: wait for the new group's supervisor to start"),
    ("_execute_task;gennaker/cloud/local/image", "execute: bake (provider work)"),
    ("_execute_task;wait_healthy", "execute: inline wait for health (0.2 s polls)"),
    ("_execute_task;wait_operations", "execute: inline wait for operations (0.2 s polls)"),
    ("_execute_task;gennaker/cloud/locks.py", "execute: cluster lock (SQLite)"),
    ("_execute_task;gennaker/cloud/", "execute: provider calls (state store)"),
    ("_execute_task;xcom_", "execute: XCom via the API"),
    ("_execute_task", "execute: other"),
    ("_find_and_load", "task runner: imports"),
    ("", "task runner: start-up, API calls, XCom push"),
)
OPERATORS = {
    "UpsertLoadBalancerOperator": "load-balancer",
    "BakeOperator": "bake",
    "PromoteOperator": "promote",
    "DeployOperator": "deploy",
}


def summarize_profile(path: Path, rate: float = 100.0) -> None:
    """Seconds per step of each gennaker task process in a ``py-spy record --idle --threads`` raw file."""
    per_process: dict[str, list[tuple[str, int]]] = {}
    for record in re.split(r"(?<=\d)\n(?=process \d+:\")", path.read_text().strip()):
        stack, _, count = record.rpartition(" ")
        pids = re.findall(r"process (\d+):\"", stack)
        if pids and ": MainThread;" in stack and count.isdigit():
            per_process.setdefault(pids[-1], []).append((stack, int(count)))
    print(f"\nwhere each gennaker task's time goes (py-spy wall-clock samples, seconds; {path.name})")
    for rows in per_process.values():
        executing = " ".join(stack for stack, _ in rows if "_execute_task" in stack)
        stage = next((name for op, name in OPERATORS.items() if op in executing), None)
        if stage is None:
            continue
        steps: dict[str, float] = {}
        for stack, count in rows:
            label = next(label for parts, label in PROFILE_RULES if all(p in stack for p in parts.split(";")))
            steps[label] = steps.get(label, 0.0) + count / rate
        print(f"  {stage}: {sum(steps.values()):.2f} s sampled")
        for label, spent in sorted(steps.items(), key=lambda item: -item[1]):
            if spent >= 0.02:
                print(f"    {spent:5.2f}  {label}")


# --------------------------------------------------------------------------- report


def report(kind: str, runs: Sequence[Run], noops: Sequence[Run]) -> None:
    if not runs:
        return
    print(f"\nbench.deliver, {kind} bake ({len(runs)} runs) vs bench.noop ({len(noops)} runs): medians in seconds")
    head = (
        f"{'stage':<14} {'no-op task':>10} {'gennaker task':>13} {'provider work':>13} "
        f"{'gennaker own':>12} {'overhead':>9}  target (<= {TARGET:g} s)"
    )
    print(head)
    print("-" * len(head))
    totals = [0.0] * 5
    for stage in STAGES:
        row = [
            median([r.task[stage] for r in noops]),
            median([r.task[stage] for r in runs]),
            median([r.provider.get(stage, 0.0) for r in runs]),
            median([r.own(stage) for r in runs]),
        ]
        row.append(row[3] - row[0])
        totals = [t + v for t, v in zip(totals, row, strict=True)]
        verdict = "target met" if row[4] <= TARGET else "target missed"
        print(f"{stage:<14} {row[0]:>10.2f} {row[1]:>13.2f} {row[2]:>13.2f} {row[3]:>12.2f} {row[4]:>+9.2f}  {verdict}")
    print(f"{'sum':<14} {totals[0]:>10.2f} {totals[1]:>13.2f} {totals[2]:>13.2f} {totals[3]:>12.2f} {totals[4]:>+9.2f}")
    wall_g = median([r.wall for r in runs])
    wall_n = median([r.wall for r in noops])
    beyond = median([r.wall - sum(r.provider.values()) for r in runs])
    print(
        f"wall (trigger -> run end): gennaker {wall_g:.2f} s, no-op {wall_n:.2f} s, ratio {wall_g / wall_n:.2f}; "
        f"gennaker minus provider work {beyond:.2f} s, i.e. {(beyond - wall_n) / len(STAGES):+.2f} s per stage "
        f"over the no-op pipeline"
    )
    keys = sorted({k for r in runs for k in r.detail})
    for k in keys:
        print(f"  {k}: median {median([r.detail[k] for r in runs if k in r.detail]):.2f} s")
    print("where each task's time goes (medians, s; from the task logs): no-op | gennaker")
    print(f"{'stage':<14} " + " ".join(f"{p:>16}" for p in PHASES))
    for stage in STAGES:
        cells = []
        for p in PHASES:
            a = median([r.phases[stage][p] for r in noops if r.phases.get(stage)])
            b = median([r.phases[stage][p] for r in runs if r.phases.get(stage)])
            cells.append(f"{a:>7.2f} | {b:>6.2f}")
        print(f"{stage:<14} " + " ".join(cells))


def timeline(client: Airflow, run: Run) -> None:
    """Every log line of each task of one run, as seconds from the task's start (where gennaker's time goes)."""
    print(f"\ntimeline of one {run.kind} run ({run.run_id}): seconds from the task instance's start_date")
    tis = client.task_instances(run.dag_id, run.run_id)
    for stage in STAGES:
        ti = tis[stage]
        assert ti.start is not None and ti.end is not None
        print(f"  {stage}: start {ti.start:%H:%M:%S.%f}, duration {seconds(ti.start, ti.end):.2f} s")
        for entry in task_log(client, run.dag_id, run.run_id, stage, ti.try_number):
            at = parse_time(entry.get("timestamp"))
            if at is None:
                continue
            text = str(entry.get("event", ""))[:110]
            print(f"    {seconds(ti.start, at):6.2f}  {entry.get('logger', '')[-28:]:<28} {text}")
        print(f"    {seconds(ti.start, ti.end):6.2f}  (end_date)")


# --------------------------------------------------------------------------- main


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C does, so the clean-up runs either way."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def clean_up(root: Path, processes: list[_Process], mark: str) -> None:
    """Stop the local provider's processes, then Airflow's, then anything else started from ``root``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    try:
        gennaker_home = root / "gennaker"
        if gennaker_home.exists():
            done = subprocess.run(
                [str(VENV_BIN / "gennaker"), "local-stop", "--home", str(gennaker_home)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            print(f"local-stop: {done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr}")
        _stop(processes, root / "home")
        left = marked_processes(mark, started_from=root)
        for pid in left:
            print(f"killing a leftover process {pid}: {describe(pid)}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--bake", choices=("both", "fresh", "reuse"), default="both")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, state)")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="then one more deliver run of each bake kind under py-spy (not in the figures); keeps the folder",
    )
    args = parser.parse_args()
    kinds = ("fresh", "reuse") if args.bake == "both" else (args.bake,)

    root = Path(tempfile.mkdtemp(prefix="gennaker-pipeline-bench-"))
    logs = root / "logs"
    logs.mkdir()
    mark = uuid.uuid4().hex
    os.environ["GENNAKER_TEST_MARK"] = mark  # processes this one starts itself carry it
    os.environ["AIRFLOW_HOME"] = str(root / "home")  # never ~/airflow, should anything here read it
    os.environ["GENNAKER_HOME"] = str(root / "gennaker")
    processes: list[_Process] = []
    cloud: Cloud | None = None
    failed = True  # until the end is reached
    print(f"folder {root}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    try:
        with interrupts_as_exceptions():
            fresh = args.runs + (1 if args.py_spy else 0) if "fresh" in kinds else 0
            versions = [WARM_VERSION] + [f"1.0.{i}" for i in range(fresh)]
            t = time.monotonic()
            wheels = {v: build_hello(v, root / "wheels") for v in versions}
            print(f"built {len(wheels)} hello-service wheel(s) in {time.monotonic() - t:.1f} s", flush=True)
            port = _free_port()
            write_dags(root / "dags", port, wheels[WARM_VERSION])
            t = time.monotonic()
            client = start_airflow(root, logs, processes)
            cloud = Cloud(root / "gennaker")
            print(f"Airflow up at {client.url} in {time.monotonic() - t:.1f} s; load balancer port {port}", flush=True)

            warm = deliver(client, cloud, "fresh", wheels[WARM_VERSION])
            print(f"warm-up: deliver {warm.wall:.2f} s (creates the proxy, the pip tools, the first group)")
            print(f"warm-up: noop {noop(client).wall:.2f} s", flush=True)

            runs: dict[str, list[Run]] = {k: [] for k in (*kinds, "noop")}
            for i in range(args.runs):
                for kind in kinds:
                    wheel = wheels[f"1.0.{i}"] if kind == "fresh" else wheels[WARM_VERSION]
                    runs[kind].append(deliver(client, cloud, kind, wheel))
                    show_run(i + 1, args.runs, runs[kind][-1])
                    cloud.retire_disabled()
                    runs["noop"].append(noop(client))
                    show_run(i + 1, args.runs, runs["noop"][-1])

            print(f"\nload average {os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} CPUs)")
            print(
                "provider work: load-balancer = upsert operation; bake = bake operation (venv + pip install when "
                "fresh); deploy = first instance.started -> last instance.up; promote = LB settle of enable + disable"
            )
            for kind in kinds:
                report(kind, runs[kind], runs["noop"])
            timeline(client, runs[kinds[0]][-1])
            timeline(client, runs["noop"][-1])
            if args.py_spy:
                scheduler = next(p.proc.pid for p in processes if p.name == "scheduler")
                for kind in kinds:
                    out = root / f"py-spy-{kind}.txt"
                    wheel = wheels[f"1.0.{args.runs}"] if kind == "fresh" else wheels[WARM_VERSION]
                    with profiled(scheduler, out):
                        show_run(1, 1, deliver(client, cloud, kind, wheel))
                    cloud.retire_disabled()
                    print(f"py-spy stacks of that run (scheduler and its subprocesses): {out}")
                    summarize_profile(out)
            failed = False
    except BenchError as error:
        print(f"\nbenchmark failed: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
    finally:
        if cloud is not None:
            cloud.close()
        clean_up(root, processes, mark)
        if args.keep or args.py_spy or failed:
            print(f"kept {root} (Airflow and task logs under {logs})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
