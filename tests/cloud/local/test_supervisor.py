"""The local supervisor with real processes and real HTTP: instances on 127.0.0.1, health, crashes, restarts.

The instance program is a tiny stdlib HTTP server (``APP`` below): ``/health`` answers
200 and ``/`` the instance id and its environment, on ``$PORT``. ``APP_MODE=crash``
makes it exit at once (code 3), ``APP_MODE=sick`` makes ``/health`` answer 503.

Every test runs in its own gennaker home and marks its instances with a unique
environment variable; teardown stops the supervisors, kills whatever still carries the
mark (or names the home on its command line), and fails the test if anything was left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from localcloud import wait_for

from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import Capacity, Health, Image, Instance, ServerGroup

sup = pytest.importorskip("gennaker.cloud.local.supervisor")

if not Path("/proc/self/stat").exists():  # pragma: no cover - the supervisor's identity checks read /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

ACCOUNT, REGION = "local", "local"
GROUP = "hello-test-v000"
FAST = sup.SupervisorOptions(interval=0.1, restart_limit=3, restart_backoff=0.05, stop_grace=2.0)
HEALTH = {"type": "http", "path": "/health", "interval": 0.1, "timeout": 1}
TIMEOUT = 20.0

APP = r"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = os.environ.get("APP_MODE", "")
if MODE == "crash":
    print("crashing on purpose", flush=True)
    sys.exit(3)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            code, body = (503, b"sick") if MODE == "sick" else (200, b"ok")
        elif self.path == "/":
            code = 200
            body = json.dumps({
                "id": os.environ["GENNAKER_INSTANCE_ID"],
                "cwd": os.getcwd(),
                "env": {k: v for k, v in os.environ.items()
                        if k.startswith(("AIRFLOW_", "APP_", "GENNAKER_", "PORT", "HOST"))},
            }).encode()
        else:
            code, body = 404, b"no"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler)
print("listening on", server.server_address, flush=True)
server.serve_forever()
"""


# --------------------------------------------------------------------------- processes


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZXx"


