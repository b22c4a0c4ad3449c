"""Every action of the Clusters API on real local server groups: its effect, its audit entry, its history.

The demo service (``scripts/build-hello.sh``) is built and baked once for the module into
the session's ``GENNAKER_HOME``; each test deploys one-instance server groups of its own
application there as a pipeline would (an idempotency key of a DAG run), then acts through
Airflow's API server as ``admin``. Every process a test starts carries a mark in its
environment; teardown stops the supervisors and fails the test if anything is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from clusters_helpers import Api
from localcloud import bounded_to, build_hello, describe, marked_processes, wait_for

from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local.images import TOOLS_ENV
from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.model import BakeRequest, Capacity, Health, OperationStatus, ServerGroupSpec
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import NotFound

if not Path("/proc/self/environ").exists():  # pragma: no cover - leftovers are found through /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

PYTHON_BASE = f"python-{sys.version_info[0]}.{sys.version_info[1]}"
FAST_HEALTH = {"type": "http", "path": "/health", "interval": "0.2s", "timeout": "2s"}
GUARDED = "guarded"
TEST_SECONDS = 90
WAIT = 20.0


@pytest.fixture(scope="module")
def image(api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo service 1.0.0, baked once into the session's gennaker home."""
    previous = os.environ.get(TOOLS_ENV)
    os.environ[TOOLS_ENV] = str(tmp_path_factory.mktemp("bake-tools"))
    try:
        wheel = build_hello("1.0.0", tmp_path_factory.mktemp("hello-dist"))
        provider = LocalProvider("local", "local", home=api.home)
        request = BakeRequest(
            package="hello-service",
            version="1.0.0",
            artifact=str(wheel),
            application="web",
            base=PYTHON_BASE,
            account="local",
            region="local",
        )
        op = provider.bake(request, IdempotencyKey("web-tests", "bake", "bake", "bake"))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        provider.close()
        yield str(op.result["image_id"])
    finally:
        if previous is None:
            os.environ.pop(TOOLS_ENV, None)
        else:
            os.environ[TOOLS_ENV] = previous


@dataclass
class Cloud:
    """One test's application in the session's home, deployed as a pipeline would, and its processes."""

    api: Api
    image: str
    app: str
    mark: str
    runs: int = 0
    providers: dict[str, LocalProvider] = field(default_factory=dict)

    def provider(self, account: str = "local") -> LocalProvider:
        if account not in self.providers:
            guards = [f"{self.app}-guarded"] if account == GUARDED else []
            self.providers[account] = LocalProvider(account, "local", home=self.api.home, guarded_clusters=guards)
        return self.providers[account]

    def deploy(self, stack: str, *, account: str = "local", enabled: bool = True, count: int = 1) -> str:
        """The cluster's next server group, made by run manual__<n> of <app>.deploy; waits until it is Up."""
        self.runs += 1
        provider = self.provider(account)
        spec = ServerGroupSpec(
            application=self.app,
            stack=stack,
            account=account,
            region="local",
            image_id=self.image,
            capacity=Capacity.fixed(count),
            enabled=enabled,
            health_check=FAST_HEALTH,
        )
        key = IdempotencyKey(f"{self.app}.deploy", f"manual__{self.runs}", "deploy", "deploy")
        op = provider.create_server_group(spec, key)
        assert op.status is OperationStatus.SUCCEEDED, op.message
        name = str(op.result["server_group"])
        self.wait_up(name, count, account=account)
        return name

    def wait_up(self, name: str, count: int, *, account: str = "local") -> list[Any]:
        provider = self.provider(account)

        def up() -> list[Any] | None:
            instances = provider.instances(name)
            return instances if len(instances) == count and all(i.health is Health.UP for i in instances) else None

        return list(wait_for(f"{count} Up instance(s) of {name}", up, WAIT, every=0.1))

    def group(self, name: str, account: str = "local") -> Any:
        return self.provider(account).get_server_group(name)

    def path(self, name: str, account: str = "local") -> str:
        return f"/applications/{self.app}/serverGroups/{account}/local/{name}"

    def act(self, path: str, body: Any = None, status: int = 202) -> dict[str, Any]:
        r = self.api.post(path, body)
        assert r.status_code == status, f"POST {path}: {r.status_code} {r.text}"
        return dict(r.json())

    def finished(self, action_id: str, timeout: float = WAIT) -> dict[str, Any]:
        """The action's audit entry once it has ended."""

        def ended() -> dict[str, Any] | None:
            for entry in self.api.ok(f"/applications/{self.app}/audit")["entries"]:
                if entry["id"] == action_id and entry["status"] != "RUNNING":
                    return dict(entry)
            return None

        return dict(wait_for(f"action {action_id} to end", ended, timeout, every=0.1))

    def close(self) -> list[str]:
        problems = []
        for account in ("local", GUARDED):
            run_dir = self.api.home / "local" / "run" / account / "local"
            for alive in sorted(run_dir.glob(f"{self.app}-*.alive")):
                name = alive.name.removesuffix(".alive")
                try:
                    local_supervisor.stop(self.api.home, account, "local", name, timeout=15)
                except Exception as error:
                    problems.append(f"stopping the supervisor of {name}: {error!r}")
        for provider in self.providers.values():
            provider.close()
        deadline = time.monotonic() + 10
        left = marked_processes(self.mark)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = marked_processes(self.mark)
        if left:
            problems.append("left running: " + "; ".join(f"{pid} {describe(pid)}" for pid in left))
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return problems


