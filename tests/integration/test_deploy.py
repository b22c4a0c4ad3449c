"""Deploy strategies, bake, rollback, retries and the cluster lock on a real Airflow, under live traffic.

Each test seeds its cluster (through :class:`LocalProvider`, in the home the Airflow processes use)
with an enabled server group of the demo service 1.0.0 behind its own load balancer, then runs a
pipeline of ``pipelines/deploy-*.yaml`` through the REST API while two client threads send
requests to the load balancer and record every answer (version, server group, error). The
scheduler, triggerer and workers are Airflow's own; nothing is called in-process.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from localcloud import ACCOUNT, REGION, Cloud, Load, Sample, build_hello, wait_for

from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import ServerGroup

from .conftest import FINISHED_RUN, Airflow, wait_until
from .conftest import timestamp as _at

pytestmark = pytest.mark.integration

RELEASES = {"v1": "1.0.0", "v2": "2.0.0"}  # baked by the images fixture (conftest)
RUN_TIMEOUT = 150
TEST_SECONDS = 300


def _groups(home: Path, cluster: str) -> list[ServerGroup]:
    store = StateStore(home / "local" / "state.db")
    try:
        found = store.list_server_groups(account=ACCOUNT, region=REGION, application="hello", cluster=cluster)
    finally:
        store.close()
    return sorted(found, key=lambda g: g.created)


def _seed(cloud: Cloud, image: str, stack: str) -> tuple[LocalProvider, int, str]:
    """A load balancer hello-<stack> and an enabled, healthy 1.0.0 group behind it; (provider, port, group)."""
    provider = cloud.provider()
    port = cloud.load_balancer(provider, f"hello-{stack}")
    old = cloud.create(provider, image, stack=stack, count=1, lb=f"hello-{stack}")
    cloud.wait_up(provider, old, 1)
    cloud.wait_serving(port, "1.0.0")
    return provider, port, old


def _deploy(alive: Airflow, dag_id: str, port: int, conf: dict[str, Any]) -> tuple[str, str, list[Sample]]:
    """Run the pipeline under load: (run id, state, every answer in order)."""
    alive.unpause(dag_id)
    with Load(port) as load:
        time.sleep(1.0)  # answers from before the run
        run_id = alive.trigger(dag_id, conf)
        state = alive.wait_for_run(dag_id, run_id, timeout=RUN_TIMEOUT)
        time.sleep(1.5)  # and from after it
    return run_id, state, load.sorted()


def _explain(alive: Airflow, dag_id: str, run_id: str) -> str:
    parts = []
    for task, ti in alive.task_instances(dag_id, run_id).items():
        log = "\n".join(alive.task_log(dag_id, run_id, task, max(ti.try_number, 1)))
        parts.append(f"--- {task}: {ti.state}\n{log[-3000:]}")
    return "\n".join(parts)


def _no_failures(samples: list[Sample]) -> None:
    failed = [s for s in samples if s.error]
    assert not failed, f"{len(failed)} of {len(samples)} requests failed, e.g. {failed[:5]}"
    assert len(samples) > 50


def _switch_once(samples: list[Sample], start: float, end: float, old: str = "1.0.0", new: str = "2.0.0") -> None:
    """Only ``old`` before ``start``, only ``new`` after ``end``, and once ``old`` stops it never comes back."""
    before = {s.version for s in samples if s.sent < start}
    after = {s.version for s in samples if s.sent > end}
    assert before == {old}, f"{new} answered before the deploy started"
    assert after == {new}, f"{old} still answered after the deploy ended: {after}"
    versions = [s.version for s in samples]
    last_old = len(versions) - 1 - versions[::-1].index(old)
    first_new = versions.index(new)
    assert first_new <= last_old + 1
    assert set(versions[last_old + 1 :]) == {new}


# --------------------------------------------------------------------------- strategies


def test_redblack_switches_once_keeps_max_remaining_and_scales_down(
    alive: Airflow, cloud: Cloud, images: dict[str, str]
) -> None:
    dag_id = "hello.deploy-redblack"
    _, port, v0 = _seed(cloud, images["v1"], "rb")

    run_id, state, samples = _deploy(alive, dag_id, port, {"image": images["v2"]})
    assert state == "success", _explain(alive, dag_id, run_id)
    _no_failures(samples)
    ti = alive.task_instances(dag_id, run_id)["deploy"]
    _switch_once(samples, _at(ti.start), _at(ti.end))
    out = alive.xcom(dag_id, run_id, "deploy")
    v1 = out["serverGroup"]
    assert (v0, v1) == ("hello-rb-v000", "hello-rb-v001")
    assert out["previousServerGroup"] == v0 and out["disabled"] == [v0] and out["strategy"] == "redblack"
    assert out["scaledDown"] == [v0] and out["destroyed"] == []
    groups = {g.name: g for g in _groups(alive.gennaker_home, "hello-rb")}
    assert groups[v1].enabled and not groups[v0].enabled
    assert groups[v0].capacity.desired == 0  # scaleDownOld
    assert {s.group for s in samples if s.version == "2.0.0"} == {v1}
    log = "\n".join(alive.task_log(dag_id, run_id, "deploy"))
    assert f"disabled {v0} (traffic now 100% on {v1})" in log
    assert f"{v1}: 2/2 instances healthy" in log

    # A second deploy: maxRemaining 1 keeps v001 (disabled, scaled down) and destroys v000.
    run_id, state, samples = _deploy(alive, dag_id, port, {"image": images["v1"]})
    assert state == "success", _explain(alive, dag_id, run_id)
    _no_failures(samples)
    ti = alive.task_instances(dag_id, run_id)["deploy"]
    _switch_once(samples, _at(ti.start), _at(ti.end), old="2.0.0", new="1.0.0")
    out = alive.xcom(dag_id, run_id, "deploy")
    v2 = out["serverGroup"]
    assert v2 == "hello-rb-v002" and out["destroyed"] == [v0] and out["disabled"] == [v1]
    wait_for(f"{v0} to be destroyed", lambda: v0 not in {g.name for g in _groups(alive.gennaker_home, "hello-rb")})
    groups = {g.name: g for g in _groups(alive.gennaker_home, "hello-rb")}
    assert set(groups) == {v1, v2}
    assert groups[v2].enabled and not groups[v1].enabled and groups[v1].capacity.desired == 0


def test_highlander_destroys_every_older_group(alive: Airflow, cloud: Cloud, images: dict[str, str]) -> None:
    dag_id = "hello.deploy-highlander"
    _, port, v0 = _seed(cloud, images["v1"], "hl")
    run_id, state, samples = _deploy(alive, dag_id, port, {"image": images["v2"]})
    assert state == "success", _explain(alive, dag_id, run_id)
    _no_failures(samples)
    ti = alive.task_instances(dag_id, run_id)["deploy"]
    _switch_once(samples, _at(ti.start), _at(ti.end))
    out = alive.xcom(dag_id, run_id, "deploy")
    assert out["destroyed"] == [v0] and out["disabled"] == [v0]
    wait_for(
        "only the new group to remain",
        lambda: [g.name for g in _groups(alive.gennaker_home, "hello-hl")] == [out["serverGroup"]],
    )


def test_rolling_red_black_moves_traffic_in_steps(alive: Airflow, cloud: Cloud, images: dict[str, str]) -> None:
    dag_id = "hello.deploy-rolling"
    _, port, v0 = _seed(cloud, images["v1"], "rr")
    run_id, state, samples = _deploy(alive, dag_id, port, {"image": images["v2"]})
    assert state == "success", _explain(alive, dag_id, run_id)
    _no_failures(samples)
    ti = alive.task_instances(dag_id, run_id)["deploy"]
    _switch_once(samples, _at(ti.start), _at(ti.end))
    log = "\n".join(alive.task_log(dag_id, run_id, "deploy"))
    v1 = alive.xcom(dag_id, run_id, "deploy")["serverGroup"]
    assert f"step 1 of 2: traffic 50% on {v1}, 50% on {v0}" in log
    assert f"disabled {v0} (traffic now 100% on {v1})" in log
    assert "cleared the load balancers' weights" in log
    # During the 50% step (a 4 s pause) both versions answered, in about equal shares.
    versions = [s.version for s in samples]
    first_new = versions.index("2.0.0")
    last_old = len(versions) - 1 - versions[::-1].index("1.0.0")
    mixed = versions[first_new : last_old + 1]
    share = mixed.count("2.0.0") / len(mixed)
    assert len(mixed) > 50 and 0.3 < share < 0.7, (len(mixed), share)
    provider = cloud.provider()
    (lb,) = [lb for lb in provider.list_load_balancers() if lb.name == "hello-rr"]
    assert lb.weights == {}


def test_strategy_none_adds_the_group_beside_the_old(alive: Airflow, cloud: Cloud, images: dict[str, str]) -> None:
    dag_id = "hello.deploy-none"
    _, port, _v0 = _seed(cloud, images["v1"], "nn")
    run_id, state, samples = _deploy(alive, dag_id, port, {"image": images["v2"]})
    assert state == "success", _explain(alive, dag_id, run_id)
    _no_failures(samples)
    ti = alive.task_instances(dag_id, run_id)["deploy"]
    assert {s.version for s in samples if s.sent < _at(ti.start)} == {"1.0.0"}
    assert {s.version for s in samples if s.sent > _at(ti.end)} == {"1.0.0", "2.0.0"}
    assert all(g.enabled for g in _groups(alive.gennaker_home, "hello-nn"))


# --------------------------------------------------------------------------- failure, retry, lock


def test_a_deploy_that_never_gets_healthy_rolls_back(alive: Airflow, cloud: Cloud, images: dict[str, str]) -> None:
    dag_id = "hello.deploy-unhealthy"
    _, port, v0 = _seed(cloud, images["v1"], "uh")
    run_id, state, samples = _deploy(alive, dag_id, port, {"image": images["v2"]})
    assert state == "failed"
    _no_failures(samples)
    assert {s.version for s in samples} == {"1.0.0"}  # the new version never took a request
    groups = {g.name: g for g in _groups(alive.gennaker_home, "hello-uh")}
    (new,) = set(groups) - {v0}
    assert groups[v0].enabled and not groups[new].enabled
    log = "\n".join(alive.task_log(dag_id, run_id, "deploy"))
    assert "rolled back" in log and f"disabled {new}" in log and f"traffic stays on {v0}" in log
    # The 8 s health wait outlasts the worker's 5 s of polling: it went on in the triggerer.
    assert "waiting until healthy (in the triggerer, no worker slot held)" in log
    assert "Pausing task as DEFERRED" in log


def _task_pid(alive: Airflow, dag_id: str, run_id: str, task_id: str) -> int | None:
    ti = alive.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    return ti.get("pid") if ti.get("state") == "running" else None


def test_killing_the_worker_mid_deploy_retries_into_one_new_group(
    alive: Airflow, cloud: Cloud, images: dict[str, str], tmp_path: Path
) -> None:
    dag_id = "hello.deploy-bake"
    _, port, v0 = _seed(cloud, images["v1"], "bk")
    # 2.0.0 whose instances take 3 s to start: the deploy is inside its health wait when we kill it.
    artifact = build_hello("2.0.0", tmp_path, "--startup-seconds", "3")
    alive.unpause(dag_id)
    with Load(port) as load:
        run_id = alive.trigger(dag_id, {"artifact": str(artifact)})

        def created() -> int | None:
            names = [g.name for g in _groups(alive.gennaker_home, "hello-bk") if g.name != v0]
            return _task_pid(alive, dag_id, run_id, "deploy") if names else None

        pid = wait_for("the deploy to create its server group", created, timeout=90, every=0.1)
        os.kill(pid, signal.SIGKILL)
        # Not wait_for_run: Airflow learns of the killed task through the executor ("task state changed
        # externally", a state mismatch) and fails that try, which is how a lost worker looks to it.
        state = wait_until(
            f"run {run_id} to finish",
            lambda: s if (s := alive.run(dag_id, run_id)["state"]) in FINISHED_RUN else None,
            RUN_TIMEOUT,
        )
        time.sleep(1.0)
    assert state == "success", _explain(alive, dag_id, run_id)
    _no_failures(load.sorted())
    ti = alive.task_instances(dag_id, run_id)["deploy"]
    assert ti.try_number == 2
    groups = _groups(alive.gennaker_home, "hello-bk")
    assert [g.name for g in groups] == [v0, "hello-bk-v001"]  # exactly one new server group
    assert groups[1].enabled and not groups[0].enabled
    bake = alive.xcom(dag_id, run_id, "bake")
    assert bake["version"] == "2.0.0" and groups[1].image_id == bake["imageId"]


def test_two_pipelines_deploying_one_cluster_serialize(alive: Airflow, cloud: Cloud, images: dict[str, str]) -> None:
    _, port, v0 = _seed(cloud, images["v1"], "lk")
    first, second = "hello.deploy-lock-a", "hello.deploy-lock-b"
    alive.unpause(first)
    alive.unpause(second)
    with Load(port) as load:
        run_a = alive.trigger(first, {"image": images["v2"]})
        run_b = alive.trigger(second, {"image": images["v1"]})
        assert alive.wait_for_run(first, run_a, timeout=RUN_TIMEOUT) == "success", _explain(alive, first, run_a)
        assert alive.wait_for_run(second, run_b, timeout=RUN_TIMEOUT) == "success", _explain(alive, second, run_b)
    _no_failures(load.sorted())
    a = alive.task_instances(first, run_a)["deploy"]
    b = alive.task_instances(second, run_b)["deploy"]
    logs = {
        first: "\n".join(alive.task_log(first, run_a, "deploy", a.try_number)),
        second: "\n".join(alive.task_log(second, run_b, "deploy", b.try_number)),
    }
    waited = [dag for dag, log in logs.items() if "cluster hello-lk is busy: waiting for" in log]
    assert len(waited) == 1, "exactly one of the two deploys waited for the other"
    holder, waiter = (first, second) if waited == [second] else (second, first)
    assert f"{holder}/" in logs[waiter]  # it names whom it waits for
    groups = _groups(alive.gennaker_home, "hello-lk")
    assert [g.name for g in groups] == [v0, "hello-lk-v001", "hello-lk-v002"]
    made = {g.created_by.dag_id: g for g in groups[1:] if g.created_by}
    holder_end = _at((a if holder == first else b).end)
    assert made[waiter].created.timestamp() >= holder_end - 1.0, "the second deploy started before the first ended"
    assert [g.name for g in groups if g.enabled] == [made[waiter].name]


def test_rollback_on_failure_gives_the_traffic_back_when_a_later_stage_fails(
    alive: Airflow, cloud: Cloud, images: dict[str, str]
) -> None:
    dag_id = "hello.deploy-rollback"
    _, port, v0 = _seed(cloud, images["v1"], "rk")
    run_id, state, samples = _deploy(alive, dag_id, port, {"image": images["v2"], "healthy": False})
    assert state == "failed"
    _no_failures(samples)
    tis = alive.task_instances(dag_id, run_id)
    assert {t: ti.state for t, ti in tis.items()} == {
        "deploy": "success",
        "smoke": "failed",
        "deploy.rollback_on_failure": "success",
    }
    v1 = alive.xcom(dag_id, run_id, "deploy")["serverGroup"]
    versions = [s.version for s in samples]
    assert versions[0] == "1.0.0" and "2.0.0" in versions and versions[-1] == "1.0.0"  # 1 -> 2 -> 1
    assert {s.version for s in samples if s.sent > _at(tis["deploy.rollback_on_failure"].end)} == {"1.0.0"}
    groups = {g.name: g for g in _groups(alive.gennaker_home, "hello-rk")}
    assert groups[v0].enabled and not groups[v1].enabled
    out = alive.xcom(dag_id, run_id, "deploy.rollback_on_failure")
    assert out["rolledBack"] is True and out["failedStages"] == ["smoke"]
    log = "\n".join(alive.task_log(dag_id, run_id, "deploy.rollback_on_failure"))
    assert f"stage(s) smoke failed: rolling hello-rk back from {v1} to {v0}" in log
    assert f"disabled {v1} (traffic now on {v0})" in log

    # A run that does not fail leaves the new group serving: the teardown does nothing.
    run_id, state, _ = _deploy(alive, dag_id, port, {"image": images["v2"]})
    assert state == "success", _explain(alive, dag_id, run_id)
    assert alive.xcom(dag_id, run_id, "deploy.rollback_on_failure")["rolledBack"] is False
