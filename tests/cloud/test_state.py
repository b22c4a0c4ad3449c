"""The local provider's SQLite state: atomic, idempotent, shared by several processes, durable."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sqlite3
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gennaker.cloud.local.state import StateStore, default_state_path
from gennaker.cloud.model import (
    Capacity,
    Firewall,
    FirewallRule,
    Health,
    Image,
    Instance,
    LoadBalancer,
    OperationKind,
    OperationStatus,
    ServerGroup,
)
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import (
    IdempotencyConflict,
    InvalidName,
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    SequenceExhausted,
)
from gennaker.paths import gennaker_home

ACCOUNT, REGION = "local", "local"
PROCESSES, ROUNDS = 4, 50
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
# spawn: each worker starts clean and opens the file itself, as separate Airflow processes do.
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def key(purpose: str = "create", run: str = "r1") -> IdempotencyKey:
    return IdempotencyKey("hello.deploy", run, "deploy", purpose)


def group(name: str = "hello-prod-v000", created: datetime = T0, **changes: Any) -> ServerGroup:
    return ServerGroup(
        name=name, account=ACCOUNT, region=REGION, image_id="img-1", capacity=Capacity.fixed(1), created=created
    ).replace(**changes)


def instance(instance_id: str = "i-1", server_group: str = "hello-prod-v000") -> Instance:
    return Instance(id=instance_id, server_group=server_group, host="127.0.0.1", port=9001)


def run_workers(job: str, path: Path) -> list[Any]:
    """Run ``JOBS[job]`` in PROCESSES spawned processes at once; their results, in no order.

    Each worker opens the store, says it is ready, and waits: the work starts only when
    all are ready, so the writers really contend.
    """
    ready, start, results = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    workers = [SPAWN.Process(target=_work, args=(ready, start, results, n, str(path), job)) for n in range(PROCESSES)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    start.set()
    collected = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    failures = [r for r in collected if isinstance(r, BaseException)]
    assert not failures, failures
    return collected


# --------------------------------------------------------------------------- workers (run in other processes)


def _increment(store: StateStore, n: int) -> int:
    for i in range(ROUNDS):
        store.update_instance("i-1", lambda inst: inst.replace(restarts=inst.restarts + 1))
        store.record_event("instance.restarted", "i-1", f"worker {n} round {i}")
    return n


def _claim(store: StateStore, n: int) -> list[tuple[int, str, bool]]:
    claims = []
    for i in range(ROUNDS):
        op, created = store.claim_operation(key(f"k{i}"), OperationKind.CREATE_SERVER_GROUP, request={"by": n})
        claims.append((i, op.id, created))
    return claims


def _allocate(store: StateStore, n: int) -> list[str]:
    return [store.allocate_server_group_name(account=ACCOUNT, region=REGION, cluster="hello-prod") for _ in range(25)]


JOBS = {"increment": _increment, "claim": _claim, "allocate": _allocate}


def _work(ready: Any, start: Any, results: Any, n: int, path: str, job: str) -> None:
    """A worker process: open the store, say so, wait for the others, then do ``job``."""
    try:
        store = StateStore(path)
    except BaseException as error:
        ready.put(n)
        results.put(error)
        return
    ready.put(n)
    start.wait()
    try:
        results.put(JOBS[job](store, n))
    except BaseException as error:
        results.put(error)


# --------------------------------------------------------------------------- several processes


def test_concurrent_writers_lose_nothing(store: StateStore) -> None:
    store.put_instance(instance(), account=ACCOUNT, region=REGION)
    run_workers("increment", store.path)
    assert store.get_instance("i-1").restarts == PROCESSES * ROUNDS
    events = store.events(subject="i-1", limit=10_000)
    assert len(events) == PROCESSES * ROUNDS
    assert len({e.id for e in events}) == PROCESSES * ROUNDS


def test_one_key_claimed_from_several_processes_is_created_once(store: StateStore) -> None:
    per_worker = run_workers("claim", store.path)
    created = Counter(i for claims in per_worker for i, _, was_created in claims if was_created)
    assert created == dict.fromkeys(range(ROUNDS), 1)
    ids_per_key = {i: {op_id for claims in per_worker for j, op_id, _ in claims if j == i} for i in range(ROUNDS)}
    assert all(len(ids) == 1 for ids in ids_per_key.values())
    assert len(store.list_operations(kind=OperationKind.CREATE_SERVER_GROUP)) == ROUNDS


def test_names_allocated_from_several_processes_are_distinct(store: StateStore) -> None:
    names = [name for allocated in run_workers("allocate", store.path) for name in allocated]
    assert len(names) == len(set(names)) == PROCESSES * 25
    assert sorted(names) == [f"hello-prod-v{i:03d}" for i in range(PROCESSES * 25)]


def _forked_child(store: StateStore, queue: Any) -> None:
    store.put_instance(instance("i-child"), account=ACCOUNT, region=REGION)
    queue.put(store.get_instance("i-1").id)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork()")
def test_a_forked_child_opens_its_own_connection(store: StateStore) -> None:
    store.put_instance(instance(), account=ACCOUNT, region=REGION)  # the parent's connection is open
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    child = fork.Process(target=_forked_child, args=(store, queue))
    child.start()
    assert queue.get(timeout=30) == "i-1"
    child.join(timeout=30)
    assert child.exitcode == 0
    assert store.get_instance("i-child").id == "i-child"


# --------------------------------------------------------------------------- idempotency


def test_claiming_a_key_twice_returns_the_first_operation(store: StateStore) -> None:
    first, created = store.claim_operation(key(), "createServerGroup", request={"capacity": 2})
    again, created_again = store.claim_operation(key(), OperationKind.CREATE_SERVER_GROUP, request={"capacity": 3})
    assert (created, created_again) == (True, False)
    assert again == first
    assert again.request == {"capacity": 2}  # the first call's arguments win
    assert store.find_operation(key()) == first
    assert store.find_operation(key("other")) is None


def test_a_key_reused_for_another_kind_is_a_conflict(store: StateStore) -> None:
    store.claim_operation(key(), "createServerGroup")
    with pytest.raises(IdempotencyConflict, match=r"already names a createServerGroup operation .* not bake"):
        store.claim_operation(key(), "bake")


def test_operation_progress_and_final_state(store: StateStore) -> None:
    op, _ = store.claim_operation(key(), "createServerGroup")
    op = store.update_operation(op.id, message="2/3 instances up", result={"server_group": "hello-prod-v000"})
    assert (op.status, op.message) == (OperationStatus.RUNNING, "2/3 instances up")
    op = store.update_operation(op.id, status="SUCCEEDED", result={"instances": 3})
    assert op.result == {"server_group": "hello-prod-v000", "instances": 3}
    assert op.message == "createServerGroup succeeded"
    with pytest.raises(InvalidRequest, match="already ended SUCCEEDED"):
        store.update_operation(op.id, status="FAILED")
    assert store.claim_operation(key(), "createServerGroup")[0] == op  # a retry sees the outcome
    assert [e.kind for e in store.events(subject=op.id)] == ["operation.started", "operation.succeeded"]


def test_running_operations_can_be_listed_for_a_restarted_supervisor(store: StateStore) -> None:
    a, _ = store.claim_operation(key("a"), "bake")
    b, _ = store.claim_operation(key("b"), "bake")
    store.update_operation(a.id, status="FAILED", message="no such package")
    assert [op.id for op in store.list_operations(status="RUNNING")] == [b.id]
    with pytest.raises(NotFound, match="operation op-nope not found"):
        store.get_operation("op-nope")


# --------------------------------------------------------------------------- server group names


def allocate(store: StateStore, cluster: str = "hello-prod", **kwargs: Any) -> str:
    return store.allocate_server_group_name(account=ACCOUNT, region=REGION, cluster=cluster, **kwargs)


def test_allocation_is_repeatable_for_the_same_holder(store: StateStore) -> None:
    assert allocate(store, reserved_by=key()) == "hello-prod-v000"
    assert allocate(store, reserved_by=key()) == "hello-prod-v000"
    assert allocate(store, reserved_by=key(run="r2")) == "hello-prod-v001"
    assert allocate(store, cluster="hello--canary") == "hello--canary-v000"


def test_a_destroyed_groups_name_is_not_handed_out_again(store: StateStore) -> None:
    names = [allocate(store) for _ in range(3)]
    for name in names:
        store.put_server_group(group(name))
    assert store.delete_server_group(ACCOUNT, REGION, "hello-prod-v002")
    assert allocate(store) == "hello-prod-v003"


def test_allocation_follows_existing_groups_and_wraps(store: StateStore) -> None:
    store.put_server_group(group("hello-prod-v998", created=T0))
    store.put_server_group(group("hello-prod-v999", created=T0 + timedelta(minutes=1)))
    assert [allocate(store) for _ in range(2)] == ["hello-prod-v000", "hello-prod-v001"]


def test_allocation_skips_names_in_use_after_a_wrap(store: StateStore) -> None:
    store.put_server_group(group("hello-prod-v001", created=T0))  # an old group nobody reserved
    store.put_server_group(group("hello-prod-v999", created=T0 + timedelta(minutes=1)))
    assert allocate(store) == "hello-prod-v000"
    assert allocate(store) == "hello-prod-v002"


def test_allocation_fails_clearly_when_the_cluster_is_full(store: StateStore) -> None:
    with store.transaction() as db:
        db.executemany(
            "INSERT INTO names (account, region, cluster, name, reserved) VALUES (?, ?, ?, ?, '')",
            [(ACCOUNT, REGION, "hello-prod", f"hello-prod-v{i:03d}") for i in range(1000)],
        )
    with pytest.raises(SequenceExhausted, match="destroy old server groups"):
        allocate(store)


def test_allocation_needs_a_cluster_name(store: StateStore) -> None:
    with pytest.raises(InvalidName, match="is a server group name, not a cluster"):
        allocate(store, cluster="hello-prod-v001")


# --------------------------------------------------------------------------- resources


def test_server_group_with_instances(store: StateStore) -> None:
    store.put_server_group(group("hello-prod-v000"))
    store.put_server_group(group("hello-prod-v001", created=T0 + timedelta(minutes=1)))
    store.put_server_group(group("hello-staging-v000"))
    store.put_instance(instance("i-1"), account=ACCOUNT, region=REGION)
    store.put_instance(instance("i-2").replace(health=Health.UP), account=ACCOUNT, region=REGION)
    got = store.get_server_group(ACCOUNT, REGION, "hello-prod-v000")
    assert [i.id for i in got.instances] == ["i-1", "i-2"]
    assert got.health_counts().up == 1
    cluster = store.list_server_groups(application="hello", cluster="hello-prod")
    assert [g.name for g in cluster] == ["hello-prod-v000", "hello-prod-v001"]
    assert len(store.list_server_groups(account=ACCOUNT)) == 3
    with pytest.raises(NotFound, match="server group hello-prod-v009 not found in account local, region local"):
        store.get_server_group(ACCOUNT, REGION, "hello-prod-v009")


def test_update_server_group_is_atomic_and_keeps_identity(store: StateStore) -> None:
    store.put_server_group(group())
    disabled = store.update_server_group(
        ACCOUNT, REGION, "hello-prod-v000", lambda g: g.replace(enabled=False, disabled_by="promote")
    )
    assert not store.get_server_group(ACCOUNT, REGION, "hello-prod-v000").enabled
    assert disabled.disabled_by == "promote"
    with pytest.raises(InvalidRequest, match="may not rename"):
        store.update_server_group(ACCOUNT, REGION, "hello-prod-v000", lambda g: g.replace(name="hello-prod-v001"))


def test_delete_server_group_takes_its_instances(store: StateStore) -> None:
    store.put_server_group(group())
    store.put_instance(instance(), account=ACCOUNT, region=REGION)
    assert store.delete_server_group(ACCOUNT, REGION, "hello-prod-v000")
    assert not store.delete_server_group(ACCOUNT, REGION, "hello-prod-v000")
    with pytest.raises(NotFound):
        store.get_instance("i-1")


def test_images_newest_first_with_filters(store: StateStore) -> None:
    for n, package in enumerate(["hello", "hello", "world"]):
        store.put_image(
            Image(
                id=f"img-{n}",
                name=f"{package}-1.{n}",
                package=package,
                version=f"1.{n}",
                application="hello",
                base="python-3.11",
                region=REGION,
                account=ACCOUNT,
                inputs_hash=f"h{n}",
                created=T0 + timedelta(minutes=n),
                tags={"channel": "release" if n else "candidate"},
            )
        )
    assert [i.id for i in store.find_images(package="hello")] == ["img-1", "img-0"]
    assert [i.id for i in store.find_images(tags={"channel": "candidate"})] == ["img-0"]
    assert [i.id for i in store.find_images(inputs_hash="h2", application="hello")] == ["img-2"]
    assert store.delete_image("img-0") and store.find_images(package="hello")[0].id == "img-1"


def test_load_balancers_and_firewalls(store: StateStore) -> None:
    lb = LoadBalancer(name="hello-prod", application="hello", account=ACCOUNT, region=REGION, clusters=("hello-prod",))
    fw = Firewall(name="hello", application="hello", account=ACCOUNT, region=REGION, rules=(FirewallRule(cidr="::/0"),))
    store.put_load_balancer(lb)
    store.put_load_balancer(lb.replace(weights={"hello-prod-v000": 100}))
    store.put_firewall(fw)
    assert store.get_load_balancer(ACCOUNT, REGION, "hello-prod").weights == {"hello-prod-v000": 100}
    assert store.list_load_balancers(application="hello") == [store.get_load_balancer(ACCOUNT, REGION, "hello-prod")]
    assert store.list_firewalls(application="hello") == [fw]
    assert store.delete_firewall(ACCOUNT, REGION, "hello") and store.list_firewalls() == []
    assert store.delete_load_balancer(ACCOUNT, REGION, "hello-prod")
    with pytest.raises(NotFound, match="load balancer hello-prod not found"):
        store.get_load_balancer(ACCOUNT, REGION, "hello-prod")


# --------------------------------------------------------------------------- transactions and durability


def test_a_failed_transaction_writes_nothing(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.put_server_group(group())
        store.claim_operation(key(), "createServerGroup")
        raise RuntimeError("boom")
    assert store.list_server_groups() == []
    assert store.find_operation(key()) is None


def test_a_caught_inner_failure_undoes_only_the_inner_writes(store: StateStore) -> None:
    with store.transaction():
        store.put_server_group(group("hello-prod-v000"))
        with pytest.raises(RuntimeError), store.transaction():
            store.put_server_group(group("hello-prod-v001"))
            raise RuntimeError("inner")
    assert [g.name for g in store.list_server_groups()] == ["hello-prod-v000"]


def test_a_lock_held_too_long_is_provider_unavailable(tmp_path: Path) -> None:
    holder = StateStore(tmp_path / "state.db")
    impatient = StateStore(tmp_path / "state.db", timeout=0.2)
    with holder.transaction():
        holder.put_server_group(group())
        with pytest.raises(ProviderUnavailable, match="stayed locked by another process") as caught:
            impatient.put_server_group(group("hello-prod-v001"))
        assert caught.value.retryable
        assert impatient.list_server_groups() == []  # readers are not blocked by the writer (WAL)


def test_a_store_pickles_as_its_path(store: StateStore) -> None:
    store.put_server_group(group())
    again = pickle.loads(pickle.dumps(store))
    assert (again.path, again.timeout) == (store.path, store.timeout)
    assert again.get_server_group(ACCOUNT, REGION, "hello-prod-v000").name == "hello-prod-v000"


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = StateStore(path)
    op, _ = first.claim_operation(key(), "createServerGroup")
    name = allocate(first, reserved_by=key())
    first.put_server_group(group(name))
    first.close()

    again = StateStore(path)
    assert again.get_server_group(ACCOUNT, REGION, name).name == "hello-prod-v000"
    assert again.claim_operation(key(), "createServerGroup") == (op, False)
    assert allocate(again, reserved_by=key()) == name
    assert allocate(again) == "hello-prod-v001"
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


# The tables of schema version 1 as gennaker 0.1 wrote them (state.py before it was split): a file
# written then must open as it is, and a new file must get exactly these tables.
RELEASED_SCHEMA_V1 = """
CREATE TABLE images (
    id TEXT PRIMARY KEY, account TEXT NOT NULL, region TEXT NOT NULL, package TEXT NOT NULL,
    application TEXT, inputs_hash TEXT NOT NULL, created TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX images_package ON images (account, region, package, created);
CREATE INDEX images_inputs ON images (account, region, inputs_hash);
CREATE TABLE server_groups (
    account TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL, cluster TEXT NOT NULL,
    application TEXT NOT NULL, created TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (account, region, name));
CREATE INDEX server_groups_cluster ON server_groups (account, region, cluster, created);
CREATE INDEX server_groups_application ON server_groups (application, created);
CREATE TABLE instances (
    id TEXT PRIMARY KEY, account TEXT NOT NULL, region TEXT NOT NULL, server_group TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX instances_server_group ON instances (account, region, server_group);
CREATE TABLE load_balancers (
    account TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL, application TEXT NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (account, region, name));
CREATE TABLE firewalls (
    account TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL, application TEXT NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (account, region, name));
CREATE TABLE operations (
    id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, status TEXT NOT NULL,
    started TEXT NOT NULL, updated TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX operations_status ON operations (status, started);
CREATE TABLE names (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, region TEXT NOT NULL,
    cluster TEXT NOT NULL, name TEXT NOT NULL, reserved_by TEXT, reserved TEXT NOT NULL,
    released INTEGER NOT NULL DEFAULT 0, UNIQUE (account, region, name));
CREATE INDEX names_cluster ON names (account, region, cluster, seq);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
    account TEXT, key TEXT, message TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX events_subject ON events (subject, id);
"""


def _tables(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    return {name: " ".join(sql.split()) for name, sql in rows}


def test_a_state_file_of_the_released_schema_opens_as_it_is(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.executescript(RELEASED_SCHEMA_V1)
        conn.execute("PRAGMA user_version = 1")
        body = json.dumps(group().model_dump(mode="json", exclude={"instances"}))
        conn.execute(
            "INSERT INTO server_groups VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ACCOUNT, REGION, "hello-prod-v000", "hello-prod", "hello", "2025-03-01T12:00:00.000000Z", body),
        )
        conn.execute(
            "INSERT INTO names (account, region, cluster, name, reserved_by, reserved) VALUES (?, ?, ?, ?, ?, ?)",
            (ACCOUNT, REGION, "hello-prod", "hello-prod-v000", str(key()), "2025-03-01T12:00:00.000000Z"),
        )
    conn.close()
    released = _tables(old)

    store = StateStore(old)
    assert store.get_server_group(ACCOUNT, REGION, "hello-prod-v000").capacity == Capacity.fixed(1)
    assert allocate(store, reserved_by=key()) == "hello-prod-v000"  # the reservation made before is still held
    assert allocate(store) == "hello-prod-v001"
    store.close()
    assert _tables(old) == released  # nothing was migrated
    assert _tables(StateStore(tmp_path / "new.db").path) == released  # and a new file gets the same tables
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == 1


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(InvalidRequest, match="written by a newer gennaker"):
        StateStore(path)


def test_where_the_state_lives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GENNAKER_HOME", str(tmp_path / "g"))
    assert default_state_path() == tmp_path / "g" / "local" / "state.db"
    monkeypatch.delenv("GENNAKER_HOME")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "af"))
    assert gennaker_home() == tmp_path / "af" / "gennaker"
    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gennaker_home() == tmp_path / "home" / "airflow" / "gennaker"
    assert os.environ.get("GENNAKER_HOME") is None
