"""The Clusters API under attack and breakage: the cluster lock, cookies, a broken home, operations, teams, docs, audit.

Everything goes through Airflow's real API server app (``conftest.api``) except the
background part of an action's lock, which a unit test drives step by step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from clusters_helpers import API, Api, add_pipeline, write_records
from fakecloud import FakeProvider
from fastapi.routing import APIRoute

from gennaker.cloud.local.state import StateStore
from gennaker.cloud.locks import ClusterLocks, cluster_resource
from gennaker.cloud.model import OperationKind, OperationStatus
from gennaker.cloud.provider import IdempotencyKey
from gennaker.web import models as m
from gennaker.web.actionlock import ActionLocks
from gennaker.web.actions import ActionRunner, Target
from gennaker.web.audit import AuditLog

APP = "hard"
GROUP = f"{APP}-s0-v001"  # the enabled group of its cluster
BASE = f"/applications/{APP}/serverGroups/local/local/{GROUP}"
PIPELINE_OWNER = f"{APP}.deploy/manual__2026-01-01T00:00:00+00:00/deploy"


@pytest.fixture
def records(api: Api, service: Any) -> Iterator[None]:
    """The hard application's records (two groups of one cluster); no cookie kept; the cluster's lock free."""
    api.client.cookies.clear()
    write_records(api.home, APP, clusters=1, groups_per_cluster=2, instances_per_group=1)
    yield
    api.client.cookies.clear()
    ClusterLocks().release(cluster_resource("local", "local", f"{APP}-s0"), PIPELINE_OWNER)


def _latest_audit(api: Api) -> dict[str, Any]:
    [entry] = api.ok(f"/applications/{APP}/audit?limit=1")["entries"]
    return entry


def _enabled(api: Api) -> bool:
    return bool(api.ok(f"{BASE}")["serverGroup"]["enabled"])


# --------------------------------------------------------------------------- 1. the cluster lock


def test_an_action_on_a_cluster_a_pipeline_holds_is_409_naming_the_run(api: Api, records: None) -> None:
    locks = ClusterLocks()
    resource = cluster_resource("local", "local", f"{APP}-s0")
    assert locks.acquire(resource, PIPELINE_OWNER, note="deploy stage") is None  # as DeployOperator.phase_lock
    r = api.post(f"{BASE}/disable", {"reason": "please"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["type"] == "ClusterLocked"
    assert f"{APP}.deploy" in body["detail"] and "manual__2026-01-01T00:00:00+00:00" in body["detail"]
    assert "task deploy" in body["detail"] and "deploy stage" in body["detail"]
    assert f"/dags/{APP}.deploy/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00" in body["hint"]
    assert _enabled(api)  # the provider was not called
    entry = _latest_audit(api)
    assert (entry["status"], entry["httpStatus"], entry["action"]) == ("REFUSED", 409, "disable")
    assert entry["reason"] == "" and entry["parameters"] == {}  # a refused request's text is not kept
    assert locks.holder(resource).owner == PIPELINE_OWNER  # still the pipeline's

    assert locks.release(resource, PIPELINE_OWNER)
    r = api.post(f"{BASE}/disable")
    assert r.status_code == 202, r.text
    assert not _enabled(api)
    action = r.json()["action"]["id"]
    deadline = time.monotonic() + 30
    while api.ok(f"/applications/{APP}/audit?limit=1")["entries"][0]["status"] == "RUNNING":
        assert locks.holder(resource).owner == f"ui:{action}:admin"  # held while the action is followed up
        assert time.monotonic() < deadline, "the disable did not end"
        time.sleep(0.1)
    assert _latest_audit(api)["status"] == "SUCCEEDED"
    assert locks.holder(resource) is None  # the action ended: its lock is back


def test_every_action_takes_the_lock(api: Api, records: None) -> None:
    ClusterLocks().acquire(cluster_resource("local", "local", f"{APP}-s0"), PIPELINE_OWNER, note="promote stage")
    bodies: dict[str, dict[str, Any]] = {
        f"{BASE}/resize": {"capacity": {"min": 0, "max": 0, "desired": 0}},
        f"{BASE}/enable": {},
        f"{BASE}/disable": {},
        f"{BASE}/destroy": {},
        f"{BASE}/instances/i-{APP}-0-1-0/terminate": {"decrement": True},
        f"/applications/{APP}/clusters/local/{APP}-s0/rollback": {"target": "previous"},
    }
    for path, body in bodies.items():
        r = api.post(path, body)
        assert (r.status_code, r.json()["type"]) == (409, "ClusterLocked"), (path, r.text)
    assert _enabled(api)


@pytest.fixture
def runner(tmp_path: Path) -> tuple[ActionRunner, list[Callable[[], None]], ClusterLocks]:
    locks = ClusterLocks(tmp_path / "locks.db")
    audit = AuditLog()  # the shared audit table, in this test's database (the state_db fixture)
    spawned: list[Callable[[], None]] = []
    run = ActionRunner(
        lambda: audit, lambda _: None, poll_interval=0.01, spawn=spawned.append, locks=ActionLocks(lambda: locks)
    )
    return run, spawned, locks


def test_the_lock_is_held_until_the_background_part_ends(
    runner: tuple[ActionRunner, list[Callable[[], None]], ClusterLocks],
) -> None:
    run, spawned, locks = runner
    provider = FakeProvider()
    provider.add_group("hello-prod-v001", enabled=False, desired=2, up=0)
    provider.add_group("hello-prod-v002", enabled=True, desired=2)
    target = Target("hello", "local", None, cluster="hello-prod")
    body = run.rollback("alice", provider, target, m.RollbackRequest(timeout_seconds=5))
    resource = cluster_resource("local", "local", "hello-prod")
    holder = locks.acquire(resource, "hello.deploy/r1/deploy")  # a pipeline arrives while the rollback waits
    assert holder is not None and holder.owner == f"ui:{body.action.id}:alice"
    assert holder.note == "rollback on the Clusters page"
    provider.set_health("hello-prod-v001", up=2)
    spawned.pop()()
    assert locks.holder(resource) is None


def test_the_lock_is_given_back_when_the_background_part_fails(
    runner: tuple[ActionRunner, list[Callable[[], None]], ClusterLocks],
) -> None:
    run, spawned, locks = runner
    provider = FakeProvider()
    provider.add_group("hello-prod-v001", enabled=False, desired=2, up=0)
    provider.add_group("hello-prod-v002", enabled=True, desired=2)
    body = run.rollback(
        "alice", provider, Target("hello", "local", None, cluster="hello-prod"), m.RollbackRequest(timeout_seconds=5)
    )

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    provider.instances = broken  # type: ignore[method-assign]
    spawned.pop()()
    assert locks.holder(cluster_resource("local", "local", "hello-prod")) is None
    assert run.audit().get(body.action.id).status == "FAILED"


# --------------------------------------------------------------------------- 2. cookies as Starlette reads them


@pytest.mark.parametrize(
    "cookie_headers",
    [
        ["theme=dark", "_token={token}"],
        ["_token={token}", "theme=dark"],
        ["theme=dark; _token = {token}"],
    ],
    ids=["token-in-second-header", "token-in-first-header", "spaces-around-equals"],
)
def test_a_session_cookie_in_any_cookie_header_needs_an_origin(
    api: Api, records: None, cookie_headers: list[str]
) -> None:
    token = api.token("admin")
    headers = [("Cookie", value.format(token=token)) for value in cookie_headers]
    headers.append(("Content-Type", "application/json"))
    r = api.client.post(f"{API}{BASE}/disable", content=b"{}", headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["type"] == "CrossSiteRequest"
    assert _enabled(api)


# --------------------------------------------------------------------------- 3. a broken home


def _routes() -> list[tuple[str, str]]:
    from gennaker.web.app import router

    values = {
        "application": APP,
        "account": "local",
        "cluster": f"{APP}-s0",
        "region": "local",
        "serverGroup": GROUP,
        "instanceId": f"i-{APP}-0-1-0",
        "operationId": "op-none",
    }
    found = []
    for route in router.routes:
        assert isinstance(route, APIRoute)
        path = route.path.removeprefix("/api")
        for name, value in values.items():
            path = path.replace(f"{{{name}}}", value)
        found += [(method, path) for method in sorted(route.methods)]
    return sorted(found)


def _immutable(paths: list[Path], on: bool) -> None:
    """Read-only even for root (whom file modes do not stop): the immutable attribute, else the modes."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True)
    else:
        for path in paths:
            path.chmod((0o500 if path.is_dir() else 0o400) if on else (0o700 if path.is_dir() else 0o600))


