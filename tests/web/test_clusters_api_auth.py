"""Who may read and act, through Airflow's real auth manager and JWTs; no cross-site action.

Users are the simple auth manager's: ``admin`` (role admin), ``viewer`` (role viewer: reads
everything, edits nothing) and ``deployer`` (role user: may edit DAGs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusters_helpers import API, Api, add_pipeline, write_records
from fastapi.routing import APIRoute

from gennaker.web.auth import Authorizer, PipelineIndex, application_of, read_pipelines

APP = "authz"
GROUP = f"{APP}-s0-v001"  # the enabled one of its cluster
PATH_VALUES = {
    "application": APP,
    "account": "local",
    "cluster": f"{APP}-s0",
    "region": "local",
    "serverGroup": GROUP,
    "instanceId": f"i-{APP}-0-1-0",
    "operationId": "op-none",
}
ACTION_BODIES = {
    "resize": {"capacity": {"min": 0, "max": 0, "desired": 0}},
    "rollback": {"target": "previous"},
    "terminate": {"decrement": True},
}


def _routes() -> list[tuple[str, str]]:
    from gennaker.web.app import router

    found = []
    for route in router.routes:
        assert isinstance(route, APIRoute)
        path = route.path.removeprefix("/api")
        for name, value in PATH_VALUES.items():
            path = path.replace(f"{{{name}}}", value)
        found += [(method, path) for method in sorted(route.methods)]
    return sorted(found)


ROUTES = _routes()
ACTIONS = [path for method, path in ROUTES if method == "POST"]
READS = [path for method, path in ROUTES if method == "GET"]


def _body(path: str) -> dict[str, Any]:
    return next((body for name, body in ACTION_BODIES.items() if path.endswith(name)), {"reason": "testing"})


@pytest.fixture
def records(api: Api, service: Any) -> Iterator[None]:
    """The authz application's records (two groups of one cluster); the client keeps no cookie."""
    api.client.cookies.clear()
    write_records(api.home, APP, clusters=1, groups_per_cluster=2, instances_per_group=1)
    yield
    api.client.cookies.clear()