@pytest.fixture
def cloud(api: Api, service: Any, image: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    mark = uuid.uuid4().hex
    monkeypatch.setenv("GENNAKER_TEST_MARK", mark)  # inherited by every supervisor and instance
    monkeypatch.setenv("GENNAKER_LOCAL_SUPERVISOR_INTERVAL", "0.2s")
    monkeypatch.setenv("GENNAKER_LOCAL_STOP_GRACE", "3s")
    cloud = Cloud(api, image, f"web{uuid.uuid4().hex[:6]}", mark)
    try:
        with bounded_to(TEST_SECONDS):
            yield cloud
    finally:
        problems = cloud.close()
    assert not problems, "\n".join(problems)


def _history(cloud: Cloud, cluster: str, account: str = "local") -> list[dict[str, Any]]:
    return list(cloud.api.ok(f"/applications/{cloud.app}/clusters/{account}/{cluster}/history")["entries"])


# --------------------------------------------------------------------------- enable, disable


def test_disable_then_enable(cloud: Cloud) -> None:
    name = cloud.deploy("a")
    cluster = f"{cloud.app}-a"
    assert cloud.api.ok(f"/applications/{cloud.app}/clusters")["clusters"][0]["enabledServerGroups"] == [name]

    body = cloud.act(f"{cloud.path(name)}/disable", {"reason": "bad canary"})
    group_path = "/api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}"
    cloud.api.conforms(f"{group_path}/disable", "POST", 202, body)
    action = body["action"]
    assert (action["action"], action["user"], action["serverGroup"], action["cluster"]) == (
        "disable",
        "admin",
        name,
        cluster,
    )
    assert action["reason"] == "bad canary"
    [op] = body["operations"]
    assert op["kind"] == "disableServerGroup" and op["serverGroup"] == name
    assert action["operationIds"] == [op["id"]]
    assert cloud.group(name).enabled is False
    assert cloud.group(name).disabled_by == "ui.disable"
    # our own action expired the cache: the next read shows it at once
    shown = cloud.api.ok(f"/applications/{cloud.app}/clusters")["clusters"][0]
    assert shown["enabledServerGroups"] == [] and shown["serverGroups"][0]["enabled"] is False
    assert cloud.finished(action["id"])["status"] == "SUCCEEDED"
    assert all(i.health is Health.UP for i in cloud.provider().instances(name))  # disabled, still running

    polled = cloud.api.ok(f"/applications/{cloud.app}/operations/local/{op['id']}")
    cloud.api.conforms("/api/applications/{application}/operations/{account}/{operationId}", "GET", 200, polled)
    assert polled["id"] == op["id"] and polled["done"] is True
    assert cloud.api.get(f"/applications/other/operations/local/{op['id']}").status_code == 404

    enabled = cloud.act(f"{cloud.path(name)}/enable")
    assert cloud.group(name).enabled is True
    assert cloud.finished(enabled["action"]["id"])["status"] == "SUCCEEDED"

    history = _history(cloud, cluster)
    assert [(e["event"], e["source"]["kind"], e["source"]["user"]) for e in history] == [
        ("enabled", "ui", "admin"),
        ("disabled", "ui", "admin"),
        ("created", "pipeline", None),
    ]
    assert history[2]["source"]["runUrl"] == f"/dags/{cloud.app}.deploy/runs/manual__1"
    assert history[1]["source"]["actionId"] == action["id"]


# --------------------------------------------------------------------------- resize, terminate


def test_resize(cloud: Cloud) -> None:
    name = cloud.deploy("r")
    body = cloud.act(f"{cloud.path(name)}/resize", {"capacity": {"min": 1, "max": 3, "desired": 2}})
    assert body["action"]["parameters"] == {"capacity": {"min": 1, "max": 3, "desired": 2}}
    assert body["operations"][0]["kind"] == "resizeServerGroup"
    assert cloud.group(name).capacity == Capacity(min=1, max=3, desired=2)
    cloud.wait_up(name, 2)
    assert cloud.finished(body["action"]["id"])["status"] == "SUCCEEDED"
    assert len(local_supervisor.instance_pids(cloud.api.home, "local", "local", name)) == 2

    def shown() -> dict[str, Any] | None:
        group = cloud.api.ok(f"/applications/{cloud.app}/clusters")["clusters"][0]["serverGroups"][0]
        return group if group["instanceCounts"]["up"] == 2 else None

    group = wait_for("the clusters view to show 2 Up instances", shown, WAIT)
    assert group["capacity"] == {"min": 1, "max": 3, "desired": 2}


def test_terminate_an_instance(cloud: Cloud) -> None:
    name = cloud.deploy("t")
    [old] = cloud.provider().instances(name)
    old_pid = local_supervisor.instance_pids(cloud.api.home, "local", "local", name)[old.id]
    body = cloud.act(f"{cloud.path(name)}/instances/{old.id}/terminate", {})
    assert body["action"]["instanceId"] == old.id and body["operations"][0]["kind"] == "terminateInstance"
    [new] = cloud.wait_up(name, 1)
    assert new.id != old.id
    wait_for(f"process {old_pid} to end", lambda: not Path(f"/proc/{old_pid}").exists() or _zombie(old_pid), WAIT)
    assert cloud.finished(body["action"]["id"])["status"] == "SUCCEEDED"
    [event] = [e for e in _history(cloud, f"{cloud.app}-t") if e["event"] == "instanceTerminated"]
    assert event["instanceId"] == old.id and event["source"]["user"] == "admin"

    missing = cloud.api.post(f"{cloud.path(name)}/instances/i-nope/terminate", {})
    assert missing.status_code == 404


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZXx"


# --------------------------------------------------------------------------- destroy


def test_destroy(cloud: Cloud) -> None:
    name = cloud.deploy("d")
    pids = list(local_supervisor.instance_pids(cloud.api.home, "local", "local", name).values())
    body = cloud.act(f"{cloud.path(name)}/destroy", {"reason": "cleanup"})
    assert body["operations"][0]["kind"] == "destroyServerGroup"
    assert cloud.finished(body["action"]["id"])["status"] == "SUCCEEDED"
    with pytest.raises(NotFound):
        cloud.group(name)
    assert local_supervisor.supervisor_pid(cloud.api.home, "local", "local", name) is None
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)
    assert cloud.api.ok(f"/applications/{cloud.app}/clusters")["clusters"] == []
    events = [(e["event"], (e["source"] or {}).get("user")) for e in _history(cloud, f"{cloud.app}-d")]
    assert events[0] == ("destroyed", "admin") and ("created", None) in events


