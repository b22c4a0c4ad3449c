"""Targets and rollbacks as the stages and the Clusters page decide them, without Airflow: newest / previous /
oldest, the rollback's plan, and its first and last calls with their keys."""

from __future__ import annotations

import pytest
from fakecloud import FakeProvider

from gennaker.cloud.model import Capacity
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import InvalidRequest, NotFound
from gennaker.strategies.capacity import new_capacity
from gennaker.strategies.rollback import finish_rollback, plan_rollback, start_rollback
from gennaker.strategies.targets import live_groups, pick_target


@pytest.fixture
def cloud() -> FakeProvider:
    provider = FakeProvider()
    provider.add_group("hello-prod-v001", enabled=False, desired=1)
    provider.add_group("hello-prod-v002", enabled=True, desired=3)
    provider.add_group("hello-prod-v003", enabled=True, desired=3, destroying=True)
    provider.add_group("hello-staging-v004", enabled=True)
    return provider


def live(cloud: FakeProvider) -> list:
    return live_groups(cloud.groups.values(), "hello-prod")


def key(purpose: str) -> IdempotencyKey:
    return IdempotencyKey("ui", "a1", "rollback", purpose)


def test_live_groups_leave_out_other_clusters_and_groups_being_destroyed(cloud: FakeProvider) -> None:
    assert [g.name for g in live(cloud)] == ["hello-prod-v001", "hello-prod-v002"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [("newest", "hello-prod-v002"), ("previous", "hello-prod-v001"), ("oldest", "hello-prod-v001")],
)
def test_pick_target(cloud: FakeProvider, target: str, expected: str) -> None:
    assert pick_target(live(cloud), target, "hello-prod", "local").name == expected


def test_no_previous_of_a_single_group_and_nothing_of_an_empty_cluster(cloud: FakeProvider) -> None:
    with pytest.raises(NotFound, match="no previous server group: hello-prod-v001 is its only one"):
        pick_target(live(cloud)[:1], "previous", "hello-prod", "local")
    with pytest.raises(NotFound, match="has no server groups in local"):
        pick_target([], "newest", "hello-prod", "local")


def test_a_rollback_plan_grows_the_smaller_group_and_names_the_newer_enabled_ones(cloud: FakeProvider) -> None:
    groups = live(cloud)
    plan = plan_rollback(groups[0], groups, "previous")
    assert plan.grows and plan.capacity == groups[1].capacity
    assert plan.newer == ("hello-prod-v002",)
    with pytest.raises(InvalidRequest, match="hello-prod-v002 is the newest"):
        plan_rollback(groups[1], groups, "newest")


def test_start_and_finish_rollback_call_the_provider_with_the_stage_purposes(cloud: FakeProvider) -> None:
    groups = live(cloud)
    plan = plan_rollback(groups[0], groups, "previous")
    ops = start_rollback(cloud, plan, key)
    assert [op.kind.value for op in ops] == ["resizeServerGroup", "enableServerGroup"]
    ops += finish_rollback(cloud, plan.restore.name, plan.newer, "local", key)
    assert cloud.acted == [("resize", "hello-prod-v001"), ("enable", "hello-prod-v001"), ("disable", "hello-prod-v002")]
    assert [k.rsplit("/", 1)[-1] for k in cloud.keys()] == [
        "rollback-resize",
        "rollback-enable",
        "rollback-disable-hello-prod-v002",
    ]


def test_new_capacity_scales_by_a_percentage_rounding_up() -> None:
    current = Capacity(min=1, max=3, desired=3)
    assert new_capacity(current, scale_percent=-50) == Capacity(min=1, max=3, desired=2)
    assert new_capacity(current, scale_by=2) == Capacity(min=1, max=5, desired=5)
