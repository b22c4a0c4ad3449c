"""The deploy stage's phase engine against the in-memory provider: what each strategy creates, enables,
disables, destroys and scales down, a resume after a deferral, and a failed health wait that rolls back.

Until now only the live-Airflow integration tests drove these phases; here the task context is a fake
and the harness plays the triggerer (every wait defers at once: ``GENNAKER_INLINE_WAIT=0``).
"""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred
from fakecloud import FakeProvider

from gennaker.cloud.locks import ClusterLocks, cluster_resource
from gennaker.cloud.model import LoadBalancer, OperationKind, OperationStatus
from gennaker.operators import base
from gennaker.operators.base import ServerGroupUnhealthy
from gennaker.operators.deploy import ROLLED_BACK_KEY, DeployOperator

V = [f"hello-prod-v{i:03d}" for i in range(6)]  # V[1] = hello-prod-v001 ...


class FakeTI:
    """The task instance a deploy reads: ids for keys and lock owner, XCom in a dict that outlives a deferral."""

    dag_id = "hello.release"
    run_id = "manual__2026-01-01"
    task_id = "deploy"
    map_index = -1
    try_number = 1
    max_tries = 0

    def __init__(self, xcom: dict[str, Any]) -> None:
        self.xcom = xcom

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcom.get(key)

    def get_task_states(self, **_: Any) -> dict[str, Any]:
        return {}


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    provider = FakeProvider()
    monkeypatch.setattr(base, "provider_for", lambda conn_id="local", region=None: provider)
    provider.add_image("hello", "1.0")
    return provider


def groups(cloud: FakeProvider, *enabled: bool) -> None:
    """hello-prod-v001.. in creation order, enabled as given."""
    for i, on in enumerate(enabled, start=1):
        cloud.add_group(V[i], enabled=on, desired=2)


def deploy(cloud: FakeProvider, **strategy: Any) -> DeployOperator:
    return DeployOperator(
        task_id="deploy",
        stage_id="deploy",
        application="hello",
        stack="prod",
        capacity={"min": 1, "max": 3, "desired": 2},
        image_name=cloud.images[0].id,
        strategy={"type": "redblack", **strategy},
    )


class Run:
    """One DAG run's task: execute, and resume as Airflow does (defer kwargs plus the trigger's event)."""

    def __init__(self, op: DeployOperator) -> None:
        self.op = op
        self.xcom: dict[str, Any] = {}

    def context(self) -> dict[str, Any]:
        return {"ti": FakeTI(self.xcom)}

    def execute(self) -> Any:
        return self.op.execute(self.context())

    def resume(self, deferred: TaskDeferred, event: dict[str, Any]) -> Any:
        kwargs = {**(deferred.kwargs or {}), "event": event}
        return self.op.resume_execution(deferred.method_name, kwargs, self.context())


def lock_holder() -> Any:
    return ClusterLocks().holder(cluster_resource("local", "local", "hello-prod"))


def state(cloud: FakeProvider) -> dict[str, tuple[bool, int]]:
    """Each server group: (enabled, desired)."""
    return {name: (g.enabled, g.capacity.desired) for name, g in sorted(cloud.groups.items())}


# --------------------------------------------------------------------------- strategies


def test_redblack_max_remaining_and_scale_down_old(cloud: FakeProvider) -> None:
    groups(cloud, False, False, True)
    result = Run(deploy(cloud, max_remaining=2, scale_down_old=True)).execute()
    assert cloud.acted == [
        ("create", V[4]),
        ("enable", V[4]),
        ("disable", V[3]),
        ("destroy", V[1]),  # three older groups, maxRemaining 2: the oldest goes
        ("resize", V[2]),
        ("resize", V[3]),
    ]
    assert state(cloud) == {V[2]: (False, 0), V[3]: (False, 0), V[4]: (True, 2)}
    assert result["serverGroup"] == V[4]
    assert result["previousServerGroup"] == V[3]
    assert (result["disabled"], result["destroyed"], result["scaledDown"]) == ([V[3]], [V[1]], [V[2], V[3]])
    assert "phase" not in result and "lockOwner" not in result
    assert lock_holder() is None  # released at the end


def test_redblack_keeps_every_older_group_without_max_remaining(cloud: FakeProvider) -> None:
    groups(cloud, True, True)
    Run(deploy(cloud)).execute()
    assert cloud.acted == [("create", V[3]), ("enable", V[3]), ("disable", V[1]), ("disable", V[2])]
    assert state(cloud) == {V[1]: (False, 2), V[2]: (False, 2), V[3]: (True, 2)}


