"""Parse-time benchmark: gennaker specs vs. the same pipelines as hand-written Python DAG files.

For N in (10, 200, 1000) it generates N specs of one shape (5 stages, one parallel
pair: check -> (wait-a || wait-b) -> join -> settle) and the same N pipelines as
Python DAG files with EmptyOperator, then times Airflow's DagBag over each folder.
Every measurement runs in a fresh Python process (imports included, as in the DAG
processor's parse), three times; the median is reported. It also times the
task-start parse (Airflow's parsing context names one dag_id) at 1 and 1000 specs.

Run:  .venv/bin/python tests/benchmarks/parse.py [--sizes 10,200,1000] [--repeat 3]
Prints the figures and the ratios (gennaker / hand-written; 1000 / 1 for task start).
Targets: ratio <= 1.0 at 1000 specs; task-start parse at 1000 within 1.2x of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SPEC = """\
application: app{i}
name: release
parameters:
  - {{name: version, default: "1.0.{i}"}}
stages:
  - id: check
    type: checkPreconditions
    preconditions:
      - expression: params.version | length > 0
  - {{id: wait-a, type: wait, duration: 1s, dependsOn: [check]}}
  - {{id: wait-b, type: wait, duration: 2s, dependsOn: [check]}}
  - id: join
    type: checkPreconditions
    dependsOn: [wait-a, wait-b]
    preconditions:
      - expression: "true"
  - {{id: settle, type: wait, duration: 1s}}
"""

PY_DAG = """\
from datetime import datetime, timezone

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param

with DAG(
    dag_id="app{i}.release",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={{"version": Param("1.0.{i}", type="string")}},
    tags=["app{i}"],
):
    check = EmptyOperator(task_id="check")
    wait_a = EmptyOperator(task_id="wait-a")
    wait_b = EmptyOperator(task_id="wait-b")
    join = EmptyOperator(task_id="join")
    settle = EmptyOperator(task_id="settle")
    check >> [wait_a, wait_b] >> join >> settle
"""

# Runs in a fresh process: time DagBag over a folder; print JSON.
PROBE = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    t1 = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1], bundle_path=sys.argv[2])
    t2 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "dagbag": t2 - t1, "dags": len(bag.dags),
                      "errors": len(bag.import_errors)}))
    """
)


def make_specs(folder: Path, n: int) -> Path:
    dags = folder / "dags"
    pipelines = dags / "pipelines"
    pipelines.mkdir(parents=True)
    shutil.copy(REPO / "dags" / "gennaker_pipelines.py", dags / "gennaker_pipelines.py")
    for i in range(n):
        (pipelines / f"app{i}.yaml").write_text(SPEC.format(i=i))
    return dags


def make_python(folder: Path, n: int) -> Path:
    dags = folder / "pydags"
    dags.mkdir(parents=True)
    for i in range(n):
        (dags / f"app{i}_release.py").write_text(PY_DAG.format(i=i))
    return dags


def probe(target: Path, bundle: Path, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(target), str(bundle)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(repeat: int, target: Path, bundle: Path, env: dict[str, str], expect: int) -> float:
    times = []
    for _ in range(repeat):
        r = probe(target, bundle, env)
        if r["dags"] != expect or r["errors"]:
            raise SystemExit(f"{target}: expected {expect} DAGs, got {r['dags']} and {r['errors']} errors")
        times.append(r["dagbag"])
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,200,1000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="gennaker-bench-"))
    env = dict(os.environ)
    env["AIRFLOW_HOME"] = str(work / "airflow-home")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"] = "0"
    env.pop("GENNAKER_PIPELINES", None)
    try:
        print(f"DagBag parse time, median of {args.repeat} fresh processes (seconds)")
        print(f"{'pipelines':>10} {'gennaker':>10} {'python':>10} {'ratio':>7}")
        rows = []
        for n in sizes:
            specs = make_specs(work / f"g{n}", n)
            py = make_python(work / f"p{n}", n)
            g = median_of(args.repeat, specs, specs, env, n)
            p = median_of(args.repeat, py, py, env, n)
            rows.append((n, g, p))
            print(f"{n:>10} {g:>10.3f} {p:>10.3f} {g / p:>7.2f}")

        print("\nTask-start parse (parsing context names one dag_id), median (seconds)")
        start = {}
        for n in (1, max(sizes)):
            specs = work / f"g{n}" / "dags" if (work / f"g{n}").exists() else make_specs(work / f"g{n}", n)
            task_env = dict(env)
            task_env["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = "app0.release"
            task_env["_AIRFLOW_PARSING_CONTEXT_TASK_ID"] = "check"
            start[n] = median_of(args.repeat, specs / "gennaker_pipelines.py", specs, task_env, 1)
            print(f"{n:>10} pipelines: {start[n]:.3f}")
        big = max(sizes)
        print(f"\nratio gennaker/python at {big}: {rows[-1][1] / rows[-1][2]:.2f} (target <= 1.0)")
        print(f"task-start ratio {big}/1: {start[big] / start[1]:.2f} (target <= 1.2)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
