"""Server group stages and findImage against an in-memory provider: targets, keys, guards, resize math, rollback."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred
from fakecloud import FakeProvider

from gennaker.cloud.model import Capacity, OperationKind
from gennaker.operators import base as sg
from gennaker.operators.server_group import (
    CloudStageFailed,
    DestroyServerGroupOperator,
    DisableServerGroupOperator,
    EnableServerGroupOperator,
    FindImageOperator,
    ImageNotFound,
    ResizeServerGroupOperator,
    RollbackOperator,
    ServerGroupNotFound,
    ServerGroupUnhealthy,
    TrafficGuardBlocked,
    new_capacity,
)
from gennaker.triggers.server_group import ServerGroupHealthyTrigger, ServerGroupOperationTrigger


class FakeTI:
    dag_id = "hello.release"
    run_id = "manual__2026-01-01"
    map_index = -1
    try_number = 1
    max_tries = 0

    def __init__(self, task_id: str, xcom: dict[str, Any] | None = None) -> None:
        self.task_id = task_id
        self.xcom: dict[str, Any] = xcom if xcom is not None else {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        assert task_ids in (None, self.task_id)
        return self.xcom.get(key)

    def get_task_states(self, **_: Any) -> dict[str, Any]:
        return {}


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    provider = FakeProvider()
    seen: list[tuple[str, str | None]] = []
    provider.opened = seen  # type: ignore[attr-defined]

    def provider_for(conn_id: str = "local", region: str | None = None) -> FakeProvider:
        seen.append((conn_id, region))
        return provider

    monkeypatch.setattr(sg, "provider_for", provider_for)
    return provider


def cluster(cloud: FakeProvider, *enabled: bool, desired: int = 2) -> list[str]:
    """hello-prod-v001.. in creation order, enabled as given."""
    names = [f"hello-prod-v{i:03d}" for i in range(1, len(enabled) + 1)]
    for name, on in zip(names, enabled, strict=True):
        cloud.add_group(name, enabled=on, desired=desired)
    return names


def make(cls: type, task_id: str = "stage", **kwargs: Any) -> Any:
    if cls is not FindImageOperator:
        kwargs.setdefault("application", "hello")
        kwargs.setdefault("stack", "prod")
    return cls(task_id=task_id, stage_id=task_id, **kwargs)


XCOMS: dict[str, Any] = {}  # the XComs of the last run() (what survives a deferral)


def run(op: Any) -> Any:
    XCOMS.clear()
    return op.execute({"ti": FakeTI(op.task_id, XCOMS)})


def resume(op: Any, deferred: TaskDeferred, event: dict[str, Any], *, with_kwargs: bool = True) -> Any:
    """Resume as Airflow does: the defer kwargs plus the event (``dag.test()`` passes only the event)."""
    kwargs = {**(deferred.kwargs or {}), "event": event} if with_kwargs else {"event": event}
    return op.resume_execution(deferred.method_name, kwargs, {"ti": FakeTI(op.task_id, XCOMS)})


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("newest", "hello-prod-v003"),
        ("previous", "hello-prod-v002"),
        ("oldest", "hello-prod-v001"),
        ("hello-prod-v002", "hello-prod-v002"),
    ],
)
def test_target_resolution(cloud: FakeProvider, target: str, expected: str) -> None:
    cluster(cloud, True, True, True)
    result = run(make(DisableServerGroupOperator, target=target))
    assert cloud.acted == [("disable", expected)]
    assert result["serverGroup"] == expected
    assert result["cluster"] == "hello-prod"
    assert result["enabled"] is False


def test_newest_is_by_creation_time_not_sequence(cloud: FakeProvider) -> None:
    # The sequence wrapped: v999 was created before v000.
    cloud.add_group("hello-prod-v999")
    cloud.add_group("hello-prod-v000")
    run(make(DisableServerGroupOperator, target="newest"))
    assert cloud.acted == [("disable", "hello-prod-v000")]


def test_other_clusters_and_groups_being_destroyed_do_not_count(cloud: FakeProvider) -> None:
    cloud.add_group("hello-prod-v001")
    cloud.add_group("hello-prod-v002", destroying=True)
    cloud.add_group("hello-staging-v003")
    cloud.add_group("hello-prod-canary-v004")
    run(make(EnableServerGroupOperator, target="newest"))
    assert cloud.acted == [("enable", "hello-prod-v001")]


def test_cluster_with_detail_and_another_application(cloud: FakeProvider) -> None:
    cloud.add_group("shop-prod-canary-v001")
    cloud.add_group("shop-prod-canary-v002")
    op = make(DisableServerGroupOperator, application="shop", detail="canary", target="previous")
    assert run(op)["serverGroup"] == "shop-prod-canary-v001"


def test_previous_of_a_single_group_is_a_clear_failure(cloud: FakeProvider) -> None:
    cluster(cloud, True)
    with pytest.raises(
        ServerGroupNotFound, match="cluster hello-prod has no previous server group: hello-prod-v001 is its only one"
    ):
        run(make(DisableServerGroupOperator, target="previous"))
    assert cloud.calls == []


def test_empty_cluster_is_a_clear_failure(cloud: FakeProvider) -> None:
    with pytest.raises(ServerGroupNotFound, match="cluster hello-prod has no server groups in account 'local'"):
        run(make(EnableServerGroupOperator))


def test_unknown_name_is_not_found_and_not_retried(cloud: FakeProvider) -> None:
    cluster(cloud, True)
    with pytest.raises(ServerGroupNotFound, match="cannot find server group hello-prod-v007") as caught:
        run(make(EnableServerGroupOperator, target="hello-prod-v007"))
    assert isinstance(caught.value, AirflowFailException)  # Airflow does not retry it


@pytest.mark.parametrize("target", ["latest", "hello-prod", "hello prod v1"])
def test_a_target_that_is_no_server_group_name(cloud: FakeProvider, target: str) -> None:
    cluster(cloud, True)
    with pytest.raises(
        CloudStageFailed, match="is neither newest, previous, oldest nor a server group name such as hello-prod-v003"
    ):
        run(make(EnableServerGroupOperator, target=target))


def test_default_targets() -> None:
    assert make(DisableServerGroupOperator).target == "newest"
    assert make(RollbackOperator).target == "previous"


def test_template_fields() -> None:
    assert {"target", "account", "region"} <= set(DisableServerGroupOperator.template_fields)
    assert {"package", "tags", "account"} <= set(FindImageOperator.template_fields)


def test_account_and_region_reach_the_provider(cloud: FakeProvider) -> None:
    cluster(cloud, True)
    run(make(DisableServerGroupOperator, account="staging", region="eu"))
    assert cloud.opened == [("staging", "eu")]  # type: ignore[attr-defined]


def test_the_stage_provider_must_match_the_account(cloud: FakeProvider) -> None:
    cluster(cloud, True)
    with pytest.raises(CloudStageFailed, match="says provider 'aws', but account 'local' is a 'local' account"):
        run(make(DisableServerGroupOperator, cloud="aws"))


# --------------------------------------------------------------------------- idempotency


def test_every_mutating_call_carries_the_task_key(cloud: FakeProvider) -> None:
    cluster(cloud, False, True)
    run(make(EnableServerGroupOperator, task_id="enable_old", target="oldest"))
    assert cloud.calls == [("enable", "hello-prod-v001", "hello.release/manual__2026-01-01/enable_old/enable")]


def test_a_retried_task_does_not_act_twice(cloud: FakeProvider) -> None:
    cluster(cloud, True, True)
    first = run(make(DisableServerGroupOperator, task_id="off"))
    second = run(make(DisableServerGroupOperator, task_id="off"))
    assert first == second
    assert len(cloud.calls) == 2 and cloud.calls[0][2] == cloud.calls[1][2]
    assert cloud.acted == [("disable", "hello-prod-v002")]


def test_a_retry_reports_what_the_first_try_did(cloud: FakeProvider) -> None:
    # The first try started destroying the oldest group; on retry "oldest" would be the next one,
    # but the key brings back the first try's operation, and the stage reports (and waits for) that one.
    cloud.slow.add(OperationKind.DESTROY_SERVER_GROUP)
    cluster(cloud, False, False, True)
    with pytest.raises(TaskDeferred):
        run(make(DestroyServerGroupOperator, task_id="clean", target="oldest"))
    with pytest.raises(TaskDeferred) as deferred:
        run(make(DestroyServerGroupOperator, task_id="clean", target="oldest"))
    assert cloud.acted == [("destroy", "hello-prod-v001")]
    assert [name for _, name, _ in cloud.calls] == ["hello-prod-v001", "hello-prod-v002"]
    assert deferred.value.kwargs["result"]["serverGroup"] == "hello-prod-v001"


# --------------------------------------------------------------------------- traffic guards, failures


def test_traffic_guard_violation_fails_the_task_clearly(cloud: FakeProvider) -> None:
    cloud.guarded.add("hello-prod")
    cluster(cloud, False, True)
    with pytest.raises(TrafficGuardBlocked) as caught:
        run(make(DisableServerGroupOperator))
    assert isinstance(caught.value, AirflowFailException)
    assert str(caught.value).startswith(
        "cannot disable hello-prod-v002: the traffic guard refused: disabling hello-prod-v002 would leave the "
        "guarded cluster hello-prod without an enabled, healthy server group: enable or deploy another server "
        "group of the cluster first"
    )
    assert cloud.acted == []


def test_guard_allows_it_when_another_group_serves(cloud: FakeProvider) -> None:
    cloud.guarded.add("hello-prod")
    cluster(cloud, True, True)
    result = run(make(DisableServerGroupOperator))
    assert result["serving"] == ["hello-prod-v001"]


def test_on_failure_ignore_turns_a_guard_violation_into_a_skip(cloud: FakeProvider) -> None:
    cloud.guarded.add("hello-prod")
    cluster(cloud, True)
    op = make(DisableServerGroupOperator, on_failure="ignore")
    ti = FakeTI(op.task_id)
    with pytest.raises(AirflowSkipException, match="carrying on"):
        op.execute({"ti": ti})
    assert ti.xcom["gennaker.outcome"] == "failed_ignored"


def test_disable_logs_where_the_traffic_goes(cloud: FakeProvider, capsys: pytest.CaptureFixture[str]) -> None:
    cluster(cloud, True, True)
    run(make(DisableServerGroupOperator, target="newest"))
    assert "disabled hello-prod-v002 (traffic now on hello-prod-v001)" in capsys.readouterr().out


def test_disable_of_the_last_group_says_the_cluster_takes_no_traffic(
    cloud: FakeProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster(cloud, True)
    result = run(make(DisableServerGroupOperator))
    assert result["serving"] == []
    assert "no server group of hello-prod is enabled now: the cluster takes no traffic" in capsys.readouterr().out


def test_a_slow_disable_defers_on_the_operation(cloud: FakeProvider) -> None:
    cloud.slow.add(OperationKind.DISABLE_SERVER_GROUP)
    cluster(cloud, True, True)
    op = make(DisableServerGroupOperator)
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    trigger = deferred.value.trigger
    assert isinstance(trigger, ServerGroupOperationTrigger)
    assert trigger.operation_ids == ["op-1"]
    result = resume(op, deferred.value, {"status": "succeeded", "message": "disableServerGroup done"})
    assert result["serverGroup"] == "hello-prod-v002"
    with pytest.raises(CloudStageFailed, match="disabling hello-prod-v002 did not finish: drain failed"):
        resume(op, deferred.value, {"status": "failed", "message": "drain failed"})


# --------------------------------------------------------------------------- enable: health


def test_enable_of_a_healthy_group_does_not_defer(cloud: FakeProvider) -> None:
    cluster(cloud, False, True)
    result = run(make(EnableServerGroupOperator, target="oldest"))
    assert result == {
        "serverGroup": "hello-prod-v001",
        "cluster": "hello-prod",
        "account": "local",
        "region": "local",
        "capacity": {"min": 1, "max": 2, "desired": 2},
        "enabled": True,
    }


def test_enable_waits_for_health_in_the_triggerer(cloud: FakeProvider) -> None:
    cluster(cloud, False, True)
    cloud.set_health("hello-prod-v001", up=1, starting=1)
    op = make(EnableServerGroupOperator, target="oldest")
    before = datetime.now(timezone.utc)
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    trigger = deferred.value.trigger
    assert isinstance(trigger, ServerGroupHealthyTrigger)
    assert (trigger.conn_id, trigger.region, trigger.server_group) == ("local", "local", "hello-prod-v001")
    assert (trigger.desired, trigger.target_healthy_percentage, trigger.operation_ids) == (2, 100, [])
    assert trigger.timeout == 600
    assert trigger.not_before is not None and trigger.not_before >= before + timedelta(seconds=5)
    assert deferred.value.method_name == "enabled_healthy"

    event = {"status": "healthy", "up": 2, "total": 2, "message": "hello-prod-v001: 2/2 instances healthy"}
    assert resume(op, deferred.value, event)["serverGroup"] == "hello-prod-v001"
    timeout = {"status": "timeout", "up": 1, "total": 2, "message": "hello-prod-v001: 1/2 instances healthy"}
    with pytest.raises(
        ServerGroupUnhealthy,
        match="hello-prod-v001 was enabled but is not healthy: hello-prod-v001: 1/2 instances healthy",
    ):
        resume(op, deferred.value, timeout)


def test_the_stage_timeout_bounds_the_health_wait(cloud: FakeProvider) -> None:
    cluster(cloud, False)
    cloud.set_health("hello-prod-v001", up=0, starting=2)
    with pytest.raises(TaskDeferred) as deferred:
        run(make(EnableServerGroupOperator, execution_timeout=timedelta(minutes=3)))
    assert deferred.value.trigger.timeout == 180


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    ("current", "change", "expected"),
    [
        ((1, 4, 2), {"capacity": {"min": 3, "max": 9, "desired": 5}}, (3, 9, 5)),
        ((1, 4, 2), {"scale_by": 2}, (1, 4, 4)),
        ((1, 4, 2), {"scale_by": 5}, (1, 7, 7)),  # max widens to hold desired
        ((2, 4, 3), {"scale_by": -1}, (2, 4, 2)),
        ((2, 4, 3), {"scale_by": -2}, (1, 4, 1)),  # min narrows to hold desired
        ((1, 4, 3), {"scale_by": -10}, (0, 4, 0)),  # never below 0
        ((1, 6, 3), {"scale_percent": 50}, (1, 6, 5)),  # 4.5 rounds up
        ((1, 6, 3), {"scale_percent": -50}, (1, 6, 2)),  # 1.5 rounds up: shrinking keeps capacity
        ((1, 1, 1), {"scale_percent": 10}, (1, 2, 2)),  # any growth adds at least one
        ((1, 1, 1), {"scale_percent": -10}, (1, 1, 1)),
        ((2, 4, 4), {"scale_percent": -100}, (0, 4, 0)),
        ((0, 0, 0), {"scale_percent": 200}, (0, 0, 0)),
        ((0, 3, 0), {"scale_by": 2}, (0, 3, 2)),
    ],
)
def test_resize_math(current: tuple[int, int, int], change: dict[str, Any], expected: tuple[int, int, int]) -> None:
    lo, hi, want = current
    got = new_capacity(Capacity(min=lo, max=hi, desired=want), **change)
    assert (got.min, got.max, got.desired) == expected


def test_resize_math_wants_exactly_one_change() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        new_capacity(Capacity.fixed(1), scale_by=1, scale_percent=10)


def test_resize_scales_and_waits_for_the_new_size(cloud: FakeProvider, capsys: pytest.CaptureFixture[str]) -> None:
    cloud.slow.add(OperationKind.RESIZE_SERVER_GROUP)
    cluster(cloud, True, desired=2)
    op = make(ResizeServerGroupOperator, scale_percent=50)
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    assert cloud.groups["hello-prod-v001"].capacity == Capacity(min=1, max=3, desired=3)
    assert cloud.keys("resize") == ["hello.release/manual__2026-01-01/stage/resize"]
    out = capsys.readouterr().out
    assert "resizing hello-prod-v001 from 2 instances (min 1, max 2) to 3 instances (min 1, max 3)" in out
    trigger = deferred.value.trigger
    assert isinstance(trigger, ServerGroupHealthyTrigger)
    assert (trigger.desired, trigger.operation_ids) == (3, ["op-1"])
    result = resume(op, deferred.value, {"status": "healthy", "message": "hello-prod-v001: 3/3 instances healthy"})
    assert result["capacity"] == {"min": 1, "max": 3, "desired": 3}
    assert result["previousCapacity"] == {"min": 1, "max": 2, "desired": 2}


def test_a_retried_resize_does_not_scale_twice(cloud: FakeProvider) -> None:
    cloud.slow.add(OperationKind.RESIZE_SERVER_GROUP)
    cluster(cloud, True, desired=2)
    with pytest.raises(TaskDeferred):
        run(make(ResizeServerGroupOperator, scale_by=1))
    with pytest.raises(TaskDeferred) as retry:
        run(make(ResizeServerGroupOperator, scale_by=1))  # the group already has 3: +1 again would be 4
    assert cloud.acted == [("resize", "hello-prod-v001")]
    assert retry.value.trigger.desired == 3
    assert retry.value.kwargs["result"]["capacity"]["desired"] == 3


def test_resize_down_to_zero_of_a_guarded_cluster_is_refused(cloud: FakeProvider) -> None:
    cloud.guarded.add("hello-prod")
    cluster(cloud, True)
    with pytest.raises(TrafficGuardBlocked, match="cannot resize hello-prod-v001 to 0 instances: the traffic guard"):
        run(make(ResizeServerGroupOperator, scale_percent=-100))


def test_resize_to_a_fixed_capacity_that_is_already_healthy(cloud: FakeProvider) -> None:
    cluster(cloud, True, desired=3)
    result = run(make(ResizeServerGroupOperator, capacity={"min": 1, "max": 3, "desired": 2}))
    assert result["capacity"] == {"min": 1, "max": 3, "desired": 2}


# --------------------------------------------------------------------------- destroy


def test_destroy_waits_until_the_group_is_gone(cloud: FakeProvider) -> None:
    cloud.slow.add(OperationKind.DESTROY_SERVER_GROUP)
    cluster(cloud, False, True)
    op = make(DestroyServerGroupOperator, target="oldest")
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    assert isinstance(deferred.value.trigger, ServerGroupOperationTrigger)
    result = resume(op, deferred.value, {"status": "succeeded", "message": "destroyed hello-prod-v001"})
    assert result == {
        "serverGroup": "hello-prod-v001",
        "cluster": "hello-prod",
        "account": "local",
        "region": "local",
        "destroyed": True,
    }


def test_destroy_that_ends_at_once(cloud: FakeProvider) -> None:
    cluster(cloud, False, True)
    assert run(make(DestroyServerGroupOperator, target="oldest"))["destroyed"] is True
    assert list(cloud.groups) == ["hello-prod-v002"]


# --------------------------------------------------------------------------- rollback


def test_rollback_enables_waits_then_disables(cloud: FakeProvider, capsys: pytest.CaptureFixture[str]) -> None:
    cluster(cloud, False, True, desired=2)
    cloud.set_health("hello-prod-v001", up=0, starting=2)
    op = make(RollbackOperator, task_id="rollback")
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    assert cloud.acted == [("enable", "hello-prod-v001")]  # nothing disabled while v001 is not healthy
    trigger = deferred.value.trigger
    assert isinstance(trigger, ServerGroupHealthyTrigger)
    assert (trigger.server_group, trigger.desired, trigger.target_healthy_percentage) == ("hello-prod-v001", 2, 100)
    assert deferred.value.method_name == "rollback_healthy"

    cloud.set_health("hello-prod-v001", up=2)
    result = resume(op, deferred.value, {"status": "healthy", "message": "hello-prod-v001: 2/2 instances healthy"})
    assert cloud.acted == [("enable", "hello-prod-v001"), ("disable", "hello-prod-v002")]
    assert cloud.keys() == [
        "hello.release/manual__2026-01-01/rollback/rollback-enable",
        "hello.release/manual__2026-01-01/rollback/rollback-disable-hello-prod-v002",
    ]
    assert result["serverGroup"] == "hello-prod-v001"
    assert result["previous"] == "hello-prod-v002"
    assert result["disabled"] == ["hello-prod-v002"]
    out = capsys.readouterr().out
    assert "enabled hello-prod-v001 (rolling back from hello-prod-v002)" in out
    assert "disabled hello-prod-v002 (traffic now on hello-prod-v001)" in out


def test_resume_without_the_defer_kwargs_uses_the_kept_state(cloud: FakeProvider) -> None:
    # Airflow 3.3's dag.test() resumes with the event only; XComs pushed before deferring survive.
    cluster(cloud, False, True)
    cloud.set_health("hello-prod-v001", up=0, starting=2)
    op = make(RollbackOperator, task_id="rollback")
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    assert XCOMS["gennaker.pending"] == deferred.value.kwargs["result"]
    cloud.set_health("hello-prod-v001", up=2)
    result = resume(op, deferred.value, {"status": "healthy", "message": "ok"}, with_kwargs=False)
    assert result["disabled"] == ["hello-prod-v002"]
    assert cloud.acted == [("enable", "hello-prod-v001"), ("disable", "hello-prod-v002")]


def test_rollback_that_times_out_disables_nothing(cloud: FakeProvider) -> None:
    cluster(cloud, False, True)
    cloud.set_health("hello-prod-v001", up=0, down=2)
    op = make(RollbackOperator, target_healthy_percentage=50)
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    assert deferred.value.trigger.target_healthy_percentage == 50
    event = {"status": "timeout", "message": "hello-prod-v001 was not healthy after 10m: 0/2 instances healthy"}
    with pytest.raises(
        ServerGroupUnhealthy,
        match="rollback stopped, nothing was disabled \\(hello-prod-v002 still "
        "take traffic; hello-prod-v001 is enabled but not healthy\\)",
    ):
        resume(op, deferred.value, event)
    assert cloud.groups["hello-prod-v002"].enabled


def test_rollback_to_a_healthy_group_finishes_without_deferring(cloud: FakeProvider) -> None:
    cluster(cloud, True, False, True)  # v002 was already disabled by hand
    result = run(make(RollbackOperator, target="oldest"))
    assert cloud.acted == [("enable", "hello-prod-v001"), ("disable", "hello-prod-v003")]
    assert result["disabled"] == ["hello-prod-v003"]


def test_rollback_grows_a_scaled_down_group_first(cloud: FakeProvider) -> None:
    cloud.add_group("hello-prod-v001", enabled=False, capacity=Capacity(min=0, max=3, desired=0))
    cloud.add_group("hello-prod-v002", capacity=Capacity(min=2, max=4, desired=3))
    op = make(RollbackOperator)
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    assert cloud.acted == [("resize", "hello-prod-v001"), ("enable", "hello-prod-v001")]
    assert cloud.groups["hello-prod-v001"].capacity == Capacity(min=2, max=4, desired=3)
    assert deferred.value.trigger.desired == 3


def test_rollback_to_the_newest_is_refused(cloud: FakeProvider) -> None:
    cluster(cloud, True, True)
    with pytest.raises(CloudStageFailed, match="nothing to roll back to: hello-prod-v002 is the newest"):
        run(make(RollbackOperator, target="newest"))
    assert cloud.calls == []


# --------------------------------------------------------------------------- findImage


def test_find_image_newest_and_oldest(cloud: FakeProvider) -> None:
    cloud.add_image("hello-service", "1.0.0", stage="release")
    cloud.add_image("hello-service", "1.1.0", stage="release")
    cloud.add_image("hello-service", "1.2.0", stage="candidate")
    cloud.add_image("other", "9.0.0", stage="release")
    newest = run(make(FindImageOperator, package="hello-service", tags={"stage": "release"}))
    assert newest["imageId"] == "img-hello-service-1.1.0-local"
    assert newest["version"] == "1.1.0"
    assert newest["images"] == {"local": "img-hello-service-1.1.0-local"}
    oldest = run(make(FindImageOperator, package="hello-service", select="oldest"))
    assert oldest["imageId"] == "img-hello-service-1.0.0-local"


def test_find_image_in_several_regions(cloud: FakeProvider) -> None:
    cloud.add_image("hello-service", "1.0.0", region="eu")
    cloud.add_image("hello-service", "1.0.0", region="us")
    result = run(make(FindImageOperator, package="hello-service", regions=["us", "eu"]))
    assert result["imageId"] == "img-hello-service-1.0.0-us"
    assert result["images"] == {"us": "img-hello-service-1.0.0-us", "eu": "img-hello-service-1.0.0-eu"}


def test_find_image_without_a_match_fails_clearly(cloud: FakeProvider) -> None:
    cloud.add_image("hello-service", "1.0.0", stage="candidate")
    with pytest.raises(ImageNotFound) as caught:
        run(make(FindImageOperator, package="hello-service", tags={"stage": "release"}))
    assert isinstance(caught.value, AirflowFailException)
    assert str(caught.value) == (
        "no image of package 'hello-service' with tags stage=release in account 'local', region local: "
        "bake one first (a bake stage), or check the package name and tags"
    )
