"""Capacity limits: the local provider refuses a server group (or an account) above its limits, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakecloud import FakeProvider

from gennaker.cloud.limits import CapacityLimitExceeded, Limits, desired_total, local_limits
from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.model import Capacity, Image, ServerGroup, ServerGroupSpec
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import CloudError, InvalidRequest, QuotaExceeded
from gennaker.hooks.cluster import AccountNotSupported, ClusterHook

IMAGE = "img-limits"


@pytest.fixture
def provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalProvider:
    """A local provider over a fresh home with an image record (nothing is baked; nothing may start)."""
    for name in ("GENNAKER_LOCAL_MAX_SERVER_GROUP_CAPACITY", "GENNAKER_LOCAL_MAX_ACCOUNT_INSTANCES"):
        monkeypatch.delenv(name, raising=False)
    local = LocalProvider("local", "local", home=tmp_path)
    local.store.put_image(
        Image(
            id=IMAGE,
            name="hello-1.0.0",
            package="hello",
            version="1.0.0",
            base="python-3.11",
            region="local",
            account="local",
            inputs_hash="x",
        )
    )
    return local


def record_group(provider: LocalProvider, name: str, desired: int, **tags: str) -> None:
    """A server group's record only (no supervisor runs for it)."""
    provider.store.put_server_group(
        ServerGroup(
            name=name, account="local", region="local", image_id=IMAGE, capacity=Capacity.fixed(desired), tags=tags
        )
    )


def key(purpose: str) -> IdempotencyKey:
    return IdempotencyKey("hello.release", "manual__1", "deploy", purpose)


def spec(desired: int, maximum: int | None = None) -> ServerGroupSpec:
    capacity = Capacity(min=0, max=desired if maximum is None else maximum, desired=desired)
    return ServerGroupSpec(
        application="hello", stack="prod", account="local", region="local", image_id=IMAGE, capacity=capacity
    )


def test_a_huge_server_group_is_refused_before_anything_is_recorded(provider: LocalProvider) -> None:
    with pytest.raises(CapacityLimitExceeded) as caught:
        provider.create_server_group(spec(1_000_000_000), key("deploy"))
    error = caught.value
    assert isinstance(error, QuotaExceeded) and isinstance(error, CloudError) and not error.retryable
    assert "exceeds the limit of 20 instances per server group (max_server_group_capacity)" in error.message
    assert "max_server_group_capacity" in error.hint and "GENNAKER_LOCAL_MAX_SERVER_GROUP_CAPACITY" in error.hint
    assert provider.store.find_operation(key("deploy")) is None  # a retry with a fixed spec does the work
    assert provider.store.list_server_groups() == []


def test_the_per_group_limit_applies_to_max_too(provider: LocalProvider) -> None:
    with pytest.raises(CapacityLimitExceeded, match="capacity max 21, desired 1"):
        provider.create_server_group(spec(1, maximum=21), key("deploy"))


def test_a_resize_above_the_group_limit_is_refused(provider: LocalProvider) -> None:
    record_group(provider, "hello-prod-v000", 2)
    with pytest.raises(CapacityLimitExceeded, match="hello-prod-v000: capacity max 50, desired 50"):
        provider.resize_server_group("hello-prod-v000", Capacity.fixed(50), key("resize"))
    assert provider.get_server_group("hello-prod-v000").capacity.desired == 2
    assert provider.store.find_operation(key("resize")) is None


def test_the_account_total_counts_every_group_but_the_resized_one(provider: LocalProvider) -> None:
    for i in range(7):
        record_group(provider, f"hello-s{i}-v000", 14)  # 98 of 100
    record_group(provider, "hello-old-v000", 20, **{"gennaker:destroying": "true"})  # going away: not counted
    with pytest.raises(CapacityLimitExceeded) as caught:
        provider.resize_server_group("hello-s0-v000", Capacity.fixed(17), key("resize"))
    assert caught.value.message == (
        "hello-s0-v000: 17 desired instance(s) would bring account local to 101, above its limit of 100 instances "
        "across its server groups (max_account_instances)"
    )
    assert "destroy or shrink other server groups of local" in caught.value.hint
    with pytest.raises(CapacityLimitExceeded, match="would bring account local to 101"):
        provider.create_server_group(spec(3), key("deploy"))
    assert provider.store.find_operation(key("deploy")) is None


def test_limits_come_from_the_connection_then_the_environment() -> None:
    assert local_limits({}, {}) == Limits(20, 100, local_limits({}, {}).how_to_raise)
    env = {"GENNAKER_LOCAL_MAX_SERVER_GROUP_CAPACITY": "5", "GENNAKER_LOCAL_MAX_ACCOUNT_INSTANCES": "8"}
    assert (local_limits({}, env).max_server_group_capacity, local_limits({}, env).max_account_instances) == (5, 8)
    extra = {"max_server_group_capacity": 3, "max_account_instances": "4"}
    limits = local_limits(extra, env)
    assert (limits.max_server_group_capacity, limits.max_account_instances) == (3, 4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_server_group_capacity": "lots"}, "must be a whole number of instances, not 'lots'"),
        ({"max_server_group_capacity": 0}, "must be at least 1 and at most 10000, not 0"),
        ({"max_server_group_capacity": 20000}, "must be at least 1 and at most 10000, not 20000"),
        ({"max_account_instances": -1}, "must be at least 1, not -1"),
    ],
)
def test_bad_limits_are_a_clear_error(extra: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        local_limits(extra, {})


def test_a_connection_sets_the_account_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"home": str(tmp_path), "max_server_group_capacity": "3", "max_account_instances": 9}
    monkeypatch.setenv("AIRFLOW_CONN_SMALL", json.dumps({"conn_type": "gennaker_local", "extra": extra}))
    limits = ClusterHook("small").get_provider().limits
    assert (limits.max_server_group_capacity, limits.max_account_instances) == (3, 9)
    monkeypatch.setenv(
        "AIRFLOW_CONN_BROKEN",
        json.dumps({"conn_type": "gennaker_local", "extra": {"home": str(tmp_path), "max_account_instances": "x"}}),
    )
    with pytest.raises(AccountNotSupported, match="connection 'broken': the connection's extra max_account_instances"):
        ClusterHook("broken").get_provider()


def test_every_provider_has_limits_bounding_a_server_group() -> None:
    limits = FakeProvider().limits  # a provider that does not report its own: the interface's default
    assert limits.max_account_instances is None
    with pytest.raises(CapacityLimitExceeded, match="limit of 10000 instances per server group"):
        limits.check_group(Capacity.fixed(10_001), "any")


def test_desired_total_leaves_out_the_excluded_and_destroying_groups() -> None:
    def group(name: str, desired: int, destroying: bool = False) -> ServerGroup:
        return ServerGroup(
            name=name, account="a", region="r", image_id="i", capacity=Capacity.fixed(desired), destroying=destroying
        )

    groups = [group("a-v000", 2), group("a-v001", 3), group("a-v002", 5, destroying=True)]
    assert desired_total(groups) == 5
    assert desired_total(groups, excluding="a-v001") == 2
