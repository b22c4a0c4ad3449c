"""LocalProvider end to end: real bakes, real supervised processes, real HTTP through the local proxy.

The demo service is built once per module with ``scripts/build-hello.sh`` (1.0.0, 2.0.0, and a
bad 1.1.0 with 20 ms latency and a 50% error rate) and baked once into a module home. Each
test gets its own gennaker home; its images are that module bake's directories copied in,
which the provider's ``bake`` adopts (same inputs, same image id) instead of baking again
(the bake test itself bakes for real).

Every process the provider starts (supervisors, instances, proxies) inherits a mark in its
environment. Teardown stops the supervisors and proxies the way an operator would
(``local_supervisor.stop``, ``local_proxy.stop``), then looks for anything still carrying
the mark: it is killed, and the test fails. Each test is bounded by a SIGALRM timer.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from localcloud import bounded_to, build_hello, describe, free_port, marked_processes, proc_running, wait_for

from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local.images import TOOLS_ENV, bake, images_root
from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.local.proxy import ListenerPortInUse
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import (
    BakeRequest,
    Capacity,
    Health,
    Listener,
    LoadBalancer,
    Operation,
    OperationKind,
    OperationStatus,
    ServerGroup,
    ServerGroupSpec,
)
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import IdempotencyConflict, InvalidRequest, NotFound, TrafficGuardViolation

if not Path("/proc/self/environ").exists():  # pragma: no cover - leftovers are found through /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

REPO = Path(__file__).resolve().parents[3]
ACCOUNT = REGION = "local"
LB = "hello-test"
PYTHON_BASE = f"python-{sys.version_info[0]}.{sys.version_info[1]}"
FAST_HEALTH = {"type": "http", "path": "/health", "interval": "0.2s", "timeout": "2s"}
TEST_SECONDS = 90
WAIT = 20.0
RELEASES = {
    "v1": ("1.0.0", ()),
    "v2": ("2.0.0", ()),
    "bad": ("1.1.0", ("--latency-ms", "20", "--error-rate", "0.5")),
}


# --------------------------------------------------------------------------- waiting and bounding


# --------------------------------------------------------------------------- bounding


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test that runs longer than TEST_SECONDS (teardown still cleans up)."""
    with bounded_to(TEST_SECONDS):
        yield


# --------------------------------------------------------------------------- processes


# --------------------------------------------------------------------------- the demo service


def hello_request(artifact: Path | str, version: str, **fields: Any) -> BakeRequest:
    return BakeRequest(
        package="hello-service",
        version=version,
        artifact=str(artifact),
        application="hello",
        base=PYTHON_BASE,
        account=ACCOUNT,
        region=REGION,
        **fields,
    )


@pytest.fixture(scope="module")
def shared_pip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One unpacked pip for every bake of the module (each bake's first pip run would compile it)."""
    previous = os.environ.get(TOOLS_ENV)
    os.environ[TOOLS_ENV] = str(tmp_path_factory.mktemp("bake-tools"))
    yield
    if previous is None:
        os.environ.pop(TOOLS_ENV, None)
    else:
        os.environ[TOOLS_ENV] = previous


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hello-dist")
    return {name: build_hello(version, out, *options) for name, (version, options) in RELEASES.items()}


@dataclass(frozen=True)
class Baked:
    request: BakeRequest
    image_id: str
    directory: Path


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path], shared_pip: None) -> dict[str, Baked]:
    """Every release baked once, in a home of the module's."""
    home = tmp_path_factory.mktemp("baked-home")
    store = StateStore(home / "local" / "state.db")
    try:
        result = {}
        for name, (version, _) in RELEASES.items():
            request = hello_request(wheels[name], version)
            image = bake(store, request, home=home)
            result[name] = Baked(request, image.id, images_root(home) / image.id)
        return result
    finally:
        store.close()


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    @property
    def version(self) -> str | None:
        try:
            return str(json.loads(self.body)["version"])
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def group(self) -> str | None:
        return self.headers.get("x-gennaker-server-group")


