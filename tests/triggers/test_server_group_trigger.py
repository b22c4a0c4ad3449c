"""The health and operation triggers: serialisation, and their run loops against an in-memory provider."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fakecloud import FakeProvider

from gennaker.cloud.model import OperationKind, OperationStatus
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import ProviderUnavailable
from gennaker.triggers import server_group as module
from gennaker.triggers.server_group import ServerGroupHealthyTrigger, ServerGroupOperationTrigger

KEY = IdempotencyKey("hello.release", "run-1", "resize", "resize")


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    provider = FakeProvider()
    provider.add_group("hello-prod-v004", desired=3, up=0)
    opened: list[tuple[str, str | None]] = []
    provider.opened = opened  # type: ignore[attr-defined]

    def factory(conn_id: str, region: str | None) -> FakeProvider:
        opened.append((conn_id, region))
        return provider

    monkeypatch.setattr(module, "provider_factory", factory)
    return provider


def events(trigger: Any) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout=10))


def healthy_trigger(**kwargs: Any) -> ServerGroupHealthyTrigger:
    kwargs = {"conn_id": "local", "region": "local", "server_group": "hello-prod-v004", "poll_interval": 0.01, **kwargs}
    return ServerGroupHealthyTrigger(**kwargs)


def on_poll(cloud: FakeProvider, steps: list[Callable[[], None]]) -> None:
    """Change the fake's state before each poll of ``instances`` (the last step repeats)."""
    original = cloud.instances

    def instances(name: str, *, region: str | None = None) -> Any:
        steps[min(cloud.polls, len(steps) - 1)]()
        return original(name, region=region)

    cloud.instances = instances  # type: ignore[method-assign]


# --------------------------------------------------------------------------- serialisation


def round_trip(trigger: Any) -> Any:
    """What Airflow does: serialize(), store the kwargs (BaseSerialization), import the class, rebuild."""
    from airflow.serialization.serialized_objects import BaseSerialization

    classpath, kwargs = trigger.serialize()
    stored = BaseSerialization.deserialize(BaseSerialization.serialize(kwargs))
    module_name, _, name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    rebuilt = cls(**stored)
    assert rebuilt.serialize() == (classpath, kwargs)
    return rebuilt


