"""Server-group stages on the real Airflow against the local provider, with live traffic.

The test process sets up the cloud (through :class:`LocalProvider`, in the session's
``GENNAKER_HOME``, the one the Airflow processes use): the demo service 1.0.0 and 2.0.0 built
with ``scripts/build-hello.sh`` and baked, a load balancer, and the server groups. The pipelines
(``pipelines/server-groups.yaml`` and ``pipelines/guarded-disable.yaml``) run through the REST
API while two client threads send requests to the load balancer.

Every process the test's provider starts (supervisors, instances, proxies) inherits a mark in its
environment; teardown stops the supervisors and proxies as an operator would
(``local_supervisor.stop``, ``local_proxy.stop``), then kills whatever still carries the mark or
runs from the home, and fails the test if anything was left.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from localcloud import bounded_to, build_hello, describe, free_port, marked_processes, wait_for

from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local.images import TOOLS_ENV
from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import (
    BakeRequest,
    Capacity,
    Health,
    Listener,
    LoadBalancer,
    OperationStatus,
    ServerGroupSpec,
)
from gennaker.cloud.provider import IdempotencyKey

from .conftest import ARTIFACTS, GUARDED_ACCOUNT, GUARDED_CLUSTER, Airflow

pytestmark = pytest.mark.integration

if not Path("/proc/self/environ").exists():  # pragma: no cover - leftovers are found through /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

ACCOUNT = REGION = "local"
PYTHON_BASE = f"python-{sys.version_info[0]}.{sys.version_info[1]}"
FAST_HEALTH = {"type": "http", "path": "/health", "interval": "0.2s", "timeout": "2s"}
RELEASES = {"v1": "1.0.0", "v2": "2.0.0"}
PIPELINE = "hello.server-groups"
GUARDED_PIPELINE = "hello.guarded-disable"
STAGES = ["resize", "enable", "disable", "find", "rollback"]
TEST_SECONDS = 300
LOAD_LIMIT = 200.0  # the request loop stops by itself after this long
WAIT = 30.0


# --------------------------------------------------------------------------- waiting and bounding


# --------------------------------------------------------------------------- bounding


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test that runs longer than TEST_SECONDS (teardown still cleans up)."""
    with bounded_to(TEST_SECONDS):
        yield


# --------------------------------------------------------------------------- processes


# --------------------------------------------------------------------------- HTTP load


@dataclass
class Sample:
    sent: float  # time.time(), to compare with Airflow's task start and end dates
    error: str
    version: str | None
    group: str | None


def get_version(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], bytes]:
    conn.request("GET", "/version")
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