def test_highlander_destroys_every_older_group(cloud: FakeProvider) -> None:
    groups(cloud, True, False)
    result = Run(deploy(cloud, type="highlander")).execute()
    assert cloud.acted == [
        ("create", V[3]),
        ("enable", V[3]),
        ("disable", V[1]),
        ("destroy", V[1]),
        ("destroy", V[2]),
    ]
    assert state(cloud) == {V[3]: (True, 2)}
    assert result["destroyed"] == [V[1], V[2]]


def test_rolling_red_black_moves_traffic_in_steps(cloud: FakeProvider) -> None:
    groups(cloud, True)
    lb = LoadBalancer(name="hello-prod", application="hello", account="local", region="local", clusters=("hello-prod",))
    cloud.load_balancers[lb.name] = lb
    result = Run(deploy(cloud, type="rollingRedBlack", target_percentages=[25, 50, 100])).execute()
    weights = [op.request["weights"] for op in cloud.ops.values() if op.kind is OperationKind.UPSERT_LOAD_BALANCER]
    assert weights == [{V[2]: 25, V[1]: 75}, {V[2]: 50, V[1]: 50}, {}]  # the last clears them after the switch
    assert cloud.acted == [("create", V[2]), ("enable", V[2]), ("disable", V[1])]
    assert cloud.load_balancers["hello-prod"].weights == {}
    assert state(cloud) == {V[1]: (False, 2), V[2]: (True, 2)}
    assert result["strategy"] == "rollingRedBlack" and result["disabled"] == [V[1]]


def test_none_adds_the_group_in_service_and_touches_nothing_else(cloud: FakeProvider) -> None:
    groups(cloud, True)
    result = Run(deploy(cloud, type="none")).execute()
    assert cloud.acted == [("create", V[2])]
    assert state(cloud) == {V[1]: (True, 2), V[2]: (True, 2)}
    assert (result["disabled"], result["destroyed"], result["scaledDown"]) == ([], [], [])


# --------------------------------------------------------------------------- deferral, retry, failure


def slow_create(cloud: FakeProvider) -> None:
    cloud.slow = {OperationKind.CREATE_SERVER_GROUP}  # the create runs on: the health wait defers


def test_resume_after_a_deferral_and_a_retry_make_one_new_group(cloud: FakeProvider) -> None:
    groups(cloud, True)
    slow_create(cloud)
    run = Run(deploy(cloud))
    with pytest.raises(TaskDeferred) as first:
        run.execute()
    assert run.xcom["gennaker.pending"]["phase"] == "healthy"
    assert lock_holder() is not None  # held across the deferral
    # A retry of the task (its worker died while deferred) starts from the top with the same keys.
    with pytest.raises(TaskDeferred):
        Run(run.op).execute()
    creates = cloud.keys("create")
    assert len(creates) == 2 and creates[0] == creates[1]
    assert cloud.acted == [("create", V[2])]  # one new group
    op_id = cloud.op_by_key[creates[0]]
    cloud.finish(op_id, OperationStatus.SUCCEEDED)
    result = run.resume(first.value, {"status": "healthy", "message": f"{V[2]}: 2/2 instances Up"})
    assert cloud.acted == [("create", V[2]), ("enable", V[2]), ("disable", V[1])]
    assert result["serverGroup"] == V[2] and result["previousServerGroup"] == V[1]
    assert lock_holder() is None


def test_a_failed_health_wait_rolls_the_deploy_back(cloud: FakeProvider) -> None:
    groups(cloud, True)
    slow_create(cloud)
    run = Run(deploy(cloud))
    with pytest.raises(TaskDeferred) as deferred:
        run.execute()
    with pytest.raises(ServerGroupUnhealthy) as failed:
        run.resume(deferred.value, {"status": "timeout", "message": f"{V[2]}: 0/2 instances Up after 600s"})
    assert "rolled back" in str(failed.value)
    assert cloud.acted == [("create", V[2]), ("disable", V[2])]  # the new group out; the old one untouched
    assert state(cloud) == {V[1]: (True, 2), V[2]: (False, 2)}
    assert run.xcom[ROLLED_BACK_KEY] == {"serverGroup": V[2], "action": "disable"}
    assert lock_holder() is None  # a failure frees the cluster too


def test_no_rollback_when_rollback_on_failure_is_off(cloud: FakeProvider) -> None:
    groups(cloud, True)
    slow_create(cloud)
    run = Run(deploy(cloud, rollback_on_failure=False))
    with pytest.raises(TaskDeferred) as deferred:
        run.execute()
    with pytest.raises(ServerGroupUnhealthy):
        run.resume(deferred.value, {"status": "timeout", "message": "not healthy"})
    assert cloud.acted == [("create", V[2])]
    assert ROLLED_BACK_KEY not in run.xcom