def test_healthy_trigger_round_trip() -> None:
    moment = datetime(2026, 1, 1, 12, 0, 5, tzinfo=timezone.utc)
    trigger = ServerGroupHealthyTrigger(
        conn_id="staging",
        region="eu",
        server_group="hello-prod-v004",
        target_healthy_percentage=50,
        desired=3,
        poll_interval=5,
        timeout=120,
        operation_ids=["op-1"],
        not_before=moment,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "gennaker.triggers.server_group.ServerGroupHealthyTrigger"
    assert kwargs == {
        "conn_id": "staging",
        "region": "eu",
        "server_group": "hello-prod-v004",
        "target_healthy_percentage": 50,
        "desired": 3,
        "poll_interval": 5.0,
        "timeout": 120.0,
        "operation_ids": ["op-1"],
        "not_before": moment,
    }
    assert round_trip(trigger).not_before == moment


def test_healthy_trigger_defaults_round_trip() -> None:
    trigger = ServerGroupHealthyTrigger("local", None, "hello-prod-v004")
    rebuilt = round_trip(trigger)
    assert (rebuilt.target_healthy_percentage, rebuilt.desired, rebuilt.not_before) == (100, None, None)


def test_operation_trigger_round_trip() -> None:
    trigger = ServerGroupOperationTrigger("local", "local", ["op-1", "op-2"], poll_interval=1, timeout=30)
    assert trigger.serialize()[0] == "gennaker.triggers.server_group.ServerGroupOperationTrigger"
    assert round_trip(trigger).operation_ids == ["op-1", "op-2"]


# --------------------------------------------------------------------------- health


def test_reaches_healthy(cloud: FakeProvider, capsys: pytest.CaptureFixture[str]) -> None:
    on_poll(
        cloud,
        [
            lambda: cloud.set_health("hello-prod-v004", up=0, starting=3),
            lambda: cloud.set_health("hello-prod-v004", up=2, starting=1),
            lambda: cloud.set_health("hello-prod-v004", up=2, starting=1),
            lambda: cloud.set_health("hello-prod-v004", up=3),
        ],
    )
    (event,) = events(healthy_trigger())
    assert event == {
        "status": "healthy",
        "server_group": "hello-prod-v004",
        "up": 3,
        "total": 3,
        "needed": 3,
        "message": "hello-prod-v004: 3/3 instances healthy",
    }
    assert cloud.polls == 4
    assert cloud.opened == [("local", "local")]  # type: ignore[attr-defined]
    assert cloud.closed
    out = capsys.readouterr().out
    assert "hello-prod-v004: 0/3 instances healthy (3 starting)" in out
    assert out.count("hello-prod-v004: 2/3 instances healthy (1 starting)") == 1  # changes only
    assert "hello-prod-v004 is healthy" in out


def test_percentage_and_desired(cloud: FakeProvider) -> None:
    cloud.set_health("hello-prod-v004", up=2, down=2)
    (event,) = events(healthy_trigger(target_healthy_percentage=50, desired=4))
    assert event["status"] == "healthy"
    assert (event["up"], event["total"], event["needed"]) == (2, 4, 2)
    assert event["message"] == (
        "hello-prod-v004: 2/4 instances healthy (2 down); 2 needed (50%); hello-prod-v004-i2 is down: "
        "connection refused"
    )


def test_times_out(cloud: FakeProvider, capsys: pytest.CaptureFixture[str]) -> None:
    cloud.set_health("hello-prod-v004", up=1, starting=2)
    (event,) = events(healthy_trigger(timeout=0.05))
    assert event["status"] == "timeout"
    assert (event["up"], event["total"]) == (1, 3)
    assert event["message"] == (
        "hello-prod-v004 was not healthy after 0.05s: hello-prod-v004: 1/3 instances healthy (2 starting)"
    )
    assert cloud.polls >= 2
    assert "was not healthy after 0.05s" in capsys.readouterr().out


def test_a_server_group_that_disappears_is_an_error(cloud: FakeProvider) -> None:
    (event,) = events(healthy_trigger(server_group="hello-prod-v009"))
    assert event["status"] == "error"
    assert event["message"].startswith("hello-prod-v009: server group hello-prod-v009 does not exist in local/local")


def test_an_unreachable_cloud_is_retried(cloud: FakeProvider, capsys: pytest.CaptureFixture[str]) -> None:
    tries = {"n": 0}

    def flaky() -> None:
        tries["n"] += 1
        if tries["n"] <= 2:
            raise ProviderUnavailable("state database is busy")
        cloud.set_health("hello-prod-v004", up=3)

    on_poll(cloud, [flaky])
    (event,) = events(healthy_trigger())
    assert event["status"] == "healthy"
    assert tries["n"] == 3
    assert capsys.readouterr().out.count("the cloud did not answer") == 1  # said once, not at every poll


def test_waits_for_the_operations_too(cloud: FakeProvider) -> None:
    cloud.slow.add(OperationKind.RESIZE_SERVER_GROUP)
    from gennaker.cloud.model import Capacity

    op = cloud.resize_server_group("hello-prod-v004", Capacity.fixed(3), KEY)
    cloud.set_health("hello-prod-v004", up=3)
    on_poll(cloud, [lambda: None, lambda: None, lambda: cloud.finish(op.id)])
    (event,) = events(healthy_trigger(operation_ids=[op.id]))
    assert event["status"] == "healthy"
    assert cloud.polls == 3


def test_a_failed_operation_is_an_error(cloud: FakeProvider) -> None:
    from gennaker.cloud.model import Capacity

    cloud.slow.add(OperationKind.RESIZE_SERVER_GROUP)
    op = cloud.resize_server_group("hello-prod-v004", Capacity.fixed(3), KEY)
    cloud.finish(op.id, OperationStatus.FAILED, "no free ports")
    (event,) = events(healthy_trigger(operation_ids=[op.id]))
    assert event["status"] == "error"
    assert "resizeServerGroup op-1 failed: no free ports" in event["message"]


def test_not_before_holds_the_event_back(cloud: FakeProvider) -> None:
    cloud.set_health("hello-prod-v004", up=3)
    start = datetime.now(timezone.utc)
    (event,) = events(healthy_trigger(not_before=start + timedelta(seconds=0.3)))
    assert event["status"] == "healthy"
    assert datetime.now(timezone.utc) - start >= timedelta(seconds=0.3)


def test_an_account_that_cannot_be_opened_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from gennaker.hooks.cluster import AccountNotSupported

    def refuse(conn_id: str, region: str | None) -> Any:
        raise AccountNotSupported(f"account {conn_id!r} is an AWS connection")

    monkeypatch.setattr(module, "provider_factory", refuse)
    (event,) = events(healthy_trigger(conn_id="prod"))
    assert event["status"] == "error"
    assert event["message"].startswith("hello-prod-v004: account 'prod' is an AWS connection")


# --------------------------------------------------------------------------- operations


def test_operation_trigger_until_done(cloud: FakeProvider) -> None:
    cloud.slow.add(OperationKind.DESTROY_SERVER_GROUP)
    op = cloud.destroy_server_group("hello-prod-v004", KEY)
    calls = {"n": 0}
    original = cloud.operation

    def operation(op_id: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            cloud.finish(op_id, message="destroyed hello-prod-v004")
        return original(op_id)

    cloud.operation = operation  # type: ignore[method-assign]
    (event,) = events(ServerGroupOperationTrigger("local", "local", [op.id], poll_interval=0.01))
    assert event["status"] == "succeeded"
    assert event["message"] == "destroyServerGroup done: destroyed hello-prod-v004"
    assert event["operations"][0]["status"] == "SUCCEEDED"


def test_operation_trigger_failure_and_timeout(cloud: FakeProvider) -> None:
    cloud.slow.update({OperationKind.DISABLE_SERVER_GROUP, OperationKind.DESTROY_SERVER_GROUP})
    cloud.add_group("hello-prod-v005")
    failing = cloud.disable_server_group("hello-prod-v005", KEY)
    cloud.finish(failing.id, OperationStatus.FAILED, "drain timed out")
    (event,) = events(ServerGroupOperationTrigger("local", "local", [failing.id], poll_interval=0.01))
    assert event["status"] == "failed"
    assert event["message"] == "disableServerGroup failed: drain timed out"

    running = cloud.destroy_server_group("hello-prod-v004", KEY.derive("x"))
    (event,) = events(ServerGroupOperationTrigger("local", "local", [running.id], poll_interval=0.01, timeout=0.05))
    assert event["status"] == "timeout"
    assert event["message"].startswith("still running after 0.05s: destroyServerGroup running")


def test_unknown_operation_is_an_error(cloud: FakeProvider) -> None:
    (event,) = events(ServerGroupOperationTrigger("local", "local", ["op-404"], poll_interval=0.01))
    assert event["status"] == "error"
    assert "no operation op-404" in event["message"]