class Client:
    """A keep-alive HTTP/1.1 client of one port of 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str = "/version") -> Reply:
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
            body = response.read()
        except Exception:
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            raise
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Sample:
    sent: float
    answered: float
    error: str
    version: str | None


@dataclass
class Load:
    """``threads`` clients sending GET /version in a loop until stopped (at most ``limit`` s)."""

    port: int
    threads: int = 3
    limit: float = 12.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._workers = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.threads)]

    def _loop(self) -> None:
        client = Client(self.port)
        stop_at = time.monotonic() + self.limit
        try:
            while not self._done.is_set() and time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    reply = client.get("/version")
                    error = "" if reply.status == 200 else f"HTTP {reply.status}: {reply.text[:200]}"
                    version = reply.version
                except Exception as exc:  # a failed request, counted
                    error, version = f"{type(exc).__name__}: {exc}", None
                with self._lock:
                    self.samples.append(Sample(sent, time.monotonic(), error, version))
        finally:
            client.close()

    def __enter__(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for worker in self._workers:
            worker.join(timeout=15)
        assert not any(worker.is_alive() for worker in self._workers), "a client thread hung"

    def since(self, moment: float) -> list[Sample]:
        with self._lock:
            return [sample for sample in self.samples if sample.sent >= moment]


# --------------------------------------------------------------------------- the lab


class Lab:
    """A gennaker home for one test, with helpers to drive a LocalProvider in it."""

    def __init__(self, tmp_path: Path, baked: dict[str, Baked], mark: str) -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "gennaker"
        self.baked = baked
        self.mark = mark
        self.run = uuid.uuid4().hex[:8]
        self.port = free_port()
        self.providers: list[LocalProvider] = []
        self.balancers: set[str] = set()

    # ----------------------------------------------------------- provider and requests

    def provider(self, **options: Any) -> LocalProvider:
        provider = LocalProvider(ACCOUNT, REGION, home=self.home, **options)
        self.providers.append(provider)
        return provider

    def key(self, purpose: str) -> IdempotencyKey:
        return IdempotencyKey("test_provider_local", f"run-{self.run}", "task", purpose)

    def image(self, provider: LocalProvider, release: str) -> str:
        """The release's image in this home: the module's bake, adopted by ``provider.bake``."""
        made = self.baked[release]
        shutil.copytree(made.directory, images_root(self.home) / made.image_id, symlinks=True)
        op = provider.bake(made.request, self.key(f"bake-{release}"))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        assert op.result["image_id"] == made.image_id
        return made.image_id

    def load_balancer(self, provider: LocalProvider, **fields: Any) -> LoadBalancer:
        lb = LoadBalancer(
            name=fields.pop("name", LB),
            application="hello",
            account=ACCOUNT,
            region=REGION,
            listeners=fields.pop("listeners", (Listener(port=self.port),)),
            **fields,
        )
        self.balancers.add(lb.name)
        key = self.key(f"lb-{uuid.uuid4().hex[:6]}")
        try:
            op = provider.upsert_load_balancer(lb, key)
        except ListenerPortInUse:
            if lb.listeners != (Listener(port=self.port),) or provider.store.find_operation(key) is not None:
                raise
            self.port = free_port()  # another program took the free port we picked: pick again
            lb = lb.replace(listeners=(Listener(port=self.port),))
            op = provider.upsert_load_balancer(lb, key)
        assert op.status is OperationStatus.SUCCEEDED, op.message
        return lb

    def spec(self, image_id: str, count: int = 1, **fields: Any) -> ServerGroupSpec:
        return ServerGroupSpec(
            application="hello",
            stack=fields.pop("stack", "test"),
            account=ACCOUNT,
            region=REGION,
            image_id=image_id,
            capacity=fields.pop("capacity", Capacity.fixed(count)),
            load_balancers=fields.pop("load_balancers", (LB,)),
            health_check=fields.pop("health_check", FAST_HEALTH),
            **fields,
        )

    def create(self, provider: LocalProvider, spec: ServerGroupSpec, purpose: str = "create") -> str:
        op = provider.create_server_group(spec, self.key(purpose))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        return str(op.result["server_group"])

    # ----------------------------------------------------------- waiting

    def wait_up(self, provider: LocalProvider, name: str, count: int, timeout: float = WAIT) -> list[Any]:
        def up() -> list[Any] | None:
            instances = provider.instances(name)
            if len(instances) == count and all(i.health is Health.UP for i in instances):
                return instances
            return None

        try:
            return wait_for(f"{count} Up instance(s) of {name}", up, timeout, every=0.1)
        except AssertionError:
            shown = [(i.id, str(i.health), i.health_reason) for i in provider.instances(name)]
            raise AssertionError(f"{name}: not {count} Up instance(s) within {timeout:g} s: {shown}") from None

    def wait_op(self, provider: LocalProvider, op: Operation, timeout: float = WAIT) -> Operation:
        done = wait_for(f"operation {op.kind} {op.id}", lambda: (o := provider.operation(op.id)).done and o, timeout)
        assert isinstance(done, Operation)
        return done

    def wait_serving(self, version: str, port: int | None = None) -> None:
        """Until the load balancer answers ``version`` (its proxy re-reads the routing table every 0.25 s)."""

        def answers() -> bool:
            with contextlib.suppress(OSError, http.client.HTTPException):
                return self.get("/version", port).version == version
            return False

        wait_for(f"the load balancer to serve {version}", answers, timeout=10)

    def get(self, path: str = "/version", port: int | None = None) -> Reply:
        client = Client(port or self.port)
        try:
            return client.get(path)
        finally:
            client.close()

    # ----------------------------------------------------------- cleanup

    def close(self) -> list[str]:
        """Stop every supervisor and proxy of the home; kill and report whatever is left."""
        problems: list[str] = []
        run_dir = self.home / "local" / "run" / ACCOUNT / REGION
        groups = sorted(path.name.removesuffix(".alive") for path in run_dir.glob("*.alive"))
        for group in groups:
            try:
                local_supervisor.stop(self.home, ACCOUNT, REGION, group, timeout=15)
            except Exception as error:  # reported; the kill below still runs
                problems.append(f"stopping the supervisor of {group}: {error!r}")
        store = StateStore(self.home / "local" / "state.db") if (self.home / "local" / "state.db").exists() else None
        names = set(self.balancers) | {lb.name for lb in (store.list_load_balancers() if store else [])}
        for name in sorted(names):
            try:
                local_proxy.stop(store, self.home, ACCOUNT, REGION, name, timeout=10)
            except Exception as error:
                problems.append(f"stopping the proxy of {name}: {error!r}")
        if store is not None:
            store.close()
        for provider in self.providers:
            provider.close()
        left = wait_for_gone(self.mark, timeout=10)
        if left:
            problems.append("left running: " + "; ".join(f"{pid} {describe(pid)}" for pid in left))
            for pid in left:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return problems


def wait_for_gone(mark: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = marked_processes(mark)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture
def lab(tmp_path: Path, baked: dict[str, Baked], monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    mark = uuid.uuid4().hex
    monkeypatch.setenv("GENNAKER_TEST_MARK", mark)  # inherited by supervisors, instances and proxies
    monkeypatch.setenv("GENNAKER_HOME", str(tmp_path / "gennaker"))
    monkeypatch.setenv("GENNAKER_LOCAL_SUPERVISOR_INTERVAL", "0.2s")
    monkeypatch.setenv("GENNAKER_LOCAL_STOP_GRACE", "3s")
    lab = Lab(tmp_path, baked, mark)
    try:
        yield lab
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # the cleanup runs to its end
        problems = lab.close()
    assert not problems, "\n".join(problems)


def statuses(provider: LocalProvider, status: OperationStatus) -> list[Operation]:
    return provider.store.list_operations(status=status)


# --------------------------------------------------------------------------- 1. bake


def test_bake_is_idempotent_by_key_and_the_same_inputs_give_the_same_image(
    tmp_path: Path, wheels: dict[str, Path], shared_pip: None
) -> None:
    provider = LocalProvider(ACCOUNT, REGION, home=tmp_path / "gennaker")
    try:
        request = hello_request(wheels["v1"], "1.0.0")
        key = IdempotencyKey("dag", "run-1", "bake", "bake")
        op = provider.bake(request, key)
        assert op.status is OperationStatus.SUCCEEDED, op.message
        assert op.kind is OperationKind.BAKE and op.key == str(key)
        image_id = op.result["image_id"]
        assert op.message == f"baked {image_id}"
        image = provider.get_image(image_id)
        assert (image.package, image.version, image.application) == ("hello-service", "1.0.0", "hello")
        assert (Path(image.manifest["path"]) / "manifest.json").is_file()

        again = provider.bake(request, key)
        assert again == op  # the same operation, not a second bake
        other_release = provider.bake(hello_request(wheels["v2"], "2.0.0"), key)
        assert other_release == op  # a repeat's arguments are not compared: the first call's result wins

        other_key = provider.bake(request, IdempotencyKey("dag", "run-2", "bake", "bake"))
        assert other_key.id != op.id
        assert other_key.status is OperationStatus.SUCCEEDED, other_key.message
        assert other_key.result["image_id"] == image_id
        assert [i.id for i in provider.find_images(package="hello-service")] == [image_id]
        assert [path.name for path in images_root(provider.home).glob("img-*")] == [image_id]

        with pytest.raises(IdempotencyConflict):
            provider.create_server_group(
                ServerGroupSpec(
                    application="hello",
                    account=ACCOUNT,
                    region=REGION,
                    image_id=image_id,
                    capacity=Capacity.fixed(1),
                ),
                key,
            )
    finally:
        provider.close()


# --------------------------------------------------------------------------- 2. create and serve


def test_create_runs_instances_that_answer_through_the_load_balancer(lab: Lab) -> None:
    provider = lab.provider()
    v1 = lab.image(provider, "v1")
    lab.load_balancer(provider)
    assert local_proxy.running_pid(lab.home, ACCOUNT, REGION, LB) is not None

    op = provider.create_server_group(lab.spec(v1, 2), lab.key("create"))
    assert op.status is OperationStatus.SUCCEEDED, op.message
    assert op.result == {"server_group": "hello-test-v000"}
    name = "hello-test-v000"
    group = provider.get_server_group(name)
    assert (group.cluster, group.image_id, group.enabled, group.load_balancers) == ("hello-test", v1, True, (LB,))
    assert group.created_by is not None and group.created_by.dag_id == "test_provider_local"
    assert local_supervisor.supervisor_pid(lab.home, ACCOUNT, REGION, name) is not None

    instances = lab.wait_up(provider, name, 2)
    assert all(i.host == "127.0.0.1" and i.port for i in instances)
    lab.wait_serving("1.0.0")

    seen: list[str] = []

    def both_answered() -> bool:
        reply = lab.get("/version")
        assert reply.status == 200, reply.text
        assert json.loads(reply.body) == {
            "version": "1.0.0",
            "instance": reply.headers["x-gennaker-instance"],
            "serverGroup": name,
        }
        assert reply.group == name
        seen.append(reply.headers["x-gennaker-instance"])
        return set(seen) == {i.id for i in instances}

    # Round robin over both (the proxy may not have re-read the second one's health yet: it does every 0.25 s).
    wait_for("both instances to answer through the load balancer", both_answered, timeout=10, every=0.02)
    assert set(seen) <= {i.id for i in instances}
    page = lab.get("/")
    assert page.status == 200 and "hello 1.0.0" in page.text


# --------------------------------------------------------------------------- 3. a retried create


class Crash(Exception):
    """The worker died here."""


def test_a_create_retried_after_a_crash_makes_exactly_one_group(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    first = lab.provider()
    v1 = lab.image(first, "v1")
    lab.load_balancer(first)
    spec = lab.spec(v1, 1)
    key = lab.key("deploy")

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    # The first try dies after recording the group and starting it, before it ends its operation.
    monkeypatch.setattr(first, "_finish", crash)
    with pytest.raises(Crash):
        first.create_server_group(spec, key)
    running = first.store.find_operation(key)
    assert running is not None and running.status is OperationStatus.RUNNING
    assert running.result == {"server_group": "hello-test-v000"}  # the name is known while it runs

    retry = lab.provider()  # the retried task: another process, the same state
    op = retry.create_server_group(spec, key)
    assert op.id == running.id and op.status is OperationStatus.SUCCEEDED, op.message
    assert op.result == {"server_group": "hello-test-v000"}
    assert [g.name for g in retry.list_server_groups("hello")] == ["hello-test-v000"]
    assert lab.provider().create_server_group(spec, key) == op  # and once more, after it ended
    lab.wait_up(retry, "hello-test-v000", 1)
    lab.wait_serving("1.0.0")

    # Dying before the group is recorded: the retry makes it, under the name the first try reserved.
    staging = lab.spec(v1, 1, stack="staging", load_balancers=())
    key2 = lab.key("deploy-staging")
    second = lab.provider()
    monkeypatch.setattr(second.store, "put_server_group", crash)
    with pytest.raises(Crash):
        second.create_server_group(staging, key2)
    assert retry.list_server_groups("hello", cluster="hello-staging") == []
    op2 = lab.provider().create_server_group(staging, key2)
    assert op2.status is OperationStatus.SUCCEEDED and op2.result == {"server_group": "hello-staging-v000"}
    assert [g.name for g in retry.list_server_groups("hello")] == ["hello-test-v000", "hello-staging-v000"]
    assert statuses(retry, OperationStatus.RUNNING) == []


# --------------------------------------------------------------------------- 4. red/black by hand


def test_red_black_by_hand_under_load_drops_no_request(lab: Lab) -> None:
    provider = lab.provider()
    v1, v2 = lab.image(provider, "v1"), lab.image(provider, "v2")
    lab.load_balancer(provider)
    blue = lab.create(provider, lab.spec(v1, 2))
    lab.wait_up(provider, blue, 2)
    lab.wait_serving("1.0.0")

    with Load(lab.port, threads=3, limit=12.0) as load:
        green = lab.create(provider, lab.spec(v2, 2, enabled=False), "create-green")
        assert green == "hello-test-v001"
        lab.wait_up(provider, green, 2)
        time.sleep(0.5)  # the proxy has seen green Up (and disabled) for a while
        enabling = time.monotonic()
        enabled = lab.wait_op(provider, provider.enable_server_group(green, lab.key("enable-green")))
        assert enabled.status is OperationStatus.SUCCEEDED, enabled.message
        disabled = lab.wait_op(provider, provider.disable_server_group(blue, lab.key("disable-blue")))
        assert disabled.status is OperationStatus.SUCCEEDED, disabled.message
        after_disable = time.monotonic()
        wait_for("requests after the disable", lambda: len(load.since(after_disable)) >= 60, timeout=5)

    samples = load.samples
    failed = [s for s in samples if s.error]
    assert not failed, f"{len(failed)} of {len(samples)} requests failed, e.g. {failed[:3]}"
    before = [s.version for s in samples if s.answered < enabling]
    assert before and set(before) == {"1.0.0"}, "a disabled group took traffic"
    after = [s.version for s in load.since(after_disable)]
    assert len(after) >= 60 and set(after) == {"2.0.0"}, f"after the disable: {set(after)}"
    assert len(samples) > len(before) + len(after)  # some answered during the switch

    blue_group = provider.get_server_group(blue)
    assert not blue_group.enabled and blue_group.disabled_by == "test_provider_local.task"
    assert [str(i.health) for i in blue_group.instances] == ["Up", "Up"]  # disabled, still running
    assert provider.get_server_group(green).enabled


# --------------------------------------------------------------------------- 5. resize and terminate


def test_resize_and_terminate(lab: Lab) -> None:
    provider = lab.provider()
    v1 = lab.image(provider, "v1")
    name = lab.create(provider, lab.spec(v1, capacity=Capacity(min=1, max=3, desired=2), load_balancers=()))
    lab.wait_up(provider, name, 2)

    op = provider.resize_server_group(name, Capacity(min=1, max=3, desired=3), lab.key("resize-3"))
    op = lab.wait_op(provider, op)
    assert op.status is OperationStatus.SUCCEEDED, op.message
    assert len(provider.get_server_group(name).instances) == 3
    lab.wait_up(provider, name, 3)
    pids = local_supervisor.instance_pids(lab.home, ACCOUNT, REGION, name)
    assert len(pids) == 3

    op = lab.wait_op(provider, provider.resize_server_group(name, Capacity(min=1, max=3, desired=1), lab.key("r1")))
    assert op.status is OperationStatus.SUCCEEDED, op.message
    (kept,) = provider.get_server_group(name).instances
    assert local_supervisor.instance_pids(lab.home, ACCOUNT, REGION, name) == {kept.id: pids[kept.id]}
    assert not any(proc_running(pid) for iid, pid in pids.items() if iid != kept.id), "scaled-in processes run"

    op = provider.terminate_instance(name, kept.id, lab.key("terminate"))
    assert op.status is OperationStatus.SUCCEEDED, op.message
    (replacement,) = lab.wait_up(provider, name, 1)
    assert replacement.id != kept.id
    wait_for("the terminated process to end", lambda: not proc_running(pids[kept.id]), timeout=10)
    assert provider.get_server_group(name).capacity == Capacity(min=1, max=3, desired=1)

    with pytest.raises(NotFound, match="is not an instance of hello-test-v000"):
        provider.terminate_instance(name, "i-000000000000", lab.key("terminate-unknown"))

    op = provider.terminate_instance(name, replacement.id, lab.key("terminate-decrement"), decrement=True)
    assert op.status is OperationStatus.SUCCEEDED, op.message
    assert provider.get_server_group(name).capacity == Capacity(min=0, max=3, desired=0)
    wait_for(
        "no instance process",
        lambda: not local_supervisor.instance_pids(lab.home, ACCOUNT, REGION, name) and not provider.instances(name),
        timeout=10,
    )


# --------------------------------------------------------------------------- 6. traffic guards


def test_traffic_guard_keeps_the_last_serving_group(lab: Lab) -> None:
    provider = lab.provider(guarded_clusters={"hello-test"})
    v1 = lab.image(provider, "v1")
    lab.load_balancer(provider)
    only = lab.create(provider, lab.spec(v1, 1))
    lab.wait_up(provider, only, 1)
    lab.wait_serving("1.0.0")

    refused = {
        "disabling": lambda: provider.disable_server_group(only, lab.key("disable-v000")),
        "destroying": lambda: provider.destroy_server_group(only, lab.key("destroy-v000")),
        "resizing": lambda: provider.resize_server_group(only, Capacity.fixed(0), lab.key("resize-v000")),
        "terminating the last instance of": lambda: provider.terminate_instance(
            only, provider.instances(only)[0].id, lab.key("terminate-v000"), decrement=True
        ),
    }
    for action, call in refused.items():
        with pytest.raises(TrafficGuardViolation) as raised:
            call()
        message = str(raised.value)
        assert message.startswith(f"{action} hello-test-v000"), message
        assert "would leave the guarded cluster hello-test without an enabled server group with an Up instance" in (
            message
        )
        assert "deploy or enable another server group of hello-test" in message
    assert statuses(provider, OperationStatus.RUNNING) == []  # nothing recorded: the same keys work later
    group = provider.get_server_group(only)
    assert group.enabled and group.capacity.desired == 1 and not group.tags
    assert lab.get().version == "1.0.0"

    other = lab.create(provider, lab.spec(v1, 1), "create-v001")
    lab.wait_up(provider, other, 1)
    op = lab.wait_op(provider, provider.disable_server_group(only, lab.key("disable-v000")))
    assert op.status is OperationStatus.SUCCEEDED, op.message
    with pytest.raises(TrafficGuardViolation, match="disabling hello-test-v001 would leave"):
        provider.disable_server_group(other, lab.key("disable-v001"))
    op = lab.wait_op(provider, provider.destroy_server_group(only, lab.key("destroy-v000")))  # disabled: allowed
    assert op.status is OperationStatus.SUCCEEDED, op.message
    assert [g.name for g in provider.list_server_groups("hello")] == [other]
    assert lab.get().group == other

    unguarded = lab.provider()  # the guard belongs to the account's connection, not to the cluster
    op = lab.wait_op(unguarded, unguarded.disable_server_group(other, lab.key("disable-v001")))
    assert op.status is OperationStatus.SUCCEEDED, op.message


# --------------------------------------------------------------------------- 7. destroy


def test_destroy_ends_when_the_processes_are_gone(lab: Lab) -> None:
    provider = lab.provider()
    v1 = lab.image(provider, "v1")
    lab.load_balancer(provider)
    name = lab.create(provider, lab.spec(v1, 2))
    lab.wait_up(provider, name, 2)
    lab.wait_serving("1.0.0")
    pids = local_supervisor.instance_pids(lab.home, ACCOUNT, REGION, name)
    supervisor = local_supervisor.supervisor_pid(lab.home, ACCOUNT, REGION, name)
    assert len(pids) == 2 and supervisor is not None

    key = lab.key("destroy")
    op = provider.destroy_server_group(name, key)
    assert op.kind is OperationKind.DESTROY_SERVER_GROUP and op.status is OperationStatus.RUNNING
    assert not provider.get_server_group(name).enabled  # disabled first: the load balancer drains it
    done = lab.wait_op(provider, op)
    assert done.status is OperationStatus.SUCCEEDED and done.message == f"destroyed {name}"
    with pytest.raises(NotFound):
        provider.get_server_group(name)
    assert provider.list_server_groups("hello") == []
    assert provider.store.list_instances(account=ACCOUNT, region=REGION, server_group=name) == []
    running = [f"{pid} {describe(pid)}" for pid in [*pids.values(), supervisor] if proc_running(pid)]
    assert not running, f"processes of the destroyed group run: {running}"
    assert local_supervisor.supervisor_pid(lab.home, ACCOUNT, REGION, name) is None
    reply = lab.get()
    assert reply.status == 503, reply.text  # the load balancer runs on, with nothing to route to

    assert provider.destroy_server_group(name, key) == done
    again = provider.destroy_server_group(name, lab.key("destroy-again"))
    assert again.status is OperationStatus.SUCCEEDED and again.message == f"{name} is already gone"
    kinds = [event.kind for event in provider.store.events(subject=name)]
    assert kinds.index("serverGroup.disabled") < kinds.index("serverGroup.destroying")
    assert kinds[-1] == "serverGroup.destroyed"
    # The name is not handed out again: the next group of the cluster is v001.
    assert lab.create(provider, lab.spec(v1, 1, load_balancers=()), "create-next") == "hello-test-v001"

    # The load balancer serves nothing now: it can go, and its proxy with it (the port is free at once).
    op = provider.delete_load_balancer(LB, lab.key("delete-lb"))
    assert op.status is OperationStatus.SUCCEEDED and op.message == f"deleted {LB}"
    assert local_proxy.running_pid(lab.home, ACCOUNT, REGION, LB) is None
    assert provider.list_load_balancers() == []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", lab.port))
    again = provider.delete_load_balancer(LB, lab.key("delete-lb-again"))
    assert again.status is OperationStatus.SUCCEEDED and again.message == f"{LB} is already gone"


# --------------------------------------------------------------------------- 8. metrics


def next_second() -> datetime:
    """Sleep to the start of the next whole second; that moment."""
    now = time.time()
    time.sleep(math.ceil(now) - now + 0.01)
    return datetime.fromtimestamp(math.floor(time.time()), timezone.utc)


def totals(provider: LocalProvider, group: str, start: datetime, end: datetime) -> dict[str, Any]:
    names = ["requests", "errors", "error_rate", "latency_p50"]
    series = provider.metrics(group, names, start, end, timedelta(seconds=1))
    assert set(series) == set(names)
    for one in series.values():
        assert one.server_group == group and one.start == start and one.step_seconds == 1.0
        assert len(one.values) == math.ceil((end - start).total_seconds())
    requests = sum(v or 0 for v in series["requests"].values)
    errors = sum(v or 0 for v in series["errors"].values)
    return {
        "requests": int(requests),
        "errors": int(errors),
        "error_rate": errors / requests if requests else None,
        "error_rates": [v for v in series["error_rate"].values if v is not None],
        "p50s": [v for v in series["latency_p50"].values if v is not None],
    }


def test_metrics_count_requests_and_tell_a_bad_version(lab: Lab) -> None:
    provider = lab.provider()
    good_image, bad_image = lab.image(provider, "v1"), lab.image(provider, "bad")
    lab.load_balancer(provider)
    good = lab.create(provider, lab.spec(good_image, 1))
    lab.wait_up(provider, good, 1)
    lab.wait_serving("1.0.0")

    with pytest.raises(InvalidRequest, match="unknown local metric"):
        provider.metrics(good, ["cpu"], datetime.now(timezone.utc), datetime.now(timezone.utc), timedelta(seconds=1))

    start = next_second()
    client = Client(lab.port)
    try:
        replies = [client.get("/version") for _ in range(50)]
    finally:
        client.close()
    assert [r.status for r in replies] == [200] * 50
    end = datetime.fromtimestamp(math.ceil(time.time()) + 1, timezone.utc)
    counted = wait_for(
        "the proxy to flush 50 requests", lambda: (t := totals(provider, good, start, end))["requests"] == 50 and t
    )
    assert counted["errors"] == 0 and counted["error_rate"] == 0.0
    assert counted["p50s"] and all(0 < p < 100 for p in counted["p50s"])

    # The bad release beside it, half the traffic each.
    bad = lab.create(provider, lab.spec(bad_image, 1), "create-bad")
    lab.load_balancer(provider, weights={good: 50, bad: 50})
    lab.wait_up(provider, bad, 1)
    wait_for("the bad release to take traffic", lambda: lab.get().version == "1.1.0" or None, timeout=10)
    start = next_second()
    sent: dict[str | None, int] = {good: 0, bad: 0}
    failed: dict[str | None, int] = {good: 0, bad: 0}
    lock = threading.Lock()

    def send(count: int) -> None:
        client = Client(lab.port)
        try:
            for _ in range(count):
                reply = client.get("/version")
                with lock:
                    sent[reply.group] = sent.get(reply.group, 0) + 1
                    failed[reply.group] = failed.get(reply.group, 0) + (reply.status >= 500)
        finally:
            client.close()

    senders = [threading.Thread(target=send, args=(50,), daemon=True) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=30)
    assert not any(sender.is_alive() for sender in senders), "a client thread hung"
    assert set(sent) == {good, bad} and sum(sent.values()) == 200, sent
    end = datetime.fromtimestamp(math.ceil(time.time()) + 1, timezone.utc)
    assert 70 <= sent[bad] <= 130, sent  # weights 50/50 (smooth round robin: about even)
    for group in (good, bad):
        expected = sent[group]
        wait_for(
            f"the metrics of {group}",
            lambda: totals(provider, group, start, end)["requests"] == expected,  # noqa: B023 - waited for here
        )
    good_totals, bad_totals = totals(provider, good, start, end), totals(provider, bad, start, end)
    assert (good_totals["errors"], bad_totals["errors"]) == (failed[good], failed[bad])
    assert good_totals["error_rate"] == 0.0 and all(rate == 0.0 for rate in good_totals["error_rates"])
    assert bad_totals["error_rate"] >= 0.3, bad_totals  # 0.5 built in
    # Latency is there for both; the bad release's 20 ms are in it. (Not compared with the good one: hello-service
    # answers keep-alive requests in two writes without TCP_NODELAY, so its answers take ~40 ms of delayed ACK.)
    assert good_totals["p50s"] and all(p > 0 for p in good_totals["p50s"])
    assert bad_totals["p50s"] and all(p >= 10 for p in bad_totals["p50s"]), bad_totals["p50s"]


# --------------------------------------------------------------------------- 9. errors


def test_errors_say_what_to_do_and_leave_the_serving_group_serving(lab: Lab) -> None:
    provider = lab.provider()
    v1 = lab.image(provider, "v1")
    lb = lab.load_balancer(provider)
    serving = lab.create(provider, lab.spec(v1, 1))
    lab.wait_up(provider, serving, 1)
    lab.wait_serving("1.0.0")

    def still_serving() -> None:
        reply = lab.get()
        assert reply.status == 200 and reply.version == "1.0.0" and reply.group == serving, reply.text
        assert [g.name for g in provider.list_server_groups("hello")] == [serving]
        assert statuses(provider, OperationStatus.RUNNING) == []

    # An unknown image: NotFound, and nothing is created or reserved.
    key = lab.key("create-unknown")
    with pytest.raises(NotFound) as raised:
        provider.create_server_group(lab.spec("img-0000000000000000", 1), key)
    assert "image img-0000000000000000 not found" in str(raised.value)
    assert "check the name, account and region" in str(raised.value)
    assert provider.store.find_operation(key) is None
    still_serving()

    # A missing artifact, then a corrupt one: the bake operation FAILED, saying why.
    missing = lab.tmp / "nowhere" / "hello_service-1.0.0-py3-none-any.whl"
    op = provider.bake(hello_request(missing, "1.0.0"), lab.key("bake-missing"))
    assert op.status is OperationStatus.FAILED
    assert op.message.startswith(f"bake failed: artifact {missing} does not exist"), op.message
    assert "check the bake stage's artifact path" in op.message
    corrupt = lab.tmp / "hello_service-1.0.0-py3-none-any.whl"
    corrupt.write_bytes(Path(str(lab.baked["v1"].request.artifact)).read_bytes()[:500])  # cut short
    op = provider.bake(hello_request(corrupt, "1.0.0"), lab.key("bake-corrupt"))
    assert op.status is OperationStatus.FAILED
    assert "is not a valid wheel" in op.message and "build it again" in op.message, op.message
    assert [image.id for image in provider.find_images(package="hello-service")] == [v1]
    still_serving()

    # A listener port that another program holds: refused before anything is recorded.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        other = LoadBalancer(
            name="hello-other", application="hello", account=ACCOUNT, region=REGION, listeners=(Listener(port=taken),)
        )
        key = lab.key("lb-other")
        with pytest.raises(ListenerPortInUse) as in_use:
            provider.upsert_load_balancer(other, key)
        assert str(in_use.value) == (
            f"port {taken} on 127.0.0.1 is in use by another program; choose another port in the load balancer's "
            "listeners"
        )
        assert isinstance(in_use.value, InvalidRequest)
        assert provider.store.find_operation(key) is None
        assert [b.name for b in provider.list_load_balancers()] == [LB]
        # Moving the serving load balancer there is refused too, and it keeps serving where it was.
        with pytest.raises(ListenerPortInUse):
            provider.upsert_load_balancer(lb.replace(listeners=(Listener(port=taken),)), lab.key("lb-move"))
        assert provider.list_load_balancers()[0].listeners == lb.listeners
        still_serving()
    # A port of another of our load balancers.
    with pytest.raises(InvalidRequest, match=f"are listeners of load balancer {LB}"):
        provider.upsert_load_balancer(other.replace(listeners=(Listener(port=lab.port),)), lab.key("lb-same-port"))
    still_serving()

    # Deleting the load balancer of a serving group.
    with pytest.raises(InvalidRequest, match=f"{LB} still serves {serving}: disable or destroy them first"):
        provider.delete_load_balancer(LB, lab.key("delete-lb"))
    still_serving()


# ------------------------------------------------------------------------ 10. what callers read through the interface


def _record(provider: LocalProvider, name: str, **fields: Any) -> None:
    """A server group record only (nothing runs for it)."""
    provider.store.put_server_group(
        ServerGroup(name=name, account=ACCOUNT, region=REGION, image_id="img-x", capacity=Capacity.fixed(0), **fields)
    )


def test_destroying_and_the_load_balancer_address_read_through_the_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = LocalProvider(ACCOUNT, REGION, home=tmp_path / "gennaker")
    try:
        _record(provider, "hello-test-v000", enabled=False)
        # An earlier version marked a group with the tag alone: it reads destroying all the same.
        _record(provider, "hello-test-v001", enabled=False, tags={local_supervisor.DESTROYING_TAG: "true"})
        assert [g.destroying for g in provider.list_server_groups("hello")] == [False, True]
        assert [g.destroying for g in provider.inventory().server_groups] == [False, True]
        assert provider.get_server_group("hello-test-v001").destroying

        # A destroy marks the group (the field, and the tag the supervisors of any version read) while its
        # supervisor stops the instances: pretend one runs, so the operation waits for it.
        monkeypatch.setattr(local_supervisor, "supervisor_pid", lambda *args: 4242)
        op = provider.destroy_server_group("hello-test-v000", IdempotencyKey("d", "r", "t", "destroy"))
        assert op.status is OperationStatus.RUNNING, op.message
        group = provider.get_server_group("hello-test-v000")
        assert group.destroying and group.tags[local_supervisor.DESTROYING_TAG] == "true"
        assert provider.recorded_operation(op.id) == provider.store.get_operation(op.id)

        [destroying] = provider.history("hello-test")
        assert (destroying.kind, destroying.server_group, destroying.message) == (
            "destroying",
            "hello-test-v000",
            "destroying hello-test-v000",
        )

        lb = LoadBalancer(
            name=LB,
            application="hello",
            account=ACCOUNT,
            region=REGION,
            listeners=(Listener(port=7001, protocol="TCP"), Listener(port=7002)),
        )
        assert provider.load_balancer_address(lb) == "http://127.0.0.1:7002"
        assert provider.load_balancer_address(lb.replace(listeners=(Listener(port=7001, protocol="TCP"),))) == (
            "http://127.0.0.1:7001"
        )
        assert provider.load_balancer_address(lb.replace(listeners=())) is None
    finally:
        provider.close()
