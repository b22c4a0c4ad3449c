"""The Clusters API's parts on their own: the snapshot cache, reading a non-local provider, the rollback's wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakecloud import FakeProvider

from gennaker.cloud.model import Firewall, LoadBalancer
from gennaker.web import models as m
from gennaker.web.actions import ActionRunner, Target
from gennaker.web.audit import AuditLog
from gennaker.web.cache import SnapshotCache
from gennaker.web.reader import AccountSnapshot, read_account, warm

# --------------------------------------------------------------------------- the cache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A loader counting its reads; each read returns a new (numbered) value."""

    def __init__(self) -> None:
        self.count = 0
        self.fail = False

    def __call__(self, account: str) -> str:
        if self.fail:
            raise RuntimeError("the account is not answering")
        self.count += 1
        return f"{account}#{self.count}"


def make_cache(**options: object) -> tuple[SnapshotCache[str], Loads, Clock, list[Callable[[], None]]]:
    loads, clock, spawned = Loads(), Clock(), []
    cache: SnapshotCache[str] = SnapshotCache(
        loads,
        ttl=5,
        max_stale=60,
        clock=clock,
        spawn=spawned.append,
        **options,  # type: ignore[arg-type]
    )
    return cache, loads, clock, spawned


def test_a_fresh_snapshot_is_served_without_reading() -> None:
    cache, loads, clock, spawned = make_cache()
    assert [cache.get("a") for _ in range(50)] == ["a#1"] * 50
    clock.now += 4.9
    assert cache.get("a") == "a#1" and loads.count == 1 and spawned == []
    assert cache.get("b") == "b#2"  # per account


def test_a_stale_snapshot_is_served_while_one_background_read_runs() -> None:
    cache, loads, clock, spawned = make_cache()
    cache.get("a")
    clock.now += 6
    assert cache.get("a") == "a#1"  # at once, stale
    assert cache.get("a") == "a#1"
    assert len(spawned) == 1 and loads.count == 1  # one background read, not one per request
    spawned.pop()()
    assert cache.get("a") == "a#2" and loads.count == 2
    assert cache.reads("a") == 2


def test_an_expired_snapshot_is_read_by_the_caller() -> None:
    cache, _loads, clock, spawned = make_cache()
    cache.get("a")
    clock.now += 61
    assert cache.get("a") == "a#2" and spawned == []


def test_invalidate_reads_again_and_drops_a_read_in_flight() -> None:
    cache, _loads, clock, spawned = make_cache()
    cache.get("a")
    clock.now += 6
    cache.get("a")  # starts a background read (not run yet)
    cache.invalidate("a")  # our own action changed the account
    assert cache.get("a") == "a#2"  # read now, by the caller
    spawned.pop()()  # the older background read ends: its result is thrown away
    assert cache.get("a") == "a#2"


def test_a_failed_background_read_keeps_the_stale_snapshot_until_it_expires() -> None:
    cache, loads, clock, spawned = make_cache()
    cache.get("a")
    clock.now += 6
    loads.fail = True
    cache.get("a")
    spawned.pop()()  # logs a warning
    assert cache.get("a") == "a#1"
    spawned.pop()()  # a new attempt was started by that request
    clock.now += 60
    with pytest.raises(RuntimeError, match="not answering"):
        cache.get("a")