def test_every_route_is_listed() -> None:
    assert len(ACTIONS) == 6 and len(READS) == 9


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_no_token_is_401(api: Api, records: None, method: str, path: str) -> None:
    r = api.client.request(method, f"{API}{path}", json=_body(path) if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.json()["detail"] == "Not authenticated"


def test_an_invalid_token_is_refused(api: Api, records: None) -> None:
    r = api.client.get(f"{API}/applications", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 403  # Airflow's answer to a token it cannot decode
    r = api.client.get(f"{API}/applications", cookies={"_token": "not-a-jwt"})
    assert r.status_code in (401, 403)


@pytest.mark.parametrize("path", READS)
def test_a_viewer_reads(api: Api, records: None, path: str) -> None:
    r = api.get(path, user="viewer")
    if "/operations/" in path:
        assert r.status_code == 404  # allowed to ask; there is no such operation
        return
    assert r.status_code == 200, r.text
    if "permissions" in r.json():
        assert r.json()["permissions"] == {"read": True, "edit": False}


@pytest.mark.parametrize("path", ACTIONS)
def test_a_viewer_may_not_act(api: Api, records: None, path: str) -> None:
    before = api.ok(f"/applications/{APP}/serverGroups/local/local/{GROUP}")["serverGroup"]
    r = api.post(path, _body(path), user="viewer")
    assert r.status_code == 403, r.text
    assert r.json()["type"] == "Forbidden"
    assert r.json()["detail"] == f"viewer may not act on application {APP}"
    [entry] = api.ok(f"/applications/{APP}/audit?limit=1")["entries"]
    assert entry["user"] == "viewer" and entry["status"] == "FORBIDDEN" and entry["httpStatus"] == 403
    assert path.endswith(entry["action"].replace("terminateInstance", "terminate"))
    assert entry["finishedAt"] is not None
    after = api.ok(f"/applications/{APP}/serverGroups/local/local/{GROUP}")["serverGroup"]
    assert after == before  # nothing changed


@pytest.mark.parametrize("user", ["deployer", "admin"])
def test_who_may_edit_dags_may_act(api: Api, records: None, user: str) -> None:
    body = api.ok(f"/applications/{APP}/clusters", user=user)
    assert body["permissions"] == {"read": True, "edit": True}
    r = api.post(f"/applications/{APP}/serverGroups/local/local/{APP}-s0-v042/disable", user=user)
    assert r.status_code == 404, r.text  # past the permission check: there is no such group
    [entry] = api.ok(f"/applications/{APP}/audit?limit=1")["entries"]
    assert (entry["user"], entry["status"], entry["httpStatus"]) == (user, "REFUSED", 404)


# ------------------------------------------------------------------ the session cookie and cross-site requests


def _cookie(api: Api) -> dict[str, str]:
    return {"_token": api.token("admin")}


def _audit_count(api: Api) -> int:
    return len(api.ok(f"/applications/{APP}/audit?limit=1000")["entries"])


def test_the_ui_session_cookie_authenticates(api: Api, records: None) -> None:
    r = api.client.get(f"{API}/applications/{APP}/clusters", cookies=_cookie(api))
    assert r.status_code == 200 and r.json()["permissions"]["edit"] is True
    viewer = api.client.get(f"{API}/applications/{APP}/clusters", cookies={"_token": api.token("viewer")})
    assert viewer.json()["permissions"] == {"read": True, "edit": False}


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://testserver"}, {"Referer": "http://testserver/plugin/clusters"}],
    ids=["origin", "referer"],
)
def test_a_same_origin_cookie_post_goes_through(api: Api, records: None, headers: dict[str, str]) -> None:
    missing = f"{API}/applications/{APP}/serverGroups/local/local/{APP}-s0-v042/enable"
    r = api.client.post(missing, json={}, cookies=_cookie(api), headers=headers)
    assert r.status_code == 404, r.text  # it reached the action: no such group


@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        ({}, "json", 403),
        ({"Origin": "https://evil.example"}, "json", 403),
        ({"Origin": "http://testserver.evil.example"}, "json", 403),
        ({"Origin": "null"}, "json", 403),
        ({"Referer": "https://evil.example/page"}, "json", 403),
        ({"Origin": "https://evil.example"}, "form", 415),
        ({"Origin": "http://testserver"}, "form", 415),
        ({"Origin": "https://evil.example"}, "text", 415),
    ],
    ids=["no-origin", "other-site", "lookalike", "null-origin", "other-referer", "form", "same-origin-form", "text"],
)
def test_cross_site_cookie_posts_are_refused(
    api: Api, records: None, headers: dict[str, str], content: str, status: int
) -> None:
    url = f"{API}/applications/{APP}/serverGroups/local/local/{GROUP}/disable"
    count = _audit_count(api)
    if content == "json":
        r = api.client.post(url, json={}, cookies=_cookie(api), headers=headers)
    elif content == "form":  # what an HTML <form method=post> on another site sends
        r = api.client.post(url, data={"reason": "csrf"}, cookies=_cookie(api), headers=headers)
    else:
        r = api.client.post(url, content=b"{}", cookies=_cookie(api), headers={**headers, "Content-Type": "text/plain"})
    assert r.status_code == status, r.text
    assert r.json()["type"] == "CrossSiteRequest"
    assert _audit_count(api) == count  # not even recorded
    assert api.ok(f"/applications/{APP}/serverGroups/local/local/{GROUP}")["serverGroup"]["enabled"] is True


def test_a_bearer_token_needs_a_json_body_but_no_origin(api: Api, records: None) -> None:
    url = f"{API}/applications/{APP}/serverGroups/local/local/{APP}-s0-v042/enable"
    form = api.client.post(url, data={"reason": "x"}, headers=api.headers("admin"))
    assert form.status_code == 415
    r = api.client.post(url, json={}, headers={**api.headers("admin"), "Origin": "https://elsewhere.example"})
    assert r.status_code == 404  # a script's request: no origin rule, it reaches the action


def test_unknown_fields_and_bad_capacities_are_422(api: Api, records: None) -> None:
    base = f"/applications/{APP}/serverGroups/local/local/{GROUP}"
    assert api.post(f"{base}/enable", {"reasn": "typo"}).status_code == 422
    bad = api.post(f"{base}/resize", {"capacity": {"min": 3, "max": 2, "desired": 2}})
    assert bad.status_code == 422 and "min <= desired <= max" in bad.text


