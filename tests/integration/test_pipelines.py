"""gennaker pipelines on a real Airflow, checked through the REST API as a user sees them.

The pipelines are the specs in ``tests/integration/pipelines/`` (application ``it``);
``conftest.py`` starts Airflow with all of them loaded.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from functools import partial
from typing import Any

import pytest

from gennaker.spec.loader import load_folder

from .conftest import EXIT_REPORT_LAG, RUN_TIMEOUT, VENV_BIN, Airflow, TaskInstance, parse_time, wait_until

pytestmark = pytest.mark.integration

# A person takes a moment to answer. An answer within EXIT_REPORT_LAG of the task parking races Airflow.
RESUME_GRACE = EXIT_REPORT_LAG + 3.0

GOOD = [
    "it.parallel",
    "it.when",
    "it.onfailure-halt",
    "it.onfailure-haltbranch",
    "it.onfailure-failafterbranches",
    "it.onfailure-ignore",
    "it.judgment",
    "it.child",
    "it.parent",
    "it.upstream",
    "it.downstream",
    "it.on-upstream-failure",
]


def _span(tis: dict[str, TaskInstance], task_id: str) -> tuple[datetime, datetime]:
    """When a task started and ended."""
    ti = tis[task_id]
    assert ti.start is not None and ti.end is not None, f"{task_id} has no start/end: {ti}"
    return ti.start, ti.end


# ---------------------------------------------------------------------- 1. broken spec isolation


def test_broken_spec_is_an_import_error_of_its_own_file(alive: Airflow) -> None:
    for dag_id in GOOD:
        dag = alive.wait_for_dag(dag_id)
        assert dag["has_import_errors"] is False, dag_id
        assert dag["relative_fileloc"] == "gennaker_pipelines.py"
    assert alive.dag("it.broken") is None

    # What `gennaker validate` prints for the file, run where the DAG folder sits (like a repository).
    expected = load_folder(alive.pipelines, base=alive.root).errors["dags/pipelines/broken.yaml"].render()
    cli = subprocess.run(
        [str(VENV_BIN / "gennaker"), "validate", "dags/pipelines"],
        cwd=alive.root,
        env=alive.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1
    assert expected in cli.stderr
    specs = [f for f in alive.pipelines.glob("*.yaml") if f.name not in ("defaults.yaml", "broken.yaml")]
    assert f"{len(specs)} valid, 1 invalid" in cli.stderr
    headlines = [line for line in expected.splitlines() if line.startswith("dags/pipelines/broken.yaml:")]
    assert headlines == [
        "dags/pipelines/broken.yaml:6:16 stages[0].onFailure: 'explode' is not allowed; "
        "one of: 'halt', 'haltBranch', 'failAfterBranches' or 'ignore'",
        "dags/pipelines/broken.yaml:11:15 stages[1].duration: "
        "'soon' is not a duration such as 30s, 5m, 2h, 1h30m, 1d or ISO 8601 PT30M",
    ]

    def broken_error() -> dict[str, Any] | None:
        found = [e for e in alive.import_errors() if e["filename"] == "pipelines/broken.yaml"]
        return found[0] if found else None

    error = wait_until("the import error of pipelines/broken.yaml", broken_error, 120)
    assert error["stack_trace"] == expected
    assert error["bundle_name"] == "dags-folder"
    assert [e["filename"] for e in alive.import_errors()] == ["pipelines/broken.yaml"]

    # It stays listed while the DAG file is parsed again (not only between two parses).
    first = error["timestamp"]
    deadline = time.monotonic() + 90
    while True:
        again = broken_error()
        assert again is not None, "the import error of pipelines/broken.yaml disappeared"
        if again["timestamp"] != first:
            assert again["stack_trace"] == expected
            break
        assert time.monotonic() < deadline, "the DAG file was not parsed again within 90s"
        time.sleep(1)
    assert all(not e["filename"].endswith(".py") for e in alive.import_errors())


# ---------------------------------------------------------------------- 2. parallel branches and a join


def test_parallel_branches_then_join(alive: Airflow) -> None:
    dag_id = "it.parallel"
    alive.unpause(dag_id)
    run_id = alive.trigger(dag_id)
    assert alive.wait_for_run(dag_id, run_id) == "success"

    tis = alive.task_instances(dag_id, run_id)
    assert {t: ti.state for t, ti in tis.items()} == dict.fromkeys(["prepare", "left", "right", "join"], "success")
    (_, prepare_end), left, right, (join_start, _) = (_span(tis, t) for t in ("prepare", "left", "right", "join"))
    assert left[0] >= prepare_end and right[0] >= prepare_end
    # The two branches overlap in time: each started before the other ended.
    assert left[0] < right[1] and right[0] < left[1]
    assert join_start >= max(left[1], right[1])
    # Each wait took its 4 seconds (in the triggerer); the join checked both outputs.
    for start, end in (left, right):
        assert (end - start).total_seconds() >= 4


# ---------------------------------------------------------------------- 3. when


def test_when_false_skips_only_that_stage(alive: Airflow) -> None:
    dag_id = "it.when"
    alive.unpause(dag_id)
    prod = alive.trigger(dag_id, {"environment": "prod"})
    staging = alive.trigger(dag_id)  # the default: staging

    assert alive.wait_for_run(dag_id, prod) == "success"
    assert alive.task_states(dag_id, prod) == {
        "first": "success",
        "never": "skipped",
        "after-never": "success",
        "prod-only": "success",
        "last": "success",
    }
    assert alive.wait_for_run(dag_id, staging) == "success"
    assert alive.task_states(dag_id, staging) == {
        "first": "success",
        "never": "skipped",
        "after-never": "success",
        "prod-only": "skipped",
        "last": "success",
    }


# ---------------------------------------------------------------------- 4. onFailure


ON_FAILURE = {
    # mode: (task states, run state), as in the table of gennaker.operators.base
    "halt": (
        {
            "start": "success",
            "pause": "success",
            "bad": "failed",
            "after-bad": "upstream_failed",
            "slow": "success",  # already waiting in the triggerer when 'bad' failed (see the test)
            "after-slow": "skipped",  # not started yet: pipeline halted
        },
        "failed",
    ),
    "haltBranch": (
        {
            "start": "success",
            "pause": "success",
            "bad": "skipped",
            "after-bad": "skipped",
            "slow": "success",
            "after-slow": "success",
        },
        "success",
    ),
    "failAfterBranches": (
        {
            "start": "success",
            "pause": "success",
            "bad": "failed",
            "after-bad": "upstream_failed",
            "slow": "success",
            "after-slow": "success",
        },
        "failed",
    ),
    "ignore": (
        {
            "start": "success",
            "pause": "success",
            "bad": "skipped",
            "after-bad": "success",
            "slow": "success",
            "after-slow": "success",
        },
        "success",
    ),
}

# Why each skipped stage was skipped: the outcome it records (XCom gennaker.outcome), shown in the UI.
SKIP_OUTCOMES = {
    "halt": {"after-slow": "pipeline_halted"},
    "haltBranch": {"bad": "branch_halted", "after-bad": "branch_halted"},
    "failAfterBranches": {},
    "ignore": {"bad": "failed_ignored"},
}


@pytest.fixture(scope="module")
def on_failure_runs(airflow: Airflow) -> dict[str, tuple[str, str]]:
    """One run of each onFailure pipeline, all started at once: mode -> (dag_id, run_id)."""
    runs = {}
    for mode in ON_FAILURE:
        dag_id = f"it.onfailure-{mode.lower()}"
        airflow.unpause(dag_id)
        runs[mode] = (dag_id, airflow.trigger(dag_id))
    return runs


@pytest.mark.parametrize("mode", list(ON_FAILURE))
def test_on_failure(alive: Airflow, on_failure_runs: dict[str, tuple[str, str]], mode: str) -> None:
    dag_id, run_id = on_failure_runs[mode]
    expected_tasks, expected_run = ON_FAILURE[mode]
    expected_outcomes = SKIP_OUTCOMES[mode]
    state = alive.wait_for_run(dag_id, run_id, timeout=2 * RUN_TIMEOUT)
    tis = alive.task_instances(dag_id, run_id)
    states = {t: ti.state for t, ti in tis.items()}
    if mode == "halt" and states["slow"] == "skipped":
        # A loaded machine started 'slow' only after 'bad' had failed: then it is halted too, as the table says.
        expected_tasks = {**expected_tasks, "slow": "skipped"}
        expected_outcomes = {**expected_outcomes, "slow": "pipeline_halted"}
    assert states == expected_tasks
    assert state == expected_run
    skipped = [t for t, s in states.items() if s == "skipped"]
    assert {t: alive.xcom(dag_id, run_id, t, "gennaker.outcome") for t in skipped} == expected_outcomes
    if mode == "halt":
        # The failed stage said so at once (Airflow records the failed state only when its process has exited).
        assert alive.xcom(dag_id, run_id, "bad", "gennaker.outcome") == "pipeline_halted"
    if mode == "halt" and states["slow"] == "success":
        # It went on because it had started (it was waiting in the triggerer) before 'bad' failed.
        assert _span(tis, "slow")[0] < _span(tis, "bad")[1]


# ---------------------------------------------------------------------- 5. manualJudgment


def test_manual_judgment_answered_through_the_api(alive: Airflow) -> None:
    dag_id = "it.judgment"
    alive.unpause(dag_id)
    go = alive.trigger(dag_id)
    stop = alive.trigger(dag_id)
    for run_id in (go, stop):
        alive.wait_for_task_state(dag_id, run_id, "ask", {"awaiting_input"})
        detail = alive.hitl_detail(dag_id, run_id, "ask")
        assert detail is not None
        assert detail["subject"] == "Go on with the release?"
        assert detail["options"] == ["continue", "stop"]
        assert detail["response_received"] is False

    time.sleep(RESUME_GRACE)
    # A viewer may look but not answer.
    assert alive.answer(dag_id, go, "ask", ["continue"], user="viewer").status_code == 403
    assert alive.answer(dag_id, go, "ask", ["maybe"]).status_code == 400

    answered = alive.answer(dag_id, go, "ask", ["continue"])
    assert answered.status_code == 200, answered.text
    assert answered.json()["responded_by"]["name"] == "admin"
    assert alive.answer(dag_id, stop, "ask", ["stop"]).status_code == 200

    assert alive.wait_for_run(dag_id, go) == "success"
    assert alive.task_states(dag_id, go) == {"ask": "success", "proceed": "success"}
    judgment = alive.xcom(dag_id, go, "ask")
    assert judgment["judgment"] == "continue"
    assert judgment["respondedBy"] == "admin"

    assert alive.wait_for_run(dag_id, stop) == "failed"
    assert alive.task_states(dag_id, stop) == {"ask": "failed", "proceed": "upstream_failed"}
    assert alive.xcom(dag_id, stop, "ask")["judgment"] == "stop"
    assert any(
        "JudgmentStopped" in line and "admin chose 'stop'" in line for line in alive.task_log(dag_id, stop, "ask")
    )


# ---------------------------------------------------------------------- 6. runPipeline


def test_run_pipeline_waits_for_the_child(alive: Airflow) -> None:
    alive.unpause("it.child")
    alive.unpause("it.parent")
    good = alive.trigger("it.parent", {"version": "1.2.3"})
    bad = alive.trigger("it.parent", {"version": "one"})

    assert alive.wait_for_run("it.parent", good) == "success"
    assert alive.task_states("it.parent", good) == {"run-child": "success", "after": "success"}
    assert alive.wait_for_run("it.parent", bad) == "failed"
    assert alive.task_states("it.parent", bad) == {"run-child": "failed", "after": "upstream_failed"}

    children = {r["conf"].get("version"): r for r in alive.runs("it.child")}
    assert children["1.2.3"]["state"] == "success"
    assert children["one"]["state"] == "failed"
    assert {r["run_type"] for r in children.values()} == {"operator_triggered"}
    # The parent waited for the child: it finished after the child did.
    child_end = parse_time(children["1.2.3"]["end_date"])
    assert child_end is not None and _span(alive.task_instances("it.parent", good), "run-child")[1] >= child_end


# ---------------------------------------------------------------------- 7. pipeline trigger


def test_pipeline_trigger_starts_downstream(alive: Airflow) -> None:
    for dag_id in ("it.downstream", "it.on-upstream-failure", "it.upstream"):
        alive.unpause(dag_id)
    assert alive.runs("it.downstream") == alive.runs("it.on-upstream-failure") == []
    succeeded = alive.trigger("it.upstream")
    failed = alive.trigger("it.upstream", {"ok": False})
    assert alive.wait_for_run("it.upstream", succeeded) == "success"
    assert alive.task_states("it.upstream", succeeded) == {"check": "success", "gennaker_pipeline_status": "success"}
    assert alive.wait_for_run("it.upstream", failed) == "failed"
    # The status is published whatever the stages did.
    assert alive.task_states("it.upstream", failed) == {"check": "failed", "gennaker_pipeline_status": "success"}

    # Each listener starts once: on the status it listens to, and only that one.
    for listener in ("it.downstream", "it.on-upstream-failure"):
        started = wait_until(f"{listener} to start", partial(alive.runs, listener), RUN_TIMEOUT)[0]
        assert started["run_type"] == "asset_triggered"
        assert alive.wait_for_run(listener, started["dag_run_id"]) == "success"
    assert len(alive.runs("it.downstream")) == 1
    assert len(alive.runs("it.on-upstream-failure")) == 1

    # As asset events of the publishing task. (Read only now: Airflow 3.3's /assets/events answers 500 while
    # a run that an event created has not started yet.)
    events = alive.get("/assets/events", params={"source_dag_id": "it.upstream"})["asset_events"]
    assert sorted((e["name"], e["source_run_id"], e["source_task_id"]) for e in events) == sorted(
        [
            ("gennaker.pipeline.it.upstream.succeeded", succeeded, "gennaker_pipeline_status"),
            ("gennaker.pipeline.it.upstream.failed", failed, "gennaker_pipeline_status"),
        ]
    )


# ---------------------------------------------------------------------- 8. constrained parameters


def test_a_value_that_does_not_fit_a_parameter_is_refused_before_any_run(alive: Airflow) -> None:
    alive.wait_for_dag("it.params")
    refusals = [
        ({"version": "1.0.0; rm -rf /"}, "version"),
        ({"version": "../../1.0.0"}, "version"),
        ({"version": "1.0.0\n"}, "version"),
        ({"environment": "qa"}, "environment"),
    ]
    for conf, refused in refusals:
        # The trigger form posts here too (with a Referer): Airflow validates the params in create_dagrun.
        for headers in ({}, {"Referer": f"{alive.url}/dags/it.params/trigger"}):
            body = {"logical_date": None, "conf": conf}
            r = alive.request("POST", "/dags/it.params/dagRuns", json=body, headers=headers)
            assert r.status_code == 400, f"{conf}: {r.status_code} {r.text}"
            assert f"Invalid input for param {refused}" in r.json()["detail"]
    assert alive.runs("it.params") == []
    # A value that fits starts a run.
    run_id = alive.trigger("it.params", {"version": "2.10.0", "environment": "prod"})
    assert [r["dag_run_id"] for r in alive.runs("it.params")] == [run_id]