def processes_of(mark: str, home: Path) -> list[int]:
    """Running processes carrying the test's mark in their environment, or the home on their command line."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        if (f"GENNAKER_TEST_MARK={mark}".encode() in _environ(pid).split(b"\0")) or (
            str(home).encode() in _cmdline(pid).split(b"\0")
        ):
            if _running(pid):
                found.append(pid)
    return found


def supervisors_of(home: Path) -> list[int]:
    return [pid for pid in processes_of("-none-", home) if sup.MODULE.encode() in _cmdline(pid).split(b"\0")]


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --------------------------------------------------------------------------- fixtures


@dataclass
class Local:
    """A gennaker home with a state store, an image of the test app, and helpers to watch a group."""

    home: Path
    store: StateStore
    image: Image
    mark: str
    groups: set[str] = field(default_factory=set)

    def group(self, name: str = GROUP, desired: int = 2, *, health: dict[str, Any] | None = None, **env: str) -> str:
        group = ServerGroup(
            name=name,
            account=ACCOUNT,
            region=REGION,
            image_id=self.image.id,
            capacity=Capacity(min=0, max=5, desired=desired),
            health_check=HEALTH if health is None else health,
            environment={"GENNAKER_TEST_MARK": self.mark, "APP_GROUP_VAR": "from-group", **env},
        )
        self.store.put_server_group(group)
        self.groups.add(name)
        return name

    def ensure(self, name: str = GROUP, options: Any = FAST) -> int:
        return int(sup.ensure_running(self.store, self.home, ACCOUNT, REGION, name, options=options))

    def reconcile(self, name: str = GROUP, **kwargs: Any) -> Any:
        return sup.reconcile_once(self.store, self.home, ACCOUNT, REGION, name, options=FAST, **kwargs)

    def instances(self, name: str = GROUP) -> list[Instance]:
        return self.store.list_instances(account=ACCOUNT, region=REGION, server_group=name)

    def pids(self, name: str = GROUP) -> dict[str, int]:
        return dict(sup.instance_pids(self.home, ACCOUNT, REGION, name))

    def resize(self, desired: int, name: str = GROUP) -> None:
        self.store.update_server_group(
            ACCOUNT, REGION, name, lambda g: g.replace(capacity=Capacity(min=0, max=5, desired=desired))
        )

    def all_up(self, count: int, name: str = GROUP) -> list[Instance] | None:
        instances = self.instances(name)
        pids = self.pids(name)
        if len(instances) == count and len(pids) == count and all(i.health is Health.UP for i in instances):
            return instances
        return None

    def events(self, kind: str) -> list[Any]:
        return [event for event in self.store.events() if event.kind == kind]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    home = tmp_path / "home"
    app_dir = tmp_path / "image"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    store = StateStore(home / "local" / "state.db")
    image = Image(
        id="img-test",
        name="app-1.0",
        package="app",
        version="1.0",
        base="python-3.11",
        region=REGION,
        account=ACCOUNT,
        inputs_hash="0" * 64,
        manifest={"path": str(app_dir), "start_command": [sys.executable, "app.py"], "env": {"APP_IMAGE_VAR": "1"}},
    )
    store.put_image(image)
    env = Local(home=home, store=store, image=image, mark=uuid.uuid4().hex)
    try:
        yield env
    finally:
        try:
            for name in env.groups:
                sup.stop(home, ACCOUNT, REGION, name, timeout=10)
        finally:
            leftovers = processes_of(env.mark, home)
            for pid in leftovers:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            store.close()
        assert not leftovers, f"processes left running: {[_cmdline(pid) for pid in leftovers]}"


# --------------------------------------------------------------------------- health checks alone


def test_instance_health_says_what_happened_in_plain_words(local: Local) -> None:
    port = sup.free_port()
    assert sup.instance_health(port) == (False, f"connection refused on 127.0.0.1:{port}")
    assert sup.instance_health(port, {"type": "tcp"}) == (False, f"connection refused on 127.0.0.1:{port}")
    assert sup.instance_health(port, {"type": "none"}).ok

    local.group(desired=1, APP_MODE="sick")
    local.reconcile()
    port = wait_for(
        "the sick app to listen", lambda: sup.instance_health(local.instances()[0].port, {"type": "tcp"}).ok
    )
    (instance,) = local.instances()
    assert sup.instance_health(instance.port, {"path": "/health", "timeout": "1s"}) == (False, "HTTP 503 on /health")
    assert sup.instance_health(instance.port, {"path": "/"}) == (True, "HTTP 200 on /")
    assert sup.instance_health(instance.port, {"type": "tcp"}).ok
    assert port


def test_health_check_settings_read_the_specs_keys() -> None:
    settings = sup.HealthCheckSettings.from_dict(
        {
            "type": "HTTP",
            "path": "ready",
            "interval": "500ms",
            "timeout": "PT3S",
            "healthyThreshold": 2,
            "gracePeriod": 5,
        }
    )
    assert settings == sup.HealthCheckSettings("http", "/ready", 0.5, 3.0, 2, 5.0)
    assert sup.HealthCheckSettings.from_dict({}) == sup.HealthCheckSettings()
    with pytest.raises(ValueError, match="not http, tcp or none"):
        sup.HealthCheckSettings.from_dict({"type": "grpc"})


# --------------------------------------------------------------------------- one pass, without the loop


def test_reconcile_once_starts_instances_with_the_images_command_and_environment(local: Local) -> None:
    local.group(desired=2)
    result = local.reconcile()
    assert len(result.started) == 2 and not result.destroyed
    up = wait_for("2 instances Up", lambda: local.reconcile() and local.all_up(2))

    ports = {instance.port for instance in up}
    assert len(ports) == 2 and None not in ports
    for instance in up:
        assert instance.host == "127.0.0.1" and instance.health_reason == "" and instance.restarts == 0
        status, body = get(instance.port or 0)
        info = json.loads(body)
        assert status == 200 and info["id"] == instance.id
        assert info["cwd"] == local.image.manifest["path"]
        env = info["env"]
        assert env["PORT"] == str(instance.port) and env["HOST"] == "127.0.0.1"
        assert env["GENNAKER_SERVER_GROUP"] == GROUP and env["GENNAKER_INSTANCE_ID"] == instance.id
        assert env["APP_IMAGE_VAR"] == "1" and env["APP_GROUP_VAR"] == "from-group"
        assert not [key for key in env if key.startswith("AIRFLOW_")]  # conftest sets AIRFLOW_HOME
        log = local.home / "local" / "logs" / GROUP / f"{instance.id}.log"
        assert "listening on" in log.read_text()
    assert {event.subject for event in local.events("instance.up")} == {instance.id for instance in up}


def test_a_port_taken_while_the_instance_was_down_is_replaced(local: Local) -> None:
    local.group(desired=1)
    local.reconcile()
    (instance,) = wait_for("1 instance Up", lambda: local.reconcile() and local.all_up(1))
    old_port = instance.port
    os.kill(local.pids()[instance.id], signal.SIGKILL)
    wait_for("the instance to die", lambda: not local.pids())
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the health checks left TIME_WAITs
        squatter.bind(("127.0.0.1", old_port or 0))
        squatter.listen()
        local.reconcile()  # notices the crash; restarts after the backoff
        (instance,) = wait_for("the instance Up again", lambda: local.reconcile() and local.all_up(1))
    assert instance.port != old_port and instance.restarts == 1
    log = (local.home / "local" / "logs" / GROUP / f"{instance.id}.log").read_text()
    assert f"port {old_port} is in use; using port {instance.port} instead" in log


def test_a_health_check_that_never_passes_leaves_the_instance_starting_with_the_reason(local: Local) -> None:
    local.group(desired=1, APP_MODE="sick")
    local.reconcile()
    (instance,) = wait_for(
        "the failing health check's reason",
        lambda: local.reconcile() and [i for i in local.instances() if i.health_reason == "HTTP 503 on /health"],
    )
    assert instance.health is Health.STARTING
    time.sleep(0.5)
    local.reconcile()
    (instance,) = local.instances()
    assert instance.health is Health.STARTING and instance.restarts == 0 and local.pids()

    # in the grace period the reason says so
    local.store.update_server_group(
        ACCOUNT, REGION, GROUP, lambda g: g.replace(health_check={**HEALTH, "gracePeriod": "1m"})
    )
    local.store.delete_instance(instance.id)  # terminate it: a replacement starts in its grace period
    local.reconcile()
    grace = "in its grace period (1m); last check: HTTP 503 on /health"
    (fresh,) = wait_for(
        "a grace-period reason",
        lambda: local.reconcile() and [i for i in local.instances() if i.health_reason == grace],
    )
    assert fresh.id != instance.id and fresh.health is Health.STARTING


def test_health_type_none_is_up_once_the_process_runs(local: Local) -> None:
    local.group(desired=1, health={"type": "none"})
    local.reconcile()
    wait_for("Up without a health check", lambda: local.reconcile() and local.all_up(1))


# --------------------------------------------------------------------------- the supervisor process


def test_supervisor_keeps_desired_instances_up_and_resizes(local: Local) -> None:
    local.group(desired=2)
    local.ensure()
    up = wait_for("2 instances Up", lambda: local.all_up(2))
    assert len({instance.port for instance in up}) == 2
    first_pids = local.pids()
    assert all(get(instance.port or 0, "/health")[0] == 200 for instance in up)

    local.resize(3)
    up3 = wait_for("3 instances Up", lambda: local.all_up(3))
    assert len({instance.port for instance in up3}) == 3
    assert {i: p for i, p in local.pids().items() if i in first_pids} == first_pids  # the first two untouched

    three_pids = local.pids()
    local.resize(1)
    (last,) = wait_for("1 instance left", lambda: local.all_up(1))
    oldest = min(up3, key=lambda instance: instance.launched)
    assert last.id == oldest.id  # the newest were stopped
    stopped = [pid for iid, pid in three_pids.items() if iid != last.id]
    wait_for("the extra processes to be gone", lambda: not [pid for pid in stopped if _running(pid)])
    terminated = wait_for("2 terminated events", lambda: len(local.events("instance.terminated")) == 2 or None)
    assert terminated and local.pids() == {last.id: three_pids[last.id]}


def test_a_killed_instance_is_restarted_and_counted(local: Local) -> None:
    local.group(desired=2)
    local.ensure()
    up = wait_for("2 instances Up", lambda: local.all_up(2))
    victim = up[0]
    old_pid = local.pids()[victim.id]
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> Instance | None:
        instance = next(i for i in local.instances() if i.id == victim.id)
        pid = local.pids().get(victim.id)
        return instance if instance.health is Health.UP and pid and pid != old_pid else None

    instance = wait_for("the killed instance Up again", restarted)
    assert instance.restarts == 1 and instance.port == victim.port
    (crash,) = local.events("instance.crashed")
    assert crash.subject == victim.id and "exit code -9 (killed by SIGKILL)" in crash.message
    assert [event.subject for event in local.events("instance.restarted")] == [victim.id]
    assert local.all_up(2)


def test_a_program_that_always_crashes_is_down_after_the_restart_limit(local: Local) -> None:
    local.group(desired=1, APP_MODE="crash")
    local.ensure()
    limit = FAST.restart_limit

    def gave_up() -> Instance | None:
        instances = local.instances()
        return instances[0] if instances and " times; " in instances[0].health_reason else None

    instance = wait_for("the instance to give up", gave_up)
    log = local.home / "local" / "logs" / GROUP / f"{instance.id}.log"
    assert instance.health is Health.DOWN and instance.restarts == limit
    assert instance.health_reason == f"crashed {limit + 1} times; last exit code 3; see {log}"
    assert log.read_text().count("crashing on purpose") == limit + 1
    wait_for("the instance.failed event", lambda: len(local.events("instance.failed")) == 1 or None)
    time.sleep(0.5)  # and stays down: no more restarts
    (again,) = local.instances()
    assert again.restarts == limit and not local.pids()


def test_terminating_an_instance_replaces_it(local: Local) -> None:
    local.group(desired=2)
    local.ensure()
    up = wait_for("2 instances Up", lambda: local.all_up(2))
    victim = up[1]
    victim_pid = local.pids()[victim.id]
    local.store.delete_instance(victim.id)  # what the provider's terminate_instance does
    fresh = wait_for("a replacement Up", lambda: (u := local.all_up(2)) and victim.id not in {i.id for i in u} and u)
    assert up[0].id in {instance.id for instance in fresh}
    wait_for("the terminated process to be gone", lambda: not _running(victim_pid))


def test_destroying_the_group_stops_every_process_and_the_supervisor(local: Local) -> None:
    local.group(desired=2)
    supervisor = local.ensure()
    wait_for("2 instances Up", lambda: local.all_up(2))
    pids = list(local.pids().values())
    local.store.delete_server_group(ACCOUNT, REGION, GROUP)
    wait_for("the supervisor to exit", lambda: not sup.pid_alive(supervisor))
    assert not [pid for pid in pids if _running(pid)]
    assert not processes_of(local.mark, local.home)
    assert sup.supervisor_pid(local.home, ACCOUNT, REGION, GROUP) is None


def test_a_group_marked_destroying_loses_its_instances(local: Local) -> None:
    local.group(desired=1)
    supervisor = local.ensure()
    wait_for("1 instance Up", lambda: local.all_up(1))
    local.store.update_server_group(ACCOUNT, REGION, GROUP, lambda g: g.replace(tags={sup.DESTROYING_TAG: "true"}))
    wait_for("the supervisor to exit", lambda: not sup.pid_alive(supervisor))
    assert local.instances() == [] and not processes_of(local.mark, local.home)


def test_ensure_running_starts_one_supervisor_however_often_it_is_called(local: Local) -> None:
    local.group(desired=1)
    pids: list[int] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            pids.append(local.ensure())
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and len(set(pids)) == 1
    assert local.ensure() == pids[0]
    wait_for("1 instance Up", lambda: local.all_up(1))
    assert supervisors_of(local.home) == [pids[0]]

    # started by hand while one runs: it sees the lock and exits
    manual = subprocess.run(
        [
            sys.executable,
            "-m",
            sup.MODULE,
            "--home",
            str(local.home),
            "--state",
            str(local.store.path),
            "--account",
            ACCOUNT,
            "--region",
            REGION,
            "--server-group",
            GROUP,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert manual.returncode == 0 and "already runs" in manual.stderr
    assert supervisors_of(local.home) == [pids[0]]


def test_a_stale_pid_file_is_replaced(local: Local) -> None:
    local.group(desired=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths = sup.SupervisorPaths.of(local.home, ACCOUNT, REGION, GROUP)
    paths.pid_file.parent.mkdir(parents=True, exist_ok=True)
    paths.pid_file.write_text(f"{dead.pid}\n")
    pid = local.ensure()
    assert pid != dead.pid and paths.pid_file.read_text().strip() == str(pid)
    paths.pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not a supervisor
    assert local.ensure() == pid


def test_the_supervisor_survives_the_death_of_the_process_that_started_it(local: Local) -> None:
    local.group(desired=1)
    starter = f"""
