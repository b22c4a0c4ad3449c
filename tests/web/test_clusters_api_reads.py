"""The Clusters API's reads through Airflow's real API server: shapes, history, OpenAPI, no process started.

The server groups here are records only (``clusters_records.write_records``): nothing runs
for them, and reading them must not start anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clusters_helpers import T0, Api, add_pipeline, write_records
from fakecloud import FakeProvider

from gennaker.cloud.local.provider_reads import read_server_groups
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import Image, OperationKind, OperationStatus
from gennaker.cloud.provider import IdempotencyKey


def store(api: Api) -> StateStore:
    return StateStore(api.home / "local" / "state.db")


# --------------------------------------------------------------------------- applications and clusters


def test_applications_come_from_the_accounts_and_the_pipelines(api: Api, service: Any) -> None:
    write_records(api.home, "apps")
    add_pipeline("appspipe.deploy-prod", ["appspipe", "gennaker"])
    add_pipeline("appspipe.old", ["appspipe", "gennaker"], stale=True)
    add_pipeline("notours.etl", ["notours"])  # not a gennaker DAG

    body = api.ok("/applications")
    shown = {a["name"]: a for a in body["applications"]}
    assert shown["apps"] == {
        "name": "apps",
        "accounts": ["local"],
        "clusterCount": 2,
        "serverGroupCount": 6,
        "instanceCounts": {"up": 12, "down": 0, "starting": 0, "outOfService": 0, "unknown": 0, "total": 12},
        "pipelines": [],
        "permissions": {"read": True, "edit": True},
    }
    assert shown["appspipe"]["pipelines"] == [{"dagId": "appspipe.deploy-prod", "url": "/dags/appspipe.deploy-prod"}]
    assert shown["appspipe"]["serverGroupCount"] == 0
    assert "notours" not in shown
    assert body["accountErrors"] == []
    assert body["snapshotAt"]


def test_clusters_of_an_application(api: Api, service: Any) -> None:
    write_records(api.home, "shape", clusters=2, groups_per_cluster=3, instances_per_group=7)
    s = store(api)
    s.put_image(
        Image(
            id="img-records",
            name="hello-service-1.0.0",
            package="hello-service",
            version="1.0.0",
            base="python-3.11",
            region="local",
            account="local",
            inputs_hash="x",
        )
    )
    s.close()

    body = api.ok("/applications/shape/clusters")
    assert body["application"] == "shape"
    assert body["permissions"] == {"read": True, "edit": True}
    assert [c["name"] for c in body["clusters"]] == ["shape-s0", "shape-s1"]
    cluster = body["clusters"][0]
    assert cluster["account"] == "local" and cluster["stack"] == "s0" and cluster["regions"] == ["local"]
    assert cluster["enabledServerGroups"] == ["shape-s0-v002"]
    assert cluster["instanceCounts"] == {
        "up": 12,
        "down": 3,
        "starting": 3,
        "outOfService": 3,
        "unknown": 0,
        "total": 21,
    }
    newest, *_ = groups = cluster["serverGroups"]
    assert [g["name"] for g in groups] == ["shape-s0-v002", "shape-s0-v001", "shape-s0-v000"]  # newest first
    assert newest == {
        "name": "shape-s0-v002",
        "account": "local",
        "region": "local",
        "application": "shape",
        "cluster": "shape-s0",
        "stack": "s0",
        "detail": "",
        "sequence": 2,
        "image": {"id": "img-records", "name": "hello-service-1.0.0", "package": "hello-service", "version": "1.0.0"},
        "capacity": {"min": 7, "max": 7, "desired": 7},
        "instanceCounts": {"up": 4, "down": 1, "starting": 1, "outOfService": 1, "unknown": 0, "total": 7},
        "enabled": True,
        "disabledBy": None,
        "disabledAt": None,
        "destroying": False,
        "loadBalancers": ["shape-lb"],
        "firewalls": ["shape-fw"],
        "createdAt": "2026-01-01T00:02:00Z",
        "createdBy": {
            "dagId": "shape.deploy",
            "runId": "manual__2",
            "taskId": "deploy",
            "mapIndex": -1,
            "runUrl": "/dags/shape.deploy/runs/manual__2",
        },
    }
    assert [g["enabled"] for g in groups] == [True, False, False]

    one = api.ok("/applications/shape/clusters/local/shape-s1")
    assert one["cluster"]["name"] == "shape-s1" and len(one["cluster"]["serverGroups"]) == 3
    assert api.get("/applications/shape/clusters/local/shape-s9").status_code == 404
    assert api.get("/applications/shape/clusters/local/other-s0").status_code == 404  # another application's


def test_run_urls_are_escaped(api: Api, service: Any) -> None:
    from gennaker.web.views import run_url

    assert run_url("hello.deploy", "manual__2026-01-01T10:00:00+00:00") == (
        "/dags/hello.deploy/runs/manual__2026-01-01T10%3A00%3A00%2B00%3A00"
    )
    assert run_url("ui", "20260101T000000-abcd") is None


def test_one_server_group_with_instances_load_balancers_and_firewalls(api: Api, service: Any) -> None:
    write_records(api.home, "detail", instances_per_group=4)
    body = api.ok("/applications/detail/serverGroups/local/local/detail-s0-v002")
    assert body["serverGroup"]["name"] == "detail-s0-v002"
    assert body["instances"][3] == {
        "id": "i-detail-0-2-3",
        "address": "127.0.0.1:20003",
        "host": "127.0.0.1",
        "port": 20003,
        "zone": None,
        "health": "Down",
        "healthSince": "2026-01-01T00:00:00Z",
        "healthReason": "",
        "launchedAt": "2026-01-01T00:00:00Z",
        "restarts": 0,
    }
    [lb] = body["loadBalancers"]
    assert lb["name"] == "detail-lb" and lb["listeners"] == [{"port": 18080, "protocol": "HTTP", "targetPort": None}]
    served = {t["serverGroup"]: t["enabled"] for t in lb["serverGroups"]}
    assert served["detail-s0-v002"] is True and served["detail-s0-v000"] is False
    [fw] = body["firewalls"]
    assert fw["rules"] == [
        {"protocol": "tcp", "portFrom": 80, "portTo": 80, "cidr": "10.0.0.0/8", "sourceFirewall": None}
    ]
    assert "detail-s0-v002" in fw["serverGroups"]

    assert api.get("/applications/detail/serverGroups/local/local/detail-s0-v042").status_code == 404
    assert api.get("/applications/detail/serverGroups/local/elsewhere/detail-s0-v002").status_code == 404
    wrong_app = api.get("/applications/other/serverGroups/local/local/detail-s0-v002")
    assert wrong_app.status_code == 404 and wrong_app.json()["type"] == "NotFound"
    no_account = api.get("/applications/detail/serverGroups/nowhere/local/detail-s0-v002")
    assert no_account.status_code == 404
    assert no_account.json()["detail"] == "account 'nowhere' is not a gennaker account"


def test_load_balancers_and_firewalls_of_an_application(api: Api, service: Any) -> None:
    write_records(api.home, "edge")
    lbs = api.ok("/applications/edge/loadBalancers")
    assert [lb["name"] for lb in lbs["loadBalancers"]] == ["edge-lb"]
    assert lbs["loadBalancers"][0]["clusters"] == ["edge-s0"]
    fws = api.ok("/applications/edge/firewalls")
    assert [fw["name"] for fw in fws["firewalls"]] == ["edge-fw"]
    assert len(fws["firewalls"][0]["serverGroups"]) == 6


# --------------------------------------------------------------------------- history


def test_history_says_which_run_or_user_changed_which_group(api: Api, service: Any) -> None:
    """Derived from the recorded events and the idempotency keys of their operations."""
    write_records(api.home, "hist", clusters=1, groups_per_cluster=2)
    s = store(api)
    deploy = IdempotencyKey("hist.deploy", "manual__2026-01-02T00:00:00+00:00", "deploy", "deploy")
    op, _ = s.claim_operation(deploy, OperationKind.CREATE_SERVER_GROUP, request={"server_group": "hist-s0-v001"})
    s.update_operation(op.id, status=OperationStatus.SUCCEEDED, message="created hist-s0-v001")
    s.record_event("serverGroup.created", "hist-s0-v001", "created hist-s0-v001", account="local", key=deploy)
    s.record_event("serverGroup.disabled", "hist-s1-v000", "another cluster", account="local", key=deploy)
    s.record_event("serverGroup.disabled", "hist-s0-v000", "another account", account="guarded", key=deploy)
    s.record_event("supervisor.started", "hist-s0-v001", "not a change", account="local")
    audit = service.audit()
    from gennaker.web.models import AuditEntry

    audit.start(
        AuditEntry(
            id="20260102T000000-cafe0001",
            at=T0,
            user="alice",
            action="disable",
            application="hist",
            account="local",
            region="local",
            cluster="hist-s0",
            server_group="hist-s0-v000",
            instance_id=None,
            parameters={},
            reason="",
            status="SUCCEEDED",
            http_status=202,
            message="",
            operation_ids=[],
            finished_at=T0,
        )
    )
    click = IdempotencyKey("ui", "20260102T000000-cafe0001", "disable", "disable")
    s.record_event("serverGroup.disabled", "hist-s0-v000", "disabled hist-s0-v000", account="local", key=click)
    s.record_event(
        "instance.terminated",
        "i-hist-0-1-0",
        "terminated i-hist-0-1-0 of hist-s0-v001",
        account="local",
        key=IdempotencyKey("ui", "20260102T000000-cafe0001", "terminateInstance", "terminate"),
        data={"server_group": "hist-s0-v001"},
    )
    s.close()

    body = api.ok("/applications/hist/clusters/local/hist-s0/history")
    entries = body["entries"]
    assert [(e["event"], e["serverGroup"]) for e in entries] == [
        ("instanceTerminated", "hist-s0-v001"),
        ("disabled", "hist-s0-v000"),
        ("created", "hist-s0-v001"),
    ]
    terminated, disabled, created = entries
    assert terminated["instanceId"] == "i-hist-0-1-0"
    assert disabled["source"] == {
        "kind": "ui",
        "dagId": "ui",
        "runId": "20260102T000000-cafe0001",
        "taskId": "disable",
        "mapIndex": -1,
        "purpose": "disable",
        "runUrl": None,
        "actionId": "20260102T000000-cafe0001",
        "user": "alice",
    }
    assert created["source"]["kind"] == "pipeline"
    assert created["source"]["runUrl"] == "/dags/hist.deploy/runs/manual__2026-01-02T00%3A00%3A00%2B00%3A00"
    assert created["operation"]["id"] == op.id and created["operation"]["status"] == "SUCCEEDED"
    assert body["nextBefore"] is None

    api.conforms("/api/applications/{application}/clusters/{account}/{cluster}/history", "GET", 200, body)
    first = api.ok("/applications/hist/clusters/local/hist-s0/history?limit=2")
    assert [e["id"] for e in first["entries"]] == [entries[0]["id"], entries[1]["id"]]
    rest = api.ok(f"/applications/hist/clusters/local/hist-s0/history?limit=2&before={first['nextBefore']}")
    assert [e["id"] for e in rest["entries"]] == [entries[2]["id"]]


def test_a_provider_that_keeps_no_history_answers_501(api: Api, service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history route asks the account's provider; one without ``history()`` (the interface's default) is a 501."""

    class OtherCloud(FakeProvider):
        kind = "othercloud"

    other = OtherCloud(account="elsewhere")
    other.add_group("nohist-s0-v000")
    known = service.accounts.provider
    monkeypatch.setattr(service.accounts, "provider", lambda name: other if name == "elsewhere" else known(name))
    r = api.get("/applications/nohist/clusters/elsewhere/nohist-s0/history")
    assert r.status_code == 501, r.text
    assert r.json() == {
        "detail": "account elsewhere is a othercloud account: its history is not recorded here",
        "type": "Unsupported",
        "hint": "",
    }
    api.conforms("/api/applications/{application}/clusters/{account}/{cluster}/history", "GET", 501, r.json())


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_is_served_and_matches_the_responses(api: Api, service: Any) -> None:
    write_records(api.home, "spec", instances_per_group=1)
    r = api.client.get("/gennaker/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["info"]["title"] == "gennaker Clusters API"
    paths = spec["paths"]
    base = "/api/applications/{application}"
    assert set(paths) == {
        "/api/applications",
        f"{base}/clusters",
        f"{base}/clusters/{{account}}/{{cluster}}",
        f"{base}/clusters/{{account}}/{{cluster}}/history",
        f"{base}/clusters/{{account}}/{{cluster}}/rollback",
        f"{base}/serverGroups/{{account}}/{{region}}/{{serverGroup}}",
        f"{base}/serverGroups/{{account}}/{{region}}/{{serverGroup}}/resize",
        f"{base}/serverGroups/{{account}}/{{region}}/{{serverGroup}}/enable",
        f"{base}/serverGroups/{{account}}/{{region}}/{{serverGroup}}/disable",
        f"{base}/serverGroups/{{account}}/{{region}}/{{serverGroup}}/destroy",
        f"{base}/serverGroups/{{account}}/{{region}}/{{serverGroup}}/instances/{{instanceId}}/terminate",
        f"{base}/loadBalancers",
        f"{base}/firewalls",
        f"{base}/audit",
        f"{base}/operations/{{account}}/{{operationId}}",
    }
    schemas = spec["components"]["schemas"]
    assert "serverGroups" in schemas["ClusterView"]["properties"]  # camelCase in the document too
    assert "instanceCounts" in schemas["ServerGroupView"]["properties"]

    served = {
        "/api/applications": "/applications",
        f"{base}/clusters": "/applications/spec/clusters",
        f"{base}/clusters/{{account}}/{{cluster}}": "/applications/spec/clusters/local/spec-s0",
        f"{base}/clusters/{{account}}/{{cluster}}/history": "/applications/spec/clusters/local/spec-s0/history",
        f"{base}/serverGroups/{{account}}/{{region}}/{{serverGroup}}": (
            "/applications/spec/serverGroups/local/local/spec-s0-v000"
        ),
        f"{base}/loadBalancers": "/applications/spec/loadBalancers",
        f"{base}/firewalls": "/applications/spec/firewalls",
        f"{base}/audit": "/applications/spec/audit",
    }
    for template, path in served.items():
        api.conforms(template, "GET", 200, api.ok(path))
    refused = api.post("/applications/spec/serverGroups/local/local/spec-s0-v000/disable", user="viewer")
    api.conforms(f"{base}/serverGroups/{{account}}/{{region}}/{{serverGroup}}/disable", "POST", 403, refused.json())
    api.conforms(f"{base}/audit", "GET", 200, api.ok("/applications/spec/audit"))
    # No Swagger UI page: FastAPI's loads its script from a CDN (test_clusters_api_hardening.py).
    assert api.client.get("/gennaker/docs").status_code == 404


# --------------------------------------------------------------------------- reading starts nothing


def test_reading_starts_no_process(api: Api, service: Any) -> None:
    made = write_records(api.home, "quiet", clusters=1, groups_per_cluster=2, instances_per_group=1)
    for path in (
        "/applications",
        "/applications/quiet/clusters",
        "/applications/quiet/serverGroups/local/local/quiet-s0-v001",
        "/applications/quiet/loadBalancers",
        "/applications/quiet/clusters/local/quiet-s0/history",
    ):
        api.ok(path)
    run = api.home / "local" / "run"
    assert not (run.exists() and list(run.rglob("quiet-*")))  # no supervisor ever took a lock for them
    names = [group.name.encode() for group in made]
    running = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            running += [proc.name for name in names if name in cmdline]
    assert running == []


def test_the_bulk_read_gives_what_the_store_gives(api: Api, service: Any, tmp_path: Path) -> None:
    write_records(tmp_path, "bulk", clusters=2, groups_per_cluster=2, instances_per_group=3)
    write_records(tmp_path, "bulk", clusters=1, groups_per_cluster=1, account="other")
    s = StateStore(tmp_path / "local" / "state.db")
    try:
        assert [g.to_dict() for g in read_server_groups(s, "local")] == [
            g.to_dict() for g in s.list_server_groups(account="local")
        ]
        assert [g.name for g in read_server_groups(s, "other")] == ["bulk-s0-v000"]
    finally:
        s.close()


# --------------------------------------------------------------------------- the cache


def test_many_requests_read_the_account_once(api: Api, service: Any) -> None:
    write_records(api.home, "cached")
    before = service.cache.reads("local")
    for _ in range(20):
        api.ok("/applications/cached/clusters")
        api.ok("/applications/cached/serverGroups/local/local/cached-s0-v001")
    assert service.cache.reads("local") - before == 1

    write_records(api.home, "cached2")
    assert "cached2" not in {a["name"] for a in api.ok("/applications")["applications"]}  # within the TTL
    service.cache.invalidate("local")  # what an action does
    assert "cached2" in {a["name"] for a in api.ok("/applications")["applications"]}
    assert service.cache.reads("local") - before == 2


@pytest.mark.parametrize("limit", [1, 3])
def test_audit_pages(api: Api, service: Any, limit: int) -> None:
    write_records(api.home, f"pages{limit}", clusters=1, groups_per_cluster=1)
    for _ in range(3):
        r = api.post(f"/applications/pages{limit}/serverGroups/local/local/pages{limit}-s0-v000/enable", user="viewer")
        assert r.status_code == 403
    seen: list[str] = []
    times: list[str] = []
    before = ""
    while True:
        page = api.ok(f"/applications/pages{limit}/audit?limit={limit}{before}")
        seen += [e["id"] for e in page["entries"]]
        times += [e["at"] for e in page["entries"]]
        if page["nextBefore"] is None:
            break
        before = f"&before={page['nextBefore']}"
    assert len(seen) == 3 == len(set(seen))
    assert times == sorted(times, reverse=True)  # newest first