# --------------------------------------------------------------------------- rollback


def test_rollback(cloud: Cloud) -> None:
    old = cloud.deploy("b")
    new = cloud.deploy("b")
    # the deploy of the new group disabled the old one, as a red/black deploy does (its instances keep running)
    op = cloud.provider().disable_server_group(old, IdempotencyKey(f"{cloud.app}.deploy", "manual__2", "deploy", "x"))
    assert op.done, op.message

    body = cloud.act(f"/applications/{cloud.app}/clusters/local/{cloud.app}-b/rollback", {"reason": "errors up"})
    action = body["action"]
    assert action["action"] == "rollback" and action["serverGroup"] == old and action["cluster"] == f"{cloud.app}-b"
    assert action["parameters"]["target"] == "previous"
    assert "enableServerGroup" in [o["kind"] for o in body["operations"]]
    done = cloud.finished(action["id"])
    assert done["status"] == "SUCCEEDED", done["message"]
    assert done["message"] == f"rolled back {cloud.app}-b from {new} to {old}"
    assert (cloud.group(old).enabled, cloud.group(new).enabled) == (True, False)

    history = _history(cloud, f"{cloud.app}-b")
    ui = [(e["event"], e["serverGroup"], e["source"]["purpose"]) for e in history if e["source"]["kind"] == "ui"]
    assert ui == [("disabled", new, f"rollback-disable-{new}"), ("enabled", old, "rollback-enable")]

    nothing_older = cloud.api.post(f"/applications/{cloud.app}/clusters/local/{cloud.app}-b/rollback", {"target": new})
    assert nothing_older.status_code == 400 and "nothing to roll back to" in nothing_older.json()["detail"]
    entry = cloud.api.ok(f"/applications/{cloud.app}/audit?limit=1")["entries"][0]
    assert (entry["status"], entry["httpStatus"]) == ("REFUSED", 400)


