"""The server group stages stop at the account's capacity limits with a clear error, before calling the provider."""

from __future__ import annotations

import pytest
from fakecloud import FakeProvider
from test_server_group import FakeTI, cloud, make, run  # noqa: F401 - the fixture and helpers of the stage tests

from gennaker.cloud.limits import Limits
from gennaker.cloud.model import Capacity
from gennaker.operators.server_group import CloudStageFailed, ResizeServerGroupOperator, RollbackOperator

SMALL = Limits(max_server_group_capacity=20, how_to_raise="the connection's extra ({setting})")


@pytest.fixture
def small(cloud: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> FakeProvider:  # noqa: F811
    """The in-memory provider with a limit of 20 instances per server group."""
    monkeypatch.setattr(FakeProvider, "limits", property(lambda self: SMALL))
    return cloud


def test_a_runaway_scale_percent_fails_the_stage_naming_the_limit(small: FakeProvider) -> None:
    small.add_group("hello-prod-v001", desired=2)
    with pytest.raises(CloudStageFailed) as caught:
        run(make(ResizeServerGroupOperator, scale_percent=10_000))
    assert str(caught.value) == (
        "cannot resize hello-prod-v001 to 202 instances: hello-prod-v001: capacity max 202, desired 202 exceeds the "
        "limit of 20 instances per server group (max_server_group_capacity): ask for at most 20, or raise the limit "
        "in the connection's extra (max_server_group_capacity)"
    )
    assert small.acted == [] and small.groups["hello-prod-v001"].capacity.desired == 2


def test_a_resize_to_an_explicit_huge_capacity_fails_the_stage(small: FakeProvider) -> None:
    small.add_group("hello-prod-v001", desired=2)
    with pytest.raises(CloudStageFailed, match="desired 1000000000 exceeds the limit of 20 instances"):
        run(make(ResizeServerGroupOperator, capacity={"min": 0, "max": 1_000_000_000, "desired": 1_000_000_000}))
    assert small.acted == []


def test_a_rollback_that_would_grow_past_the_limit_fails_before_acting(small: FakeProvider) -> None:
    small.add_group("hello-prod-v001", enabled=False, capacity=Capacity(min=0, max=3, desired=0))
    small.add_group("hello-prod-v002", capacity=Capacity(min=25, max=25, desired=25))  # made before the limit
    with pytest.raises(
        CloudStageFailed,
        match=r"cannot grow hello-prod-v001 to 25 instances for the rollback: .*"
        r"limit of 20 instances per server group",
    ):
        run(make(RollbackOperator))
    assert small.acted == []


def test_a_deploy_above_the_limit_fails_before_creating_anything(small: FakeProvider) -> None:
    from gennaker.operators.deploy import DeployOperator

    op = make(DeployOperator, image_name="img-1", capacity={"min": 0, "max": 25, "desired": 25})
    with pytest.raises(CloudStageFailed) as caught:
        op.phase_create({"ti": FakeTI(op.task_id)}, {"region": "local"})
    assert str(caught.value).startswith(
        "cannot create the next server group of hello-prod: the next server group of hello-prod: capacity max 25, "
        "desired 25 exceeds the limit of 20 instances per server group (max_server_group_capacity)"
    )
    assert small.acted == [] and small.groups == {}