@dataclass
class Load:
    """``threads`` keep-alive clients sending GET /version in a loop until stopped (at most ``limit`` s)."""

    port: int
    threads: int = 2
    limit: float = LOAD_LIMIT
    pause: float = 0.01  # between two requests of one thread
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._workers = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.threads)]

    def _loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        stop_at = time.monotonic() + self.limit
        try:
            while not self._done.is_set() and time.monotonic() < stop_at:
                sent = time.time()
                version = group = None
                try:
                    status, headers, body = get_version(conn)
                    error = "" if status == 200 else f"HTTP {status}: {body[:200]!r}"
                    group = headers.get("x-gennaker-server-group")
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        version = str(json.loads(body)["version"])
                except Exception as exc:  # a failed request, counted
                    error = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                with self._lock:
                    self.samples.append(Sample(sent, error, version, group))
                time.sleep(self.pause)
        finally:
            conn.close()

    def __enter__(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for worker in self._workers:
            worker.join(timeout=15)
        assert not any(worker.is_alive() for worker in self._workers), "a client thread hung"

    def sorted(self) -> list[Sample]:
        with self._lock:
            return sorted(self.samples, key=lambda s: s.sent)


# --------------------------------------------------------------------------- the cloud


@pytest.fixture(scope="module")
def cloud_env(airflow: Airflow, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test process's environment for the provider (inherited by what it starts); the mark."""
    mark = uuid.uuid4().hex
    wanted = {
        "GENNAKER_HOME": str(airflow.gennaker_home),
        "GENNAKER_TEST_MARK": mark,
        "GENNAKER_LOCAL_SUPERVISOR_INTERVAL": "0.2s",
        "GENNAKER_LOCAL_STOP_GRACE": "3s",
        TOOLS_ENV: str(tmp_path_factory.mktemp("bake-tools")),
    }
    previous = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield mark
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def images(airflow: Airflow, cloud_env: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """1.0.0 and 2.0.0 of the demo service, baked into the session's home (account local): image ids."""
    out = tmp_path_factory.mktemp("hello-dist")
    provider = LocalProvider(ACCOUNT, REGION, home=airflow.gennaker_home)
    try:
        result = {}
        for name, version in RELEASES.items():
            request = BakeRequest(
                package="hello-service",
                version=version,
                artifact=str(build_hello(version, out)),
                application="hello",
                base=PYTHON_BASE,
                account=ACCOUNT,
                region=REGION,
            )
            op = provider.bake(request, IdempotencyKey("test_server_group_stages", "setup", "bake", name))
            assert op.status is OperationStatus.SUCCEEDED, op.message
            result[name] = str(op.result["image_id"])
        return result
    finally:
        provider.close()


class Cloud:
    """Drives LocalProviders in the session's home; ``close`` stops every process they started."""

    def __init__(self, home: Path, mark: str) -> None:
        self.home = home
        self.mark = mark
        self.run = uuid.uuid4().hex[:8]
        self.providers: list[LocalProvider] = []

    def provider(self, account: str = ACCOUNT, **options: Any) -> LocalProvider:
        provider = LocalProvider(account, REGION, home=self.home, **options)
        self.providers.append(provider)
        return provider

    def key(self, purpose: str) -> IdempotencyKey:
        return IdempotencyKey("test_server_group_stages", f"run-{self.run}", "setup", purpose)

    def load_balancer(self, provider: LocalProvider, name: str) -> int:
        """Upsert a load balancer on a free port; the port."""
        for _ in range(3):
            port = free_port()
            lb = LoadBalancer(
                name=name,
                application="hello",
                account=provider.account,
                region=REGION,
                listeners=(Listener(port=port),),
            )
            try:
                op = provider.upsert_load_balancer(lb, self.key(f"lb-{name}-{port}"))
            except local_proxy.ListenerPortInUse:
                continue  # another program took the port we picked: pick again
            assert op.status is OperationStatus.SUCCEEDED, op.message
            return port
        raise AssertionError(f"no free port for load balancer {name}")

    def create(
        self, provider: LocalProvider, image_id: str, *, stack: str, count: int, lb: str, enabled: bool = True
    ) -> str:
        spec = ServerGroupSpec(
            application="hello",
            stack=stack,
            account=provider.account,
            region=REGION,
            image_id=image_id,
            capacity=Capacity.fixed(count),
            load_balancers=(lb,),
            health_check=FAST_HEALTH,
            enabled=enabled,
        )
        op = provider.create_server_group(spec, self.key(f"create-{stack}-{image_id}"))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        return str(op.result["server_group"])

    def wait_up(self, provider: LocalProvider, name: str, count: int) -> None:
        def up() -> bool:
            instances = provider.instances(name)
            return len(instances) == count and all(i.health is Health.UP for i in instances)

        wait_for(f"{count} Up instance(s) of {name}", up, timeout=WAIT, every=0.1)

    def wait_serving(self, port: int, version: str) -> None:
        def answers() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                status, _, body = get_version(conn)
                return status == 200 and json.loads(body)["version"] == version
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                return False
            finally:
                conn.close()

        wait_for(f"the load balancer on port {port} to serve {version}", answers, timeout=WAIT, every=0.1)

    def close(self) -> list[str]:
        """Stop every supervisor and proxy of the home; kill and report whatever is left."""
        problems: list[str] = []
        for alive in sorted((self.home / "local" / "run").glob("*/*/*.alive")):
            account, region, group = alive.parent.parent.name, alive.parent.name, alive.name.removesuffix(".alive")
            try:
                local_supervisor.stop(self.home, account, region, group, timeout=15)
            except Exception as error:  # reported; the kill below still runs
                problems.append(f"stopping the supervisor of {group}: {error!r}")
        state = self.home / "local" / "state.db"
        store = StateStore(state) if state.exists() else None
        for lb in store.list_load_balancers() if store else []:
            try:
                local_proxy.stop(store, self.home, lb.account, lb.region, lb.name, timeout=10)
            except Exception as error:
                problems.append(f"stopping the proxy of {lb.name}: {error!r}")
        if store is not None:
            store.close()
        for provider in self.providers:
            provider.close()
        deadline = time.monotonic() + 10
        while (left := marked_processes(self.mark, started_from=self.home)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            problems.append("left running: " + "; ".join(f"{pid} {describe(pid)}" for pid in left))
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return problems


@pytest.fixture
def cloud(airflow: Airflow, cloud_env: str) -> Iterator[Cloud]:
    lab = Cloud(airflow.gennaker_home, cloud_env)
    try:
        yield lab
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # the cleanup runs to its end
        problems = lab.close()
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- helpers


def _at(moment: datetime | None) -> float:
    assert moment is not None
    return moment.timestamp()


def _log(airflow: Airflow, dag_id: str, run_id: str, task_id: str) -> str:
    return "\n".join(airflow.task_log(dag_id, run_id, task_id))


def _runs_of(versions: list[str | None], version: str) -> int:
    """The longest stretch of consecutive answers of ``version``."""
    best = current = 0
    for v in versions:
        current = current + 1 if v == version else 0
        best = max(best, current)
    return best


# --------------------------------------------------------------------------- 1. the pipeline


def test_server_group_stages_move_traffic_without_a_failed_request(
    alive: Airflow, cloud: Cloud, images: dict[str, str]
) -> None:
    provider = cloud.provider()
    port = cloud.load_balancer(provider, "hello-it")
    old = cloud.create(provider, images["v1"], stack="it", count=2, lb="hello-it")
    new = cloud.create(provider, images["v2"], stack="it", count=1, lb="hello-it", enabled=False)
    assert (old, new) == ("hello-it-v000", "hello-it-v001")
    cloud.wait_up(provider, old, 2)
    cloud.wait_up(provider, new, 1)
    cloud.wait_serving(port, "1.0.0")
    alive.unpause(PIPELINE)

    with Load(port) as load:
        time.sleep(1.0)  # some answers from before the run
        run_id = alive.trigger(PIPELINE)
        state = alive.wait_for_run(PIPELINE, run_id, timeout=240)
        time.sleep(2.0)  # and some after it
    samples = load.sorted()
    tis = alive.task_instances(PIPELINE, run_id)
    logs = {task: _log(alive, PIPELINE, run_id, task) for task in STAGES}
    assert state == "success", {t: (ti.state, logs[t][-2000:]) for t, ti in tis.items()}
    assert {t: ti.state for t, ti in tis.items()} == dict.fromkeys(STAGES, "success")

    # Not one request failed, and the version served went 1.0.0 -> 2.0.0 -> 1.0.0.
    failed = [s for s in samples if s.error]
    assert not failed, f"{len(failed)} of {len(samples)} requests failed, e.g. {failed[:5]}"
    assert len(samples) > 50
    versions = [s.version for s in samples]
    assert set(versions) == {"1.0.0", "2.0.0"}
    assert versions[0] == "1.0.0" and versions[-1] == "1.0.0"
    enable_start = _at(tis["enable"].start)
    disable_end = _at(tis["disable"].end)
    rollback_start, rollback_end = _at(tis["rollback"].start), _at(tis["rollback"].end)
    before = [s.version for s in samples if s.sent < enable_start]
    only_new = [s.version for s in samples if disable_end <= s.sent < rollback_start]
    after = [s.version for s in samples if s.sent >= rollback_end]
    assert before and set(before) == {"1.0.0"}, "2.0.0 served before enableServerGroup started"
    assert only_new and set(only_new) == {"2.0.0"}, "1.0.0 served between the disable and the rollback"
    assert after and set(after) == {"1.0.0"}, "2.0.0 served after the rollback"
    assert _runs_of(versions, "2.0.0") >= len(only_new)
    first_new = versions.index("2.0.0")
    last_new = len(versions) - 1 - versions[::-1].index("2.0.0")
    assert set(versions[:first_new]) == {"1.0.0"} and set(versions[last_new + 1 :]) == {"1.0.0"}
    assert {s.group for s in samples if s.version == "2.0.0"} == {new}
    assert {s.group for s in samples if s.version == "1.0.0"} == {old}

    # What each stage reports.
    common = {"cluster": "hello-it", "account": ACCOUNT, "region": REGION}
    two = {"min": 2, "max": 2, "desired": 2}
    assert alive.xcom(PIPELINE, run_id, "resize") == {
        "serverGroup": new,
        **common,
        "capacity": two,
        "previousCapacity": {"min": 1, "max": 1, "desired": 1},
    }
    assert alive.xcom(PIPELINE, run_id, "enable") == {"serverGroup": new, **common, "capacity": two, "enabled": True}
    assert alive.xcom(PIPELINE, run_id, "disable") == {
        "serverGroup": old,
        **common,
        "capacity": two,
        "enabled": False,
        "serving": [new],
    }
    found = alive.xcom(PIPELINE, run_id, "find")
    # The newest image of the package: 2.0.0 of this module, unless an earlier test module baked a newer one.
    (newest, *_) = provider.find_images(package="hello-service")
    assert (found["imageId"], found["package"], found["version"]) == (newest.id, "hello-service", newest.version)
    assert found["images"] == {REGION: newest.id}
    assert alive.xcom(PIPELINE, run_id, "rollback") == {
        "serverGroup": old,
        **common,
        "capacity": two,
        "previous": new,
        "disabled": [new],
    }

    # Health in plain words, in the stages' logs.
    assert f"{new}: 2/2 instances healthy" in logs["resize"], logs["resize"][-3000:]
    assert f"resized {new} to 2 instances" in logs["resize"]
    assert f"{new}: 2/2 instances healthy" in logs["enable"], logs["enable"][-3000:]
    assert f"disabled {old} (traffic now on {new})" in logs["disable"]
    assert f"found hello-service {newest.version} (image {newest.id})" in logs["find"]
    assert f"{old}: 2/2 instances healthy" in logs["rollback"], logs["rollback"][-3000:]
    assert f"rolled back hello-it from {new} to {old}" in logs["rollback"]

    # A wait that ends within GENNAKER_INLINE_WAIT (5 s) is polled in the worker; a longer one is deferred to
    # the triggerer (no worker slot held) and the task resumes from it. The local instances here are Up within
    # a second or two, so most waits end in the worker; whichever way each went, the log says so, and a
    # deferred one left the trigger's log next to the task's (ARTIFACTS/tasks/...; named by the trigger's id,
    # which SQLite may reuse, so a task's later trigger can overwrite its earlier one's). test_deploy's
    # never-healthy deploy always waits in the triggerer.
    for task in ("resize", "enable", "disable", "rollback"):
        if "Pausing task as DEFERRED" not in logs[task]:
            continue
        assert "(in the triggerer, no worker slot held)" in logs[task], logs[task][-3000:]
        folder = ARTIFACTS / "tasks" / f"dag_id={PIPELINE}" / f"run_id={run_id}" / f"task_id={task}"
        triggered = "\n".join(f.read_text(errors="replace") for f in folder.glob("attempt=1.log.trigger.*"))
        assert "Trigger fired event" in triggered, f"no log of a trigger of {task} that fired, in {folder}"
    assert "Pausing task as DEFERRED" not in logs["find"]

    # The cloud agrees.
    groups = {g.name: g for g in provider.list_server_groups("hello", cluster="hello-it")}
    assert (groups[old].enabled, groups[new].enabled) == (True, False)
    assert (groups[old].capacity.desired, groups[new].capacity.desired) == (2, 2)


# --------------------------------------------------------------------------- 2. the traffic guard


def test_disabling_the_last_group_of_a_guarded_cluster_fails_and_it_keeps_serving(
    alive: Airflow, cloud: Cloud, images: dict[str, str]
) -> None:
    provider = cloud.provider(GUARDED_ACCOUNT, guarded_clusters=[GUARDED_CLUSTER])
    port = cloud.load_balancer(provider, GUARDED_CLUSTER)
    stack = GUARDED_CLUSTER.removeprefix("hello-")
    group = cloud.create(provider, images["v1"], stack=stack, count=1, lb=GUARDED_CLUSTER)
    assert group == f"{GUARDED_CLUSTER}-v000"
    cloud.wait_up(provider, group, 1)
    cloud.wait_serving(port, "1.0.0")
    alive.unpause(GUARDED_PIPELINE)

    with Load(port) as load:
        run_id = alive.trigger(GUARDED_PIPELINE)
        state = alive.wait_for_run(GUARDED_PIPELINE, run_id)
        time.sleep(1.0)
    samples = load.sorted()
    assert state == "failed"
    tis = alive.task_instances(GUARDED_PIPELINE, run_id)
    assert tis["disable"].state == "failed"
    assert tis["disable"].try_number == 1, "a traffic guard is not a failure a retry can fix"
    log = _log(alive, GUARDED_PIPELINE, run_id, "disable")
    assert f"cannot disable {group}: the traffic guard refused" in log, log[-3000:]
    assert f"would leave the guarded cluster {GUARDED_CLUSTER} without an enabled server group" in log

    failed = [s for s in samples if s.error]
    assert samples and not failed, f"{len(failed)} of {len(samples)} requests failed, e.g. {failed[:5]}"
    assert {s.version for s in samples} == {"1.0.0"}
    assert provider.get_server_group(group).enabled is True
    cloud.wait_serving(port, "1.0.0")