def test_rollback_of_a_cluster_with_one_group_is_refused(cloud: Cloud) -> None:
    cloud.deploy("one")
    r = cloud.api.post(f"/applications/{cloud.app}/clusters/local/{cloud.app}-one/rollback", {})
    assert r.status_code == 404
    assert (
        r.json()["detail"]
        == f"cluster {cloud.app}-one has no previous server group: {cloud.app}-one-v000 is its only one"
    )


# --------------------------------------------------------------------------- traffic guards


def test_traffic_guards_refuse_with_409(cloud: Cloud) -> None:
    """The guarded account's last serving group: the provider's guard refuses the click as it refuses a stage."""
    cloud.app = "webguard"  # the connection guards webguard-guarded (tests/web/conftest.py)
    name = cloud.deploy("guarded", account=GUARDED)
    [instance] = cloud.provider(GUARDED).instances(name)
    path = cloud.path(name, GUARDED)
    attempts = {
        "disable": (f"{path}/disable", {}),
        "destroy": (f"{path}/destroy", {}),
        "resize": (f"{path}/resize", {"capacity": {"min": 0, "max": 1, "desired": 0}}),
        "terminateInstance": (f"{path}/instances/{instance.id}/terminate", {"decrement": True}),
    }
    for action, (url, body) in attempts.items():
        r = cloud.api.post(url, body)
        assert r.status_code == 409, f"{action}: {r.status_code} {r.text}"
        error = r.json()
        cloud.api.conforms(
            "/api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}/disable", "POST", 409, error
        )
        assert error["type"] == "TrafficGuardViolation"
        assert f"guarded cluster {cloud.app}-guarded" in error["detail"]
        entry = cloud.api.ok(f"/applications/{cloud.app}/audit?limit=1")["entries"][0]
        assert (entry["action"], entry["status"], entry["httpStatus"]) == (action, "REFUSED", 409)
        assert "traffic" in entry["message"] or "guarded" in entry["message"]
    group = cloud.group(name, GUARDED)
    assert group.enabled and group.capacity.desired == 1
    assert [i.id for i in cloud.provider(GUARDED).instances(name)] == [instance.id]
