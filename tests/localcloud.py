"""Helpers shared by the tests that run the local provider's real processes.

Waiting and bounding (:func:`wait_for`, :func:`bounded_to`), leftover processes, free ports, the demo
service's wheel (:func:`build_hello`, :func:`bake_hello`), the provider's environment
(:func:`provider_env`), HTTP load through a load balancer (:class:`Load`) and a cloud of local
providers in a home shared with Airflow (:class:`Cloud`, used by tests/integration).

Import as ``from localcloud import ...`` (``tests/`` is on the path through its conftest).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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

REPO = Path(__file__).resolve().parents[1]
BUILD_HELLO = REPO / "scripts" / "build-hello.sh"
T = TypeVar("T")

ACCOUNT = REGION = "local"
PYTHON_BASE = f"python-{sys.version_info[0]}.{sys.version_info[1]}"
FAST_HEALTH = {"type": "http", "path": "/health", "interval": "0.2s", "timeout": "2s"}
"""A health check every 0.2 s: a test's instances are Up within a second."""
LOAD_LIMIT = 200.0
"""A :class:`Load`'s request loop stops by itself after this long."""
WAIT = 30.0
"""How long :class:`Cloud` waits for instances to be Up or a load balancer to serve a version."""


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


class Timeout(BaseException):
    """Raised in the main thread by :func:`bounded_to`'s timer."""


@contextmanager
def bounded_to(seconds: float) -> Iterator[None]:
    """Fail the code inside if it runs longer than ``seconds`` (a fixture's teardown still runs)."""

    def expire(signum: int, frame: Any) -> None:
        raise Timeout(f"the test ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def proc_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZXx"


def marked_processes(mark: str, *, started_from: Path | None = None) -> list[int]:
    """Running processes whose environment carries ``GENNAKER_TEST_MARK=<mark>``, or whose command line
    names ``started_from`` (processes Airflow's tasks started, which do not inherit the mark)."""
    entry = f"GENNAKER_TEST_MARK={mark}".encode()
    needle = str(started_from).encode() if started_from is not None else None
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            marked = entry in (proc / "environ").read_bytes().split(b"\0")
            if not marked and needle is not None:
                marked = needle in (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marked and proc_running(int(proc.name)):
            found.append(int(proc.name))
    return found


def describe(pid: int) -> str:
    """A process's command line, for a message about a leftover."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_hello(version: str, out: Path, *options: str) -> Path:
    """The demo service's wheel at ``version``, built by scripts/build-hello.sh into ``out``."""
    done = subprocess.run(
        [str(BUILD_HELLO), version, "--out", str(out), *options],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wheel = Path(done.stdout.strip().splitlines()[-1])
    assert wheel == out / f"hello_service-{version}-py3-none-any.whl"
    assert wheel.is_file()
    return wheel


# --------------------------------------------------------------------------- the provider's environment


@contextmanager
def provider_env(home: Path, tools: Path, **extra: str) -> Iterator[str]:
    """Point this process's local provider at ``home`` (inherited by what it starts); yield the leftover mark.

    Sets ``GENNAKER_HOME``, a fresh ``GENNAKER_TEST_MARK``, a fast supervisor (0.2 s passes, 3 s stop grace)
    and the bake tools folder ``tools`` (one unpacked pip for every bake), plus ``extra``; puts back what was
    there before on exit.
    """
    mark = uuid.uuid4().hex
    wanted = {
        "GENNAKER_HOME": str(home),
        "GENNAKER_TEST_MARK": mark,
        "GENNAKER_LOCAL_SUPERVISOR_INTERVAL": "0.2s",
        "GENNAKER_LOCAL_STOP_GRACE": "3s",
        TOOLS_ENV: str(tools),
        **extra,
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


def bake_hello(
    provider: LocalProvider, releases: Mapping[str, tuple[str, Sequence[str]]], out: Callable[[str], Path]
) -> dict[str, str]:
    """Build and bake each release ``name -> (version, build options)`` of the demo service: image ids by name.

    ``out(name)`` gives an empty folder for the wheel. The bake is keyed by version and options, so a
    release another test module of the session baked already is that module's image (no second bake).
    """
    found = {}
    for name, (version, options) in releases.items():
        request = BakeRequest(
            package="hello-service",
            version=version,
            artifact=str(build_hello(version, out(name), *options)),
            application="hello",
            base=PYTHON_BASE,
            account=provider.account,
            region=provider.region,
        )
        purpose = " ".join((version, *options))
        op = provider.bake(request, IdempotencyKey("tests", "setup", "bake", purpose))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        found[name] = str(op.result["image_id"])
    return found


# --------------------------------------------------------------------------- HTTP load through a load balancer


@dataclass
class Sample:
    """One answer of the load balancer (or the error instead)."""

    sent: float  # time.time(), to compare with Airflow's task start and end dates
    error: str
    version: str | None
    group: str | None


def get_version(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], bytes]:
    """GET /version on ``conn``: status, headers (lower-case names), body."""
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
        """Every answer so far, in the order sent."""
        with self._lock:
            return sorted(self.samples, key=lambda s: s.sent)


# --------------------------------------------------------------------------- a cloud in a shared home


class Cloud:
    """Drives LocalProviders in a home another party (Airflow) also uses; ``close`` stops every process they started."""

    def __init__(self, home: Path, mark: str) -> None:
        self.home = home
        self.mark = mark
        self.run = uuid.uuid4().hex[:8]
        self.providers: list[LocalProvider] = []

    def provider(self, account: str = ACCOUNT, **options: Any) -> LocalProvider:
        """A provider of ``account`` in the home, closed by :meth:`close`."""
        provider = LocalProvider(account, REGION, home=self.home, **options)
        self.providers.append(provider)
        return provider

    def key(self, purpose: str) -> IdempotencyKey:
        """A key of this test's setup for ``purpose``."""
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
        """A server group of hello-<stack> behind ``lb`` (keyed by stack and image): its name."""
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
        """Until ``name`` has ``count`` instances, all Up."""

        def up() -> bool:
            instances = provider.instances(name)
            return len(instances) == count and all(i.health is Health.UP for i in instances)

        wait_for(f"{count} Up instance(s) of {name}", up, timeout=WAIT, every=0.1)

    def wait_serving(self, port: int, version: str) -> None:
        """Until the load balancer on ``port`` answers ``version``."""

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