# ------------------------------------------------------------------ applications -> pipelines -> DAG permissions


class RecordingAuthManager:
    """Answers is_authorized_dag from a table and records what it was asked."""

    def __init__(self, allowed: set[tuple[str, str | None]]) -> None:
        self.allowed = allowed
        self.asked: list[tuple[str, str | None, str | None]] = []

    def is_authorized_dag(self, *, method: str, user: Any, details: Any = None, access_entity: Any = None) -> bool:
        dag_id = None if details is None else details.id
        self.asked.append((method, dag_id, None if details is None else details.team_name))
        return (method, dag_id) in self.allowed


def test_application_of_a_dag() -> None:
    assert application_of("hello.deploy-prod", ["gennaker", "hello", "team-a"]) == "hello"
    assert application_of("my.app.deploy", ["gennaker", "my", "my.app"]) == "my.app"
    assert application_of("etl", ["gennaker", "etl"]) is None
    assert application_of("gennaker.x", ["gennaker"]) is None


def test_an_application_is_authorized_through_its_pipelines(api: Api, service: Any) -> None:
    add_pipeline("mapped.deploy", ["gennaker", "mapped"])
    add_pipeline("mapped.canary", ["gennaker", "mapped", "team-x"])
    add_pipeline("mapped.gone", ["gennaker", "mapped"], stale=True)
    assert [p.dag_id for p in read_pipelines()["mapped"]] == ["mapped.canary", "mapped.deploy"]

    authorizer = Authorizer(PipelineIndex(ttl=0))
    manager = RecordingAuthManager({("GET", "mapped.canary")})
    assert authorizer.allowed(object(), "mapped", "GET", manager) is True
    assert authorizer.allowed(object(), "mapped", "PUT", manager) is False
    assert {dag for method, dag, _ in manager.asked if method == "PUT"} == {"mapped.canary", "mapped.deploy"}

    manager = RecordingAuthManager({("PUT", None)})
    assert authorizer.allowed(object(), "nopipeline", "PUT", manager) is True  # all-DAGs permission
    assert manager.asked == [("PUT", None, None)]
    assert authorizer.allowed(object(), "nopipeline", "GET", manager) is False


# --------------------------------------------------------------------------- accounts


@pytest.fixture
def db_accounts(api: Api, service: Any, tmp_path: Path) -> Iterator[Path]:
    """Two gennaker_local connections in Airflow's database: one with its own home, one misconfigured."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    home = tmp_path / "dbacct-home"
    with create_session() as session:
        session.add(Connection(conn_id="dbacct", conn_type="gennaker_local", extra=json.dumps({"home": str(home)})))
        session.add(
            Connection(conn_id="brokenacct", conn_type="gennaker_local", extra=json.dumps({"traffic_guards": "[oops"}))
        )
        session.add(Connection(conn_id="notcloud", conn_type="http", host="example.com"))
    service.accounts.clear()
    yield home
    with create_session() as session:
        for conn_id in ("dbacct", "brokenacct", "notcloud"):
            session.query(Connection).filter(Connection.conn_id == conn_id).delete()
    service.accounts.clear()
    service.cache.clear()


def test_accounts_are_local_and_the_gennaker_local_connections(api: Api, db_accounts: Path) -> None:
    write_records(db_accounts, "multi", clusters=1, groups_per_cluster=1, account="dbacct")
    write_records(api.home, "multi", clusters=1, groups_per_cluster=1)
    from gennaker.web.app import get_app

    assert get_app().state.service.accounts.names() == ["local", "brokenacct", "dbacct", "guarded"]
    body = api.ok("/applications/multi/clusters")
    assert [(c["account"], c["name"]) for c in body["clusters"]] == [("local", "multi-s0"), ("dbacct", "multi-s0")]
    [error] = body["accountErrors"]
    assert error["account"] == "brokenacct" and error["status"] == 400 and "traffic_guards" in error["detail"]
    apps = {a["name"]: a for a in api.ok("/applications")["applications"]}
    assert apps["multi"]["accounts"] == ["local", "dbacct"]
    assert api.get("/applications/multi/clusters/notcloud/multi-s0").status_code == 404