import os, signal, sys
from gennaker.cloud.local.supervisor import SupervisorOptions, ensure_running
from gennaker.cloud.local.state import StateStore
pid = ensure_running(StateStore({str(local.store.path)!r}), {str(local.home)!r}, {ACCOUNT!r}, {REGION!r}, {GROUP!r},
                     options=SupervisorOptions(interval=0.1, restart_backoff=0.05, stop_grace=2.0))
print(pid, flush=True)
os.killpg(0, signal.SIGKILL)  # as when Airflow kills a task's whole process group
"""
    task = subprocess.run(
        [sys.executable, "-c", starter], capture_output=True, text=True, timeout=30, start_new_session=True
    )
    assert task.returncode == -signal.SIGKILL, task.stderr
    supervisor = int(task.stdout.split()[0])
    (instance,) = wait_for("1 instance Up under the orphaned supervisor", lambda: local.all_up(1))
    assert sup.pid_alive(supervisor) and sup.supervisor_pid(local.home, ACCOUNT, REGION, GROUP) == supervisor
    assert get(instance.port or 0, "/health")[0] == 200
    assert sup.stop(local.home, ACCOUNT, REGION, GROUP)
    assert not sup.pid_alive(supervisor) and not local.pids()
    (stopped,) = local.instances()
    assert stopped.health is Health.DOWN and stopped.health_reason == "stopped with its supervisor"


def test_a_restarted_supervisor_adopts_live_instances_and_restarts_dead_ones(local: Local) -> None:
    local.group(desired=2)
    first = local.ensure()
    up = wait_for("2 instances Up", lambda: local.all_up(2))
    pids = local.pids()
    os.kill(first, signal.SIGKILL)  # the supervisor dies; its instances, in their own sessions, do not
    wait_for("the supervisor to die", lambda: not sup.pid_alive(first))
    survivor, victim = up
    os.kill(pids[victim.id], signal.SIGKILL)  # and one instance dies while nobody watches
    wait_for("the instance to die", lambda: not _running(pids[victim.id]))
    assert _running(pids[survivor.id])

    second = local.ensure()
    assert second != first
    wait_for(
        "2 instances Up again", lambda: (u := local.all_up(2)) and local.pids()[victim.id] != pids[victim.id] and u
    )
    assert local.pids()[survivor.id] == pids[survivor.id]  # adopted, not restarted
    by_id = {instance.id: instance for instance in local.instances()}
    assert by_id[survivor.id].restarts == 0 and by_id[victim.id].restarts == 1
    assert [event.subject for event in local.events("instance.adopted")] == [survivor.id]
    assert not local.events("instance.crashed")  # gone while unwatched is not a crash


def test_stop_then_ensure_running_starts_the_instances_again(local: Local) -> None:
    local.group(desired=1)
    local.ensure()
    (before,) = wait_for("1 instance Up", lambda: local.all_up(1))
    assert sup.stop(local.home, ACCOUNT, REGION, GROUP)
    assert not local.pids() and not supervisors_of(local.home)
    assert not sup.stop(local.home, ACCOUNT, REGION, GROUP)  # nothing left to stop
    local.ensure()
    (after,) = wait_for("the instance Up again", lambda: local.all_up(1))
    assert after.id == before.id and after.port == before.port and after.restarts == 0
