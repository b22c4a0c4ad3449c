"""Retention: events, operations, the audit trail and lb_metrics are pruned by age and count as the store writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gennaker.cloud.local import retention
from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.local.proxy import MetricsRecorder, ensure_metrics_table, read_metrics
from gennaker.cloud.local.retention import Retention
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import Listener, LoadBalancer, OperationStatus
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import InvalidRequest
from gennaker.web.audit import AuditLog
from gennaker.web.models import AuditEntry

NOW = datetime.now(timezone.utc)
OLD = NOW - timedelta(days=31)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    local = StateStore(tmp_path / "state.db")
    yield local
    local.close()


@pytest.fixture
def every_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prune on every write (the interval is a minute), so a test sees the write path prune."""
    monkeypatch.setattr(retention, "PRUNE_INTERVAL_SECONDS", 0.0)
    monkeypatch.setattr(retention, "_due", {})


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key(n: int) -> IdempotencyKey:
    return IdempotencyKey("hello.release", f"manual__{n}", "deploy", "deploy")


def age_events(store: StateStore, subject: str, at: datetime) -> None:
    with store.transaction() as db:
        db.execute("UPDATE events SET at = ? WHERE subject = ?", (ts(at), subject))


def subjects(store: StateStore) -> list[str]:
    return [event.subject for event in store.events()]


def test_old_events_go_and_recent_ones_stay_on_the_next_write(store: StateStore, every_write: None) -> None:
    store.record_event("test", "old-1")
    store.record_event("test", "old-2")
    age_events(store, "old-1", OLD)  # this write prunes already: old-1 is older than 30 days
    age_events(store, "old-2", NOW - timedelta(days=29))
    store.record_event("test", "new")
    assert subjects(store) == ["old-2", "new"]


def test_the_newest_event_stays_however_old(store: StateStore) -> None:
    store.record_event("test", "only")
    age_events(store, "only", OLD)
    retention.prune(store)
    assert subjects(store) == ["only"]


def test_events_beyond_the_count_go_oldest_first(store: StateStore) -> None:
    for n in range(10):
        store.record_event("test", f"e{n}")
    deleted = retention.prune(store, Retention(max_rows=4))
    assert deleted["events"] == 6
    assert subjects(store) == ["e6", "e7", "e8", "e9"]


def test_finished_operations_are_pruned_but_running_ones_never(store: StateStore) -> None:
    ops = [store.claim_operation(key(n), "resizeServerGroup")[0] for n in range(4)]
    for op in ops[:3]:
        store.update_operation(op.id, status=OperationStatus.SUCCEEDED)
    with store.transaction() as db:  # all four a month old; ops[3] still RUNNING
        db.execute("UPDATE operations SET started = ?, updated = ? WHERE id != ?", (ts(OLD), ts(OLD), ops[2].id))
    retention.prune(store)
    assert {op.id for op in store.list_operations()} == {ops[2].id, ops[3].id}
    assert store.get_operation(ops[3].id).status is OperationStatus.RUNNING
    more = [store.claim_operation(key(n), "resizeServerGroup")[0] for n in range(10, 14)]
    for op in more:
        store.update_operation(op.id, status=OperationStatus.FAILED)
    retention.prune(store, Retention(max_rows=2))
    left = {op.id for op in store.list_operations()}
    assert left == {ops[3].id, more[2].id, more[3].id}  # the newest two, and the running one


def test_the_audit_trail_is_pruned_by_age_and_count(state_db: str, every_write: None) -> None:
    audit = AuditLog()  # the shared gennaker_audit table (here the test's SQLite file), with the same retention
    for n in range(5):
        audit.start(
            AuditEntry(
                id=f"a{n}",
                at=OLD if n < 2 else NOW,
                user="admin",
                action="resize",
                application="hello",
                account="local",
                region="local",
                cluster="hello-prod",
                server_group="hello-prod-v000",
                instance_id=None,
                parameters={},
                reason="",
                status="SUCCEEDED",
                http_status=202,
                message="",
                operation_ids=[],
                finished_at=None,
            )
        )
    entries, _ = audit.list("hello")
    assert [e.id for e in entries] == ["a4", "a3", "a2"]  # the month-old ones went as the others were written
    audit.prune(Retention(max_rows=1))
    assert [e.id for e in audit.list("hello")[0]] == ["a4"]