def test_concurrent_requests_of_an_expired_account_read_it_once() -> None:
    gate = threading.Event()
    count = 0

    def slow(account: str) -> str:
        nonlocal count
        count += 1
        gate.wait(5)
        return f"{account}#{count}"

    cache: SnapshotCache[str] = SnapshotCache(slow, ttl=5)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("a"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert results == ["a#1"] * 8 and count == 1


def _snapshot(name: str) -> AccountSnapshot:
    from gennaker.cloud.model import utcnow

    return AccountSnapshot(name, "local", "local", utcnow(), (), (), (), {})


def test_a_background_read_renders_what_was_asked_of_the_old_snapshot() -> None:
    built: list[tuple[str, str]] = []
    snapshots = iter([_snapshot("one"), _snapshot("two")])
    clock, spawned = Clock(), []
    cache: SnapshotCache[AccountSnapshot] = SnapshotCache(
        lambda account: next(snapshots), ttl=5, clock=clock, spawn=spawned.append, warm=warm
    )

    def render(application: str) -> Callable[[AccountSnapshot], str]:
        def build(snapshot: AccountSnapshot) -> str:
            built.append((snapshot.account, application))
            return f"{snapshot.account}/{application}"

        return build

    first = cache.get("a")
    assert first.memo(("clusters", "hello"), render("hello")) == "one/hello"
    assert first.memo(("clusters", "hello"), render("hello")) == "one/hello"  # memoized
    clock.now += 6
    cache.get("a")
    spawned.pop()()
    assert built == [("one", "hello"), ("two", "hello")]  # rendered by the background read
    second = cache.get("a")
    assert second.memo(("clusters", "hello"), render("hello")) == "two/hello"
    assert len(built) == 2  # the request found it rendered


# ------------------------------------------------------------------ reading a provider other than the local one


class EdgeProvider(FakeProvider):
    """A provider with a load balancer of ``edge`` and a firewall of ``hello``."""

    def list_load_balancers(self, *, application: str | None = None, region: str | None = None) -> list[LoadBalancer]:
        return [LoadBalancer(name="edge-lb", application="edge", account=self.account, region=self.region)]

    def list_firewalls(self, *, application: str | None = None, region: str | None = None) -> list[Firewall]:
        return [Firewall(name="hello-fw", application="hello", account=self.account, region=self.region)]


def test_other_providers_are_read_per_application() -> None:
    provider = EdgeProvider(account="acct")
    provider.add_group("hello-prod-v001", desired=2)
    provider.add_group("edge-prod-v000", desired=1)
    provider.add_group("piped-prod-v000", desired=1)
    provider.add_group("quiet-v001", desired=1)  # an application no load balancer, firewall or pipeline names
    snapshot = read_account("acct", provider, applications=["piped"])
    assert snapshot.account == "acct"
    assert sorted(g.name for g in snapshot.server_groups) == ["edge-prod-v000", "hello-prod-v001", "piped-prod-v000"]
    assert snapshot.applications() == {"hello", "edge", "piped"}
    assert snapshot.server_group("local", "hello-prod-v001").capacity.desired == 2


# ------------------------------------------------------------------ the rollback action waits as the stage does


@pytest.fixture
def runner(tmp_path: Path) -> tuple[ActionRunner, list[Callable[[], None]], AuditLog]:
    audit = AuditLog()  # the shared audit table, in this test's database (the state_db fixture)
    spawned: list[Callable[[], None]] = []
    changed: list[str] = []
    runner = ActionRunner(lambda: audit, changed.append, poll_interval=0.01, spawn=spawned.append)
    return runner, spawned, audit


def _rollback(runner: ActionRunner, provider: FakeProvider, timeout: int = 1) -> m.ActionResponse:
    target = Target("hello", "local", None, cluster="hello-prod")
    return runner.rollback("alice", provider, target, m.RollbackRequest(timeout_seconds=timeout))


def test_rollback_disables_the_newer_group_once_the_older_is_healthy(
    runner: tuple[ActionRunner, list[Callable[[], None]], AuditLog],
) -> None:
    run, spawned, audit = runner
    provider = FakeProvider()
    provider.add_group("hello-prod-v001", enabled=False, desired=2, up=0)
    provider.add_group("hello-prod-v002", enabled=True, desired=2)
    body = _rollback(run, provider)
    assert body.action.status == "RUNNING" and provider.groups["hello-prod-v001"].enabled
    assert provider.groups["hello-prod-v002"].enabled  # not yet: the restored group is not healthy
    assert [k.split("/")[:3] for k in provider.keys()] == [["ui", body.action.id, "rollback"]]
    provider.set_health("hello-prod-v001", up=2)
    spawned.pop()()
    assert not provider.groups["hello-prod-v002"].enabled
    entry = audit.get(body.action.id)
    assert (
        entry.status == "SUCCEEDED"
        and entry.message == "rolled back hello-prod from hello-prod-v002 to hello-prod-v001"
    )
    assert provider.keys("disable") == [f"ui/{body.action.id}/rollback/rollback-disable-hello-prod-v002"]


def test_rollback_that_never_gets_healthy_disables_nothing(
    runner: tuple[ActionRunner, list[Callable[[], None]], AuditLog],
) -> None:
    run, spawned, audit = runner
    provider = FakeProvider()
    provider.add_group("hello-prod-v001", enabled=False, desired=2, up=0)
    provider.add_group("hello-prod-v002", enabled=True, desired=2)
    body = _rollback(run, provider, timeout=1)
    spawned.pop()()  # waits its second, then stops
    assert provider.groups["hello-prod-v002"].enabled
    entry = audit.get(body.action.id)
    assert entry.status == "FAILED"
    assert entry.message.startswith("rollback stopped, nothing was disabled (hello-prod-v002 still take traffic")


def test_rollback_grows_a_smaller_group_first(runner: tuple[ActionRunner, list[Callable[[], None]], AuditLog]) -> None:
    run, spawned, audit = runner
    provider = FakeProvider()
    provider.add_group("hello-prod-v001", enabled=False, desired=1)
    provider.add_group("hello-prod-v002", enabled=True, desired=3)
    body = _rollback(run, provider)
    assert [o.kind for o in body.operations] == ["resizeServerGroup", "enableServerGroup"]
    assert provider.groups["hello-prod-v001"].capacity.desired == 3
    provider.set_health("hello-prod-v001", up=3)
    spawned.pop()()
    assert audit.get(body.action.id).status == "SUCCEEDED"


def test_a_healthy_rollback_ends_in_the_request(
    runner: tuple[ActionRunner, list[Callable[[], None]], AuditLog],
) -> None:
    run, spawned, _audit = runner
    provider = FakeProvider(guarded=["hello-prod"])
    provider.add_group("hello-prod-v001", enabled=False, desired=2)
    provider.add_group("hello-prod-v002", enabled=True, desired=2)
    body = _rollback(run, provider)
    assert spawned == [] and body.action.status == "SUCCEEDED"
    assert (provider.groups["hello-prod-v001"].enabled, provider.groups["hello-prod-v002"].enabled) == (True, False)
