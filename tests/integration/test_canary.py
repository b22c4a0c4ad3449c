"""The canary stage on the real Airflow against the local provider, with live traffic.

The test process sets up the cloud in the session's ``GENNAKER_HOME`` (the one the Airflow
processes use): the demo service 1.0.0, a good 2.0.0 and a bad 2.0.1 (80 ms slower, 20% of
requests answered 500) built with ``scripts/build-hello.sh`` and baked, a load balancer per
pipeline, and the live server group ``hello-<stack>-v000`` (1.0.0) behind it. The pipelines
(``pipelines/canary-*.yaml``: deploy dark, canary 30 s in two 15 s intervals, 60 s in two 30 s
for the one to cancel, with 20% of the traffic each to baseline and canary, promote) run at
the same time through the REST API, each on its own cluster, while client threads send
requests to each load balancer:

- a good version passes its two intervals, the baseline and canary groups are gone, it is
  promoted, and its report page (the task's "Canary report" link) is served by the API server;
- a bad version fails at its first interval, is never promoted, and the live version serves
  throughout: the only failed requests are the canary's own;
- a run marked failed (PATCH through the REST API) while its canary waits in the triggerer
  leaves no baseline or canary server group behind: the ``canary.cleanup`` teardown runs
  (and fails, so the run ends failed).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from localcloud import Cloud, Load, Sample, wait_for

from gennaker.cloud.local.provider import LocalProvider

from .conftest import Airflow

pytestmark = pytest.mark.integration

if not Path("/proc/self/environ").exists():  # pragma: no cover - leftovers are found through /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

RELEASES = {"v1": ("1.0.0", ()), "good": ("2.0.0", ()), "bad": ("2.0.1", ("--latency-ms", "80", "--error-rate", "0.2"))}
GOOD, BAD, CANCEL = "hello.canary-good", "hello.canary-bad", "hello.canary-cancel"
TEST_SECONDS = 200
RUN_SECONDS = 150.0


def live_cluster(cloud: Cloud, provider: LocalProvider, image: str, stack: str) -> tuple[int, str]:
    """Load balancer hello-<stack> and its live group hello-<stack>-v000 (2 instances): port and group."""
    port = cloud.load_balancer(provider, f"hello-{stack}")
    group = cloud.create(provider, image, stack=stack, count=2, lb=f"hello-{stack}")
    cloud.wait_up(provider, group, 2)
    cloud.wait_serving(port, "1.0.0")
    return port, group


def leftovers(provider: LocalProvider, stack: str) -> list[str]:
    """Server groups of the baseline and canary clusters of hello-<stack> (those being destroyed too)."""
    return [
        g.name
        for cluster in (f"hello-{stack}-baseline", f"hello-{stack}-canary")
        for g in provider.list_server_groups("hello", cluster=cluster)
    ]


def weights(provider: LocalProvider, lb: str) -> dict[str, int]:
    return dict(next(x for x in provider.list_load_balancers() if x.name == lb).weights)


def log_of(airflow: Airflow, dag_id: str, run_id: str, task_id: str) -> str:
    return "\n".join(airflow.task_log(dag_id, run_id, task_id))


def between(samples: list[Sample], start: Any, end: Any) -> list[Sample]:
    return [s for s in samples if start.timestamp() <= s.sent < end.timestamp()]


# --------------------------------------------------------------------------- three canaries at once


def test_canaries_good_bad_and_cancelled(alive: Airflow, cloud: Cloud, images: dict[str, str]) -> None:
    """Three pipelines at once (each on its own cluster and load balancer, under its own request loop)."""
    provider = cloud.provider()
    ports, lives = {}, {}
    for stack in ("cg", "cb", "cc"):
        ports[stack], lives[stack] = live_cluster(cloud, provider, images["v1"], stack)
    for dag_id in (GOOD, BAD, CANCEL):
        alive.unpause(dag_id)

    # About 80 requests a second per load balancer: with 20% of them each, the bad canary's 20% errors show in
    # nearly every one-second point (at 40 a second many points have none, and the judge may not call it High),
    # and three pipelines' worth of proxies, instances and clients still leave the CI machine's Airflow room.
    loads = {stack: Load(port, limit=RUN_SECONDS + 20, pause=0.02) for stack, port in ports.items()}
    for load in loads.values():
        load.__enter__()
    try:
        time.sleep(1.0)
        runs = {
            GOOD: alive.trigger(GOOD, {"image": images["good"]}),
            BAD: alive.trigger(BAD, {"image": images["bad"]}),
            CANCEL: alive.trigger(CANCEL, {"image": images["good"]}),
        }

        def judging() -> bool:
            state = alive.task_states(CANCEL, runs[CANCEL]).get("canary")
            shared = weights(provider, "hello-cc")
            return state == "deferred" and len(shared) == 2 and len(leftovers(provider, "cc")) == 2

        wait_for("the canary to share the traffic and wait in the triggerer", judging, timeout=90, every=0.5)
        made = leftovers(provider, "cc")
        answer = alive.request("PATCH", f"/dags/{CANCEL}/dagRuns/{runs[CANCEL]}", json={"state": "failed"})
        assert answer.status_code == 200, answer.text
        states = {dag_id: alive.wait_for_run(dag_id, run_id, timeout=RUN_SECONDS) for dag_id, run_id in runs.items()}
        time.sleep(1.0)
    finally:
        for load in loads.values():
            load.__exit__(None, None, None)

    check_good(alive, provider, runs[GOOD], states[GOOD], loads["cg"].sorted(), lives["cg"], images)
    check_bad(alive, provider, runs[BAD], states[BAD], loads["cb"].sorted(), lives["cb"])
    check_cancelled(alive, provider, runs[CANCEL], states[CANCEL], loads["cc"].sorted(), lives["cc"], made)


def check_good(
    alive: Airflow,
    provider: LocalProvider,
    run_id: str,
    state: str,
    samples: list[Sample],
    live: str,
    images: dict[str, str],
) -> None:
    """Two intervals pass, the version is promoted, nothing is left behind, the report is served."""
    tis = alive.task_instances(GOOD, run_id)
    logs = {task: log_of(alive, GOOD, run_id, task) for task in ("deploy", "canary", "promote")}
    assert state == "success", {t: (ti.state, logs.get(t, "")[-3000:]) for t, ti in tis.items()}
    assert {t: ti.state for t, ti in tis.items()} == dict.fromkeys(
        ["deploy", "canary", "canary.cleanup", "promote"], "success"
    )
    out = alive.xcom(GOOD, run_id, "canary")
    assert (out["verdict"], out["passed"], out["score"], len(out["scores"])) == ("Pass", True, 100.0, 2), out
    assert out["metrics"] == {"error_rate": "Pass", "latency_p50": "Pass"}
    assert (out["baseline"], out["canary"]) == ("hello-cg-baseline-v000", "hello-cg-canary-v000")
    assert (out["baselineImage"], out["canaryImage"]) == (images["v1"], images["good"])
    canary_log = logs["canary"]
    assert "traffic: 20% to baseline hello-cg-baseline-v000, 20% to canary hello-cg-canary-v000" in canary_log
    assert "interval 1/2: score 100 (pass 75, marginal 50): error_rate Pass, latency_p50 Pass" in canary_log
    assert "interval 2/2: score 100" in canary_log
    assert "(in the triggerer, no worker slot held)" in canary_log and "Pausing task as DEFERRED" in canary_log
    assert "fewer than 50 baseline points" in canary_log  # 15 one-second samples per window
    assert "canary passed" in canary_log
    failed = [s for s in samples if s.error]
    assert not failed, f"{len(failed)} of {len(samples)} requests failed, e.g. {failed[:5]}"
    during = between(samples, tis["canary"].start, tis["canary"].end)
    share = sum(1 for s in during if s.group == out["canary"]) / max(len(during), 1)
    assert 0.08 < share < 0.35, f"the canary took {share:.0%} of {len(during)} requests"
    assert {s.version for s in during if s.group == out["baseline"]} == {"1.0.0"}
    assert {s.version for s in during if s.group == out["canary"]} == {"2.0.0"}
    assert samples[-1].version == "2.0.0"  # promoted
    assert alive.xcom(GOOD, run_id, "promote")["serverGroup"] == "hello-cg-v001"
    assert provider.get_server_group(live).enabled is False
    wait_for("the good canary's groups to be gone", lambda: not leftovers(provider, "cg"), timeout=20)
    assert weights(provider, "hello-cg") == {}
    # The report: in XCom, linked from the task, served by the API server to whoever may read the DAG.
    report = alive.xcom(GOOD, run_id, "canary", key="gennaker.canary.report")
    assert report["status"] == "passed" and len(report["intervals"]) == 2
    assert alive.xcom(GOOD, run_id, "canary", key="_link_CanaryReportLink") == out["report"]
    assert out["report"].startswith(f"{alive.url}/gennaker/canary/reports/{GOOD}/")
    page = alive.http.get(out["report"], headers={"Authorization": f"Bearer {alive.token('viewer')}"}, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:500]
    assert "hello-cg-canary-v000" in page.text and "<svg" in page.text and "latency_p50" in page.text
    assert alive.http.get(out["report"], timeout=30).status_code == 401  # Airflow's login, as every page


def check_bad(
    alive: Airflow, provider: LocalProvider, run_id: str, state: str, samples: list[Sample], live: str
) -> None:
    """The first interval fails, it is never promoted, and the live version serves throughout."""
    tis = alive.task_instances(BAD, run_id)
    canary_log = log_of(alive, BAD, run_id, "canary")
    assert state == "failed"
    states = {t: ti.state for t, ti in tis.items()}
    expected = {"deploy": "success", "canary": "failed", "canary.cleanup": "success", "promote": "upstream_failed"}
    assert states == expected
    assert tis["canary"].try_number == 1
    out = alive.xcom(BAD, run_id, "canary")
    assert (out["verdict"], out["passed"], out["stoppedAt"]) == ("Fail", False, 1), out
    (score,) = out["scores"]
    assert score <= 50, out  # at or below marginal: stopped at the first interval
    # Which metrics come out High depends on the traffic each one-second point saw: the 80 ms slower build is
    # always High on latency; its 20% errors are High too unless most points of the canary had none (then the
    # Mann-Whitney estimate is 0, as in Kayenta), which a loaded machine's slower clients can cause.
    assert out["metrics"]["latency_p50"] == "High", out
    assert out["metrics"]["error_rate"] in ("High", "Pass"), out
    assert re.search(r"interval 1/2: score \d+(\.\d+)? \(pass 75, marginal 50\): .*High", canary_log), canary_log[
        -3000:
    ]
    assert "stopping the canary after interval 1 of 2" in canary_log
    assert "destroying baseline hello-cb-baseline-v000 and canary hello-cb-canary-v000" in canary_log
    assert "CanaryFailed" in canary_log and "is not above the marginal score threshold" in canary_log
    failed = [s for s in samples if s.error]
    assert failed, "the bad canary answered no request with an error"
    assert {s.group for s in failed} == {out["canary"]}, "a request failed outside the canary's share"
    assert {s.version for s in samples if s.group != out["canary"]} == {"1.0.0"}
    assert {s.version for s in samples if s.group == out["canary"] and not s.error} == {"2.0.1"}
    assert samples[-1].version == "1.0.0" and samples[-1].group == live
    assert provider.get_server_group(live).enabled is True
    assert provider.get_server_group("hello-cb-v001").enabled is False  # the dark deploy: never promoted
    wait_for("the bad canary's groups to be gone", lambda: not leftovers(provider, "cb"), timeout=20)
    assert weights(provider, "hello-cb") == {}


def check_cancelled(
    alive: Airflow,
    provider: LocalProvider,
    run_id: str,
    state: str,
    samples: list[Sample],
    live: str,
    made: list[str],
) -> None:
    """Marked failed while the canary waited in the triggerer: the teardown leaves nothing behind."""
    assert sorted(made) == ["hello-cc-baseline-v000", "hello-cc-canary-v000"]
    assert state == "failed"
    states = alive.task_states(CANCEL, run_id)
    assert states["canary"] == "failed" and states["promote"] == "skipped", states
    # The teardown cleaned up, and failed saying so: that keeps the run failed (its stages after the canary
    # were skipped by the mark, and a run whose leaves are all skipped would count as a success).
    assert states["canary.cleanup"] == "failed", states
    cleanup_log = log_of(alive, CANCEL, run_id, "canary.cleanup")
    assert "had left hello-cc-baseline-v000, hello-cc-canary-v000 behind: destroyed" in cleanup_log, cleanup_log
    assert "CanaryInterrupted" in cleanup_log and "ended failed before it finished" in cleanup_log
    wait_for("no baseline or canary group left", lambda: not leftovers(provider, "cc"), timeout=20)
    assert weights(provider, "hello-cc") == {}
    assert not [s for s in samples if s.error], "requests failed"
    assert samples[-1].group == live and provider.get_server_group(live).enabled is True
