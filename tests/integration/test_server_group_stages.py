"""Server-group stages on the real Airflow against the local provider, with live traffic.

The test process sets up the cloud (through :class:`LocalProvider`, in the session's
``GENNAKER_HOME``, the one the Airflow processes use): the demo service 1.0.0 and 2.0.0 built
with ``scripts/build-hello.sh`` and baked, a load balancer, and the server groups. The pipelines
(``pipelines/server-groups.yaml`` and ``pipelines/guarded-disable.yaml``) run through the REST
API while two client threads send requests to the load balancer.

Every process the test's provider starts (supervisors, instances, proxies) inherits a mark in its
environment; teardown stops the supervisors and proxies as an operator would
(``local_supervisor.stop``, ``local_proxy.stop``), then kills whatever still carries the mark or
runs from the home, and fails the test if anything was left.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from localcloud import ACCOUNT, REGION, Cloud, Load

from .conftest import ARTIFACTS, GUARDED_ACCOUNT, GUARDED_CLUSTER, Airflow
from .conftest import timestamp as _at

pytestmark = pytest.mark.integration

if not Path("/proc/self/environ").exists():  # pragma: no cover - leftovers are found through /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

RELEASES = {"v1": "1.0.0", "v2": "2.0.0"}  # baked by the images fixture (conftest)
PIPELINE = "hello.server-groups"
GUARDED_PIPELINE = "hello.guarded-disable"
STAGES = ["resize", "enable", "disable", "find", "rollback"]
TEST_SECONDS = 300


# --------------------------------------------------------------------------- helpers


def _log(airflow: Airflow, dag_id: str, run_id: str, task_id: str) -> str:
    return "\n".join(airflow.task_log(dag_id, run_id, task_id))


def _runs_of(versions: list[str | None], version: str) -> int:
    """The longest stretch of consecutive answers of ``version``."""
    best = current = 0
    for v in versions:
        current = current + 1 if v == version else 0
        best = max(best, current)
    return best


# --------------------------------------------------------------------------- 1. the pipeline


def test_server_group_stages_move_traffic_without_a_failed_request(
    alive: Airflow, cloud: Cloud, images: dict[str, str]
) -> None:
    provider = cloud.provider()
    port = cloud.load_balancer(provider, "hello-it")
    old = cloud.create(provider, images["v1"], stack="it", count=2, lb="hello-it")
    new = cloud.create(provider, images["v2"], stack="it", count=1, lb="hello-it", enabled=False)
    assert (old, new) == ("hello-it-v000", "hello-it-v001")
    cloud.wait_up(provider, old, 2)
    cloud.wait_up(provider, new, 1)
    cloud.wait_serving(port, "1.0.0")
    alive.unpause(PIPELINE)

    with Load(port) as load:
        time.sleep(1.0)  # some answers from before the run
        run_id = alive.trigger(PIPELINE)
        state = alive.wait_for_run(PIPELINE, run_id, timeout=240)
        time.sleep(2.0)  # and some after it
    samples = load.sorted()
    tis = alive.task_instances(PIPELINE, run_id)
    logs = {task: _log(alive, PIPELINE, run_id, task) for task in STAGES}
    assert state == "success", {t: (ti.state, logs[t][-2000:]) for t, ti in tis.items()}
    assert {t: ti.state for t, ti in tis.items()} == dict.fromkeys(STAGES, "success")

    # Not one request failed, and the version served went 1.0.0 -> 2.0.0 -> 1.0.0.
    failed = [s for s in samples if s.error]
    assert not failed, f"{len(failed)} of {len(samples)} requests failed, e.g. {failed[:5]}"
    assert len(samples) > 50
    versions = [s.version for s in samples]
    assert set(versions) == {"1.0.0", "2.0.0"}
    assert versions[0] == "1.0.0" and versions[-1] == "1.0.0"
    enable_start = _at(tis["enable"].start)
    disable_end = _at(tis["disable"].end)
    rollback_start, rollback_end = _at(tis["rollback"].start), _at(tis["rollback"].end)
    before = [s.version for s in samples if s.sent < enable_start]
    only_new = [s.version for s in samples if disable_end <= s.sent < rollback_start]
    after = [s.version for s in samples if s.sent >= rollback_end]
    assert before and set(before) == {"1.0.0"}, "2.0.0 served before enableServerGroup started"
    assert only_new and set(only_new) == {"2.0.0"}, "1.0.0 served between the disable and the rollback"
    assert after and set(after) == {"1.0.0"}, "2.0.0 served after the rollback"
    assert _runs_of(versions, "2.0.0") >= len(only_new)
    first_new = versions.index("2.0.0")
    last_new = len(versions) - 1 - versions[::-1].index("2.0.0")
    assert set(versions[:first_new]) == {"1.0.0"} and set(versions[last_new + 1 :]) == {"1.0.0"}
    assert {s.group for s in samples if s.version == "2.0.0"} == {new}
    assert {s.group for s in samples if s.version == "1.0.0"} == {old}

    # What each stage reports.
    common = {"cluster": "hello-it", "account": ACCOUNT, "region": REGION}
    two = {"min": 2, "max": 2, "desired": 2}
    assert alive.xcom(PIPELINE, run_id, "resize") == {
        "serverGroup": new,
        **common,
        "capacity": two,
        "previousCapacity": {"min": 1, "max": 1, "desired": 1},
    }
    assert alive.xcom(PIPELINE, run_id, "enable") == {"serverGroup": new, **common, "capacity": two, "enabled": True}
    assert alive.xcom(PIPELINE, run_id, "disable") == {
        "serverGroup": old,
        **common,
        "capacity": two,
        "enabled": False,
        "serving": [new],
    }
    found = alive.xcom(PIPELINE, run_id, "find")
    # The newest image of the package: 2.0.0 of this module, unless an earlier test module baked a newer one.
    (newest, *_) = provider.find_images(package="hello-service")
    assert (found["imageId"], found["package"], found["version"]) == (newest.id, "hello-service", newest.version)
    assert found["images"] == {REGION: newest.id}
    assert alive.xcom(PIPELINE, run_id, "rollback") == {
        "serverGroup": old,
        **common,
        "capacity": two,
        "previous": new,
        "disabled": [new],
    }

    # Health in plain words, in the stages' logs.
    assert f"{new}: 2/2 instances healthy" in logs["resize"], logs["resize"][-3000:]
    assert f"resized {new} to 2 instances" in logs["resize"]
    assert f"{new}: 2/2 instances healthy" in logs["enable"], logs["enable"][-3000:]
    assert f"disabled {old} (traffic now on {new})" in logs["disable"]
    assert f"found hello-service {newest.version} (image {newest.id})" in logs["find"]
    assert f"{old}: 2/2 instances healthy" in logs["rollback"], logs["rollback"][-3000:]
    assert f"rolled back hello-it from {new} to {old}" in logs["rollback"]

    # A wait that ends within GENNAKER_INLINE_WAIT (5 s) is polled in the worker; a longer one is deferred to
    # the triggerer (no worker slot held) and the task resumes from it. The local instances here are Up within
    # a second or two, so most waits end in the worker; whichever way each went, the log says so, and a
    # deferred one left the trigger's log next to the task's (ARTIFACTS/tasks/...; named by the trigger's id,
    # which SQLite may reuse, so a task's later trigger can overwrite its earlier one's). test_deploy's
    # never-healthy deploy always waits in the triggerer.
    for task in ("resize", "enable", "disable", "rollback"):
        if "Pausing task as DEFERRED" not in logs[task]:
            continue
        assert "(in the triggerer, no worker slot held)" in logs[task], logs[task][-3000:]
        folder = ARTIFACTS / "tasks" / f"dag_id={PIPELINE}" / f"run_id={run_id}" / f"task_id={task}"
        triggered = "\n".join(f.read_text(errors="replace") for f in folder.glob("attempt=1.log.trigger.*"))
        assert "Trigger fired event" in triggered, f"no log of a trigger of {task} that fired, in {folder}"
    assert "Pausing task as DEFERRED" not in logs["find"]

    # The cloud agrees.
    groups = {g.name: g for g in provider.list_server_groups("hello", cluster="hello-it")}
    assert (groups[old].enabled, groups[new].enabled) == (True, False)
    assert (groups[old].capacity.desired, groups[new].capacity.desired) == (2, 2)


# --------------------------------------------------------------------------- 2. the traffic guard


def test_disabling_the_last_group_of_a_guarded_cluster_fails_and_it_keeps_serving(
    alive: Airflow, cloud: Cloud, images: dict[str, str]
) -> None:
    provider = cloud.provider(GUARDED_ACCOUNT, guarded_clusters=[GUARDED_CLUSTER])
    port = cloud.load_balancer(provider, GUARDED_CLUSTER)
    stack = GUARDED_CLUSTER.removeprefix("hello-")
    group = cloud.create(provider, images["v1"], stack=stack, count=1, lb=GUARDED_CLUSTER)
    assert group == f"{GUARDED_CLUSTER}-v000"
    cloud.wait_up(provider, group, 1)
    cloud.wait_serving(port, "1.0.0")
    alive.unpause(GUARDED_PIPELINE)

    with Load(port) as load:
        run_id = alive.trigger(GUARDED_PIPELINE)
        state = alive.wait_for_run(GUARDED_PIPELINE, run_id)
        time.sleep(1.0)
    samples = load.sorted()
    assert state == "failed"
    tis = alive.task_instances(GUARDED_PIPELINE, run_id)
    assert tis["disable"].state == "failed"
    assert tis["disable"].try_number == 1, "a traffic guard is not a failure a retry can fix"
    log = _log(alive, GUARDED_PIPELINE, run_id, "disable")
    assert f"cannot disable {group}: the traffic guard refused" in log, log[-3000:]
    assert f"would leave the guarded cluster {GUARDED_CLUSTER} without an enabled server group" in log

    failed = [s for s in samples if s.error]
    assert samples and not failed, f"{len(failed)} of {len(samples)} requests failed, e.g. {failed[:5]}"
    assert {s.version for s in samples} == {"1.0.0"}
    assert provider.get_server_group(group).enabled is True
    cloud.wait_serving(port, "1.0.0")