def write_metrics(store: StateStore, lb: str, *seconds: float) -> None:
    recorder = MetricsRecorder("local", "local", lb)
    for second in seconds:
        recorder.record("hello-prod-v000", 5.0, error=False, now=second)
    recorder.flush(store, final=True)


def put_lb(store: StateStore, name: str, port: int) -> None:
    store.put_load_balancer(
        LoadBalancer(name=name, application="hello", account="local", region="local", listeners=(Listener(port=port),))
    )


def metric_seconds(store: StateStore, lb: str) -> list[int]:
    start = time.time() - 10 * 86400
    return [
        b.ts for b in read_metrics(store, "local", "local", "hello-prod-v000", start, time.time() + 5, load_balancer=lb)
    ]


def test_lb_metrics_older_than_two_days_go_without_a_proxy(store: StateStore) -> None:
    ensure_metrics_table(store)
    put_lb(store, "hello-lb", 18001)
    now = int(time.time())
    write_metrics(store, "hello-lb", now - 3 * 86400, now - 86400, now - 1)
    retention.prune(store)
    assert metric_seconds(store, "hello-lb") == [now - 86400, now - 1]


def test_lb_metrics_of_a_load_balancer_deleted_elsewhere_go_on_the_next_write(
    store: StateStore, every_write: None
) -> None:
    ensure_metrics_table(store)
    put_lb(store, "kept-lb", 18002)
    now = int(time.time())
    write_metrics(store, "gone-lb", now - 5)  # its record is gone (deleted by another process, or by hand)
    write_metrics(store, "kept-lb", now - 5)
    assert metric_seconds(store, "gone-lb") == []  # the flush's own write pruned it
    assert metric_seconds(store, "kept-lb") == [now - 5]


def test_deleting_a_load_balancer_drops_its_metrics_at_once(tmp_path: Path) -> None:
    provider = LocalProvider("local", "local", home=tmp_path)
    ensure_metrics_table(provider.store)
    put_lb(provider.store, "hello-lb", 18003)  # a record only: no proxy ever ran
    now = int(time.time())
    write_metrics(provider.store, "hello-lb", now - 2, now - 1)
    op = provider.delete_load_balancer("hello-lb", key(1))
    assert op.status is OperationStatus.SUCCEEDED
    assert metric_seconds(provider.store, "hello-lb") == []
    provider.close()


def test_lb_metrics_beyond_the_count_go_oldest_first(store: StateStore) -> None:
    ensure_metrics_table(store)
    put_lb(store, "hello-lb", 18004)
    now = int(time.time())
    write_metrics(store, "hello-lb", *(now - n for n in range(6, 0, -1)))
    retention.prune(store, Retention(lb_metrics_max_rows=2))
    assert metric_seconds(store, "hello-lb") == [now - 2, now - 1]


def test_retention_comes_from_the_environment() -> None:
    env = {
        "GENNAKER_RETENTION_DAYS": "7",
        "GENNAKER_RETENTION_ROWS": "500",
        "GENNAKER_LB_METRICS_RETENTION_HOURS": "12",
        "GENNAKER_LB_METRICS_RETENTION_ROWS": "900",
    }
    assert Retention.from_env(env) == Retention(timedelta(days=7), 500, timedelta(hours=12), 900)
    assert Retention.from_env({}) == Retention(timedelta(days=30), 100_000, timedelta(days=2), 1_000_000)
    with pytest.raises(InvalidRequest, match="GENNAKER_RETENTION_DAYS must be at least 1, not 0"):
        Retention.from_env({"GENNAKER_RETENTION_DAYS": "0"})


def test_a_failing_prune_never_fails_the_write(
    store: StateStore, every_write: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENNAKER_RETENTION_DAYS", "soon")
    store.record_event("test", "kept")  # the prune refuses the setting; the event is written anyway
    assert subjects(store) == ["kept"]