@pytest.fixture(params=["missing", "read-only", "corrupt"])
def broken_home(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """GENNAKER_HOME broken three ways for the test's duration."""
    home = tmp_path / "home"
    frozen: list[Path] = []
    if request.param == "missing":
        (tmp_path / "not-a-dir").write_text("")
        home = tmp_path / "not-a-dir" / "home"  # cannot be created: its parent is a file
    else:
        StateStore(home / "local" / "state.db").close()
        if request.param == "corrupt":
            (home / "local" / "state.db").write_bytes(b"\x13garbage, not a database\xff" * 64)
        else:
            frozen = [*sorted(home.rglob("*"), reverse=True), home]
            _immutable(frozen, True)
    previous = os.environ["GENNAKER_HOME"]
    os.environ["GENNAKER_HOME"] = str(home)
    try:
        yield home
    finally:
        os.environ["GENNAKER_HOME"] = previous
        if frozen:
            _immutable(frozen, False)


@pytest.mark.parametrize(("method", "path"), _routes())
def test_a_broken_home_is_503_without_paths(
    api: Api, service: Any, broken_home: Path, tmp_path: Path, method: str, path: str
) -> None:
    body: dict[str, Any] = {"capacity": {"min": 0, "max": 0, "desired": 0}} if path.endswith("resize") else {}
    json_body = body if method == "POST" else None
    r = api.client.request(method, f"{API}{path}", headers=api.headers("viewer"), json=json_body)
    assert r.status_code == 503, r.text
    answer = r.json()
    assert set(answer) == {"detail", "type", "hint"} and answer["type"] == "LocalStateUnavailable"
    assert "GENNAKER_HOME" in answer["hint"]
    assert str(tmp_path) not in r.text and "state.db" not in r.text and "/tmp" not in r.text


# --------------------------------------------------------------------------- 4. polling an operation


def test_an_operation_is_polled_only_under_its_own_application(
    api: Api, records: None, service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_records(api.home, "other", clusters=1, groups_per_cluster=1)
    provider = service.accounts.provider("local")
    op, _ = provider.store.claim_operation(
        IdempotencyKey(f"{APP}.deploy", "manual__op", "resize", "resize"),
        OperationKind.RESIZE_SERVER_GROUP,
        request={"server_group": GROUP},
    )
    assert not op.done
    polled: list[str] = []
    monkeypatch.setattr(provider, "operation", lambda op_id: polled.append(op_id) or op)

    r = api.get(f"/applications/other/operations/local/{op.id}")
    assert r.status_code == 404, r.text
    assert r.json()["detail"] == f"operation {op.id} not found for application other"
    assert polled == []  # nothing advanced it
    assert api.get(f"/applications/{APP}/operations/local/{op.id}", user="viewer").status_code == 200
    assert polled == []  # a reader sees it as recorded
    assert api.get(f"/applications/{APP}/operations/local/{op.id}").json()["status"] == OperationStatus.RUNNING.value
    assert polled == [op.id]  # who may act on the application moves it on, as the page's poller does


# --------------------------------------------------------------------------- 5. the canary report's team


def test_the_canary_report_asks_about_the_dags_team(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team
    from airflow.utils.session import create_session

    with create_session() as session:
        if session.get(Team, "team-h5") is None:
            bundle = DagBundleModel(name="gennaker-team-tests")
            bundle.teams = [Team(name="team-h5")]
            session.add(bundle)
    add_pipeline("teamed.canary", ["gennaker", "teamed"])
    with create_session() as session:
        from airflow.models.dag import DagModel

        session.get(DagModel, "teamed.canary").bundle_name = "gennaker-team-tests"

    manager = get_auth_manager()
    asked: list[Any] = []
    real = manager.is_authorized_dag

    def spy(**kwargs: Any) -> bool:
        asked.append(kwargs.get("details"))
        return bool(real(**kwargs))

    monkeypatch.setattr(manager, "is_authorized_dag", spy)
    r = api.client.get("/gennaker/canary/reports/teamed.canary/run1/canary", headers=api.headers("admin"))
    assert r.status_code == 404, r.text  # allowed; there is no report
    assert [(d.id, d.team_name) for d in asked] == [("teamed.canary", "team-h5")]


# --------------------------------------------------------------------------- 6. no third-party scripts


def test_no_docs_page_loads_a_third_party_script(api: Api) -> None:
    for page in ("/gennaker/docs", "/gennaker/redoc"):
        r = api.client.get(page)
        assert r.status_code == 404, page
        assert "cdn.jsdelivr.net" not in r.text
    assert api.client.get("/gennaker/openapi.json").json()["info"]["title"] == "gennaker Clusters API"


# --------------------------------------------------------------------------- 7. refused attempts in the audit trail


def test_a_request_that_does_not_validate_is_audited_without_its_values(api: Api, records: None) -> None:
    secret = "R" * 5000
    r = api.post(f"{BASE}/disable", {"reason": secret})
    assert r.status_code == 422
    entry = _latest_audit(api)
    assert (entry["status"], entry["httpStatus"]) == ("REFUSED", 422)
    assert (entry["action"], entry["user"]) == ("disable", "admin")
    assert entry["serverGroup"] == GROUP and entry["reason"] == "" and entry["parameters"] == {}
    assert "RRRR" not in json.dumps(entry) and "string_too_long" in entry["message"]

    r = api.post(f"{BASE}/resize", {"capacity": {"min": 0, "max": 10**9, "desired": 10**9}, "reason": secret})
    assert r.status_code == 422
    entry = _latest_audit(api)
    assert (entry["action"], entry["httpStatus"]) == ("resize", 422) and "RRRR" not in json.dumps(entry)
    assert "1000000000" not in json.dumps(entry)

    r = api.post(f"{BASE}/enable", {"x" * 3000: secret})  # an unknown field: its name is the caller's text too
    assert r.status_code == 422
    entry = _latest_audit(api)
    assert entry["action"] == "enable" and "xxxx" not in json.dumps(entry) and len(json.dumps(entry)) < 1000
    assert _enabled(api)


def test_an_over_long_name_is_audited_cut(api: Api, records: None) -> None:
    name = f"{APP}-s0-v001" + "9" * 400
    r = api.post(f"/applications/{APP}/serverGroups/local/local/{name}/enable", {"reason": "x"})
    assert r.status_code == 422
    entry = _latest_audit(api)
    assert entry["httpStatus"] == 422 and entry["reason"] == ""
    assert len(entry["serverGroup"]) <= 64 and entry["serverGroup"].endswith("…")


def test_a_forbidden_attempt_keeps_no_reason_or_parameters(api: Api, records: None) -> None:
    r = api.post(f"{BASE}/resize", {"capacity": {"min": 1, "max": 1, "desired": 1}, "reason": "viewer-text"}, "viewer")
    assert r.status_code == 403
    entry = _latest_audit(api)
    assert (entry["status"], entry["user"]) == ("FORBIDDEN", "viewer")
    assert entry["reason"] == "" and entry["parameters"] == {} and "viewer-text" not in json.dumps(entry)


def test_a_lock_that_cannot_be_given_back_does_not_hide_the_actions_own_error(tmp_path: Path) -> None:
    real = ClusterLocks(tmp_path / "locks.db")
    calls: list[str] = []

    def locks() -> ClusterLocks:
        calls.append("open")
        if len(calls) > 1:
            raise OSError("the home went away")
        return real

    action_locks = ActionLocks(locks)
    action_locks.take("a1", "alice", "local", "local", "hello-prod", timedelta(minutes=1), "enable on the page")
    action_locks.release("a1")  # logged, not raised: the lease frees it
    assert not action_locks.holds("a1")
    assert real.holder(cluster_resource("local", "local", "hello-prod")) is not None
