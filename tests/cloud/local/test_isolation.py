"""The local provider's processes: a minimal environment, size-bounded logs, private files.

Instances run as the same OS user as Airflow, so an instance can read its supervisor's
``/proc/<ppid>/environ``: the tests start supervisors, instances, proxies and an sdist
build from a test process whose environment holds Airflow-like secrets, and look for
them where an instance (or a build backend) could read them. Then logs that an instance
floods stay bounded, and what gennaker creates in its home is its user's alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
import sys
import tarfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from localcloud import describe, free_port, marked_processes, wait_for

from gennaker.cloud.local import logfiles, procenv
from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local.images import bake
from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.locks import ClusterLocks
from gennaker.cloud.model import (
    BakeRequest,
    Capacity,
    Health,
    Image,
    Listener,
    LoadBalancer,
    OperationStatus,
    ServerGroup,
    ServerGroupSpec,
)
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import InvalidRequest

if not Path("/proc/self/environ").exists():  # pragma: no cover - the point is what /proc shows
    pytest.skip("needs Linux /proc", allow_module_level=True)

ACCOUNT = REGION = "local"
GROUP = "probe-test-v000"
FAST = local_supervisor.SupervisorOptions(interval=0.1, restart_limit=3, restart_backoff=0.05, stop_grace=2.0)
HEALTH = {"type": "http", "path": "/health", "interval": 0.1, "timeout": 1}
PYTHON_BASE = f"python-{sys.version_info[0]}.{sys.version_info[1]}"

APP = r"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def environ_of(pid):
    raw = open(f"/proc/{pid}/environ", "rb").read().decode("utf-8", "replace")
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)


if os.environ.get("APP_LINES"):  # a flood of output before it serves
    for number in range(int(os.environ["APP_LINES"])):
        sys.stdout.write(f"line {number:06d} {'x' * 88}\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/env":
            body = json.dumps({"own": dict(os.environ), "parent": environ_of(os.getppid())}).encode()
        elif self.path.startswith("/say/"):
            print(self.path[5:], flush=True)
            body = b"said"
        else:
            body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


def secrets() -> dict[str, str]:
    """What the test process's environment holds and nothing the provider starts may see."""
    token = uuid.uuid4().hex
    return {
        "AIRFLOW__API_AUTH__JWT_SECRET": f"jwt-{token}",
        "AIRFLOW__CORE__FERNET_KEY": f"fernet-{token}",
        "AIRFLOW_CONN_SOMETHING": f"postgres://user:pw-{token}@db/x",
        "MY_TEST_SECRET": f"mine-{token}",
    }


def leaks(env: dict[str, str], planted: dict[str, str]) -> list[str]:
    """Names in ``env`` that are Airflow's, planted, or that carry a planted value."""
    return sorted(
        name
        for name, value in env.items()
        if name.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))
        or name in planted
        or any(secret in value for secret in planted.values())
    )


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return bytes(response.read())


@dataclass
class Lab:
    """A gennaker home with a store and an image of :data:`APP`; a test process environment with secrets."""

    home: Path
    store: StateStore
    image: Image
    mark: str
    planted: dict[str, str]
    groups: set[str] = field(default_factory=set)
    balancers: set[str] = field(default_factory=set)

    def group(self, desired: int = 1, **env: str) -> str:
        group = ServerGroup(
            name=GROUP,
            account=ACCOUNT,
            region=REGION,
            image_id=self.image.id,
            capacity=Capacity(min=0, max=2, desired=desired),
            health_check=HEALTH,
            environment={"APP_GROUP_VAR": "from-group", **env},
        )
        self.store.put_server_group(group)
        self.groups.add(GROUP)
        local_supervisor.ensure_running(self.store, self.home, ACCOUNT, REGION, GROUP, options=FAST)
        return GROUP

    def up(self, name: str = GROUP) -> Any:
        def check() -> Any:
            instances = self.store.list_instances(account=ACCOUNT, region=REGION, server_group=name)
            return instances[0] if instances and instances[0].health is Health.UP else None

        return wait_for(f"an Up instance of {name}", check)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    home = tmp_path / "home"
    app_dir = tmp_path / "image"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    planted = secrets()
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    mark = uuid.uuid4().hex
    monkeypatch.setenv("GENNAKER_TEST_MARK", mark)  # passed on through GENNAKER_LOCAL_PASS_ENV (conftest)
    store = StateStore(home / "local" / "state.db")
    image = Image(
        id="img-probe",
        name="probe-1.0",
        package="probe",
        version="1.0",
        base="none",
        region=REGION,
        account=ACCOUNT,
        inputs_hash="0" * 64,
        manifest={"path": str(app_dir), "start_command": [sys.executable, "app.py"], "env": {"APP_IMAGE_VAR": "1"}},
    )
    store.put_image(image)
    lab = Lab(home, store, image, mark, planted)
    try:
        yield lab
    finally:
        stop_everything(home, store, lab.groups, lab.balancers, mark)


def stop_everything(home: Path, store: StateStore, groups: set[str], balancers: set[str], mark: str) -> None:
    """Stop the home's supervisors and proxies; kill (and fail on) anything left running."""
    run_dir = home / "local" / "run" / ACCOUNT / REGION
    for group in groups | {path.name.removesuffix(".alive") for path in run_dir.glob("*.alive")}:
        local_supervisor.stop(home, ACCOUNT, REGION, group, timeout=10)
    for name in balancers:
        local_proxy.stop(store, home, ACCOUNT, REGION, name, timeout=10)
    store.close()
    left = marked_processes(mark, started_from=home)
    for pid in left:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(OSError):
                kill(pid, signal.SIGKILL)
    assert not left, f"left running: {[describe(pid) for pid in left]}"


# --------------------------------------------------------------------------- 1. environments


def test_an_instance_finds_no_secret_in_its_own_or_its_supervisors_environment(lab: Lab) -> None:
    lab.group(desired=1, APP_SECRET_OF_THE_DEPLOY="deploy-value")
    instance = lab.up()
    seen = json.loads(get(instance.port, "/env"))
    own, parent = seen["own"], seen["parent"]

    assert leaks(own, lab.planted) == [] and leaks(parent, lab.planted) == []
    assert not [name for name in (*own, *parent) if name.startswith("AIRFLOW_")]
    # What an instance is given: the image's env, the deploy's environment, its own names, a PATH.
    assert own["APP_IMAGE_VAR"] == "1" and own["APP_SECRET_OF_THE_DEPLOY"] == "deploy-value"
    assert own["PORT"] == str(instance.port) and own["HOST"] == "127.0.0.1"
    assert own["GENNAKER_INSTANCE_ID"] == instance.id and own["GENNAKER_SERVER_GROUP"] == GROUP
    assert own["PATH"] == os.environ["PATH"]
    assert "PYTHONPATH" not in own and "GENNAKER_HOME" not in own
    # The supervisor got its settings and the path to gennaker, not the deploy's environment.
    pid = local_supervisor.supervisor_pid(lab.home, ACCOUNT, REGION, GROUP)
    assert pid is not None and environ_of(pid) == parent
    assert "PYTHONPATH" in parent and "APP_SECRET_OF_THE_DEPLOY" not in parent


def test_a_load_balancer_proxy_finds_no_secret_in_its_environment(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENNAKER_LB_METRICS_RETENTION_HOURS", "5")  # a setting the proxy reads
    lb = LoadBalancer(
        name="probe-lb", application="probe", account=ACCOUNT, region=REGION, listeners=(Listener(port=free_port()),)
    )
    lab.store.put_load_balancer(lb)
    lab.balancers.add(lb.name)
    pid = local_proxy.ensure_running(lab.store, lab.home, ACCOUNT, REGION, lb.name)

    env = environ_of(pid)
    assert leaks(env, lab.planted) == [] and not [name for name in env if name.startswith("AIRFLOW_")]
    assert env["GENNAKER_LB_METRICS_RETENTION_HOURS"] == "5"


def test_passing_an_airflow_variable_on_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(procenv.PASS_ENV, "JAVA_HOME, AIRFLOW__CORE__FERNET_KEY")
    with pytest.raises(InvalidRequest, match="AIRFLOW__CORE__FERNET_KEY: Airflow's settings and secrets"):
        procenv.service_env()
    monkeypatch.setenv(procenv.PASS_ENV, "JAVA_HOME,not-a-name")
    with pytest.raises(InvalidRequest, match="'not-a-name', which is not an environment variable name"):
        procenv.instance_env({}, {})


BACKEND = """
import base64, hashlib, io, json, os, zipfile

RECORD_TO = {record!r}


def _line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{{name}},sha256={{digest}},{{len(data)}}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open(RECORD_TO, "w") as out:
        json.dump(dict(os.environ), out)
    files = {{
        "envprobe.py": b"print('probe')\\n",
        "envprobe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: envprobe\\nVersion: 1.0\\n",
        "envprobe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    record = [_line(name, data) for name, data in files.items()] + ["envprobe-1.0.dist-info/RECORD,,"]
    files["envprobe-1.0.dist-info/RECORD"] = ("\\n".join(record) + "\\n").encode()
    name = "envprobe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return name
"""


def make_sdist(folder: Path, record: Path) -> Path:
    """An sdist whose in-tree build backend writes its environment to ``record``."""
    files = {
        "PKG-INFO": "Metadata-Version: 2.1\nName: envprobe\nVersion: 1.0\n",
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": BACKEND.format(record=str(record)),
        "envprobe.py": "print('probe')\n",
    }
    path = folder / "envprobe-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"envprobe-1.0/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_an_sdist_build_finds_no_secret_in_its_environment(lab: Lab, tmp_path: Path) -> None:
    record = tmp_path / "build-environ.json"
    request = BakeRequest(
        package="envprobe",
        version="1.0",
        artifact=str(make_sdist(tmp_path, record)),
        application="probe",
        base=PYTHON_BASE,
        account=ACCOUNT,
        region=REGION,
        start_command="venv/bin/python -m envprobe",
    )
    image = bake(lab.store, request, home=lab.home)

    assert image.manifest["artifact"]["kind"] == "sdist"
    env = json.loads(record.read_text())
    assert leaks(env, lab.planted) == [] and not [name for name in env if name.startswith("AIRFLOW_")]
    assert env["PIP_CONFIG_FILE"] == os.devnull  # pip's settings are ours, not the caller's


# --------------------------------------------------------------------------- 2. logs


def test_copy_truncate_keeps_the_writers_stream_and_the_newest_lines(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    limits = logfiles.LogLimits(max_bytes=2000, keep=2)
    with logfiles.open_log(path) as writer:  # as a child holds it: O_APPEND
        for round_ in range(4):
            for number in range(50):
                writer.write(f"round {round_} line {number:03d} {'x' * 40}\n".encode())
            writer.flush()
            assert logfiles.rotate_if_big(path, limits)
        writer.write(b"after the last rotation\n")
        writer.flush()

    assert path.read_bytes() == b"after the last rotation\n"  # written at the start: no hole of zeros
    newest = logfiles.rotated(path, 1).read_text().splitlines()
    assert newest[-1].startswith("round 3 line 049") and newest[0].startswith("round 3 line")
    assert logfiles.rotated(path, 2).read_text().splitlines()[-1].startswith("round 2 line 049")
    assert not logfiles.rotated(path, 3).exists()
    assert all(logfiles.rotated(path, n).stat().st_size <= limits.max_bytes for n in (1, 2))
    assert not logfiles.rotate_if_big(path, limits)  # small: left alone


def test_log_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert logfiles.LogLimits.from_env({}) == logfiles.LogLimits(10 * 1024 * 1024, 3)
    assert logfiles.LogLimits.from_env({"GENNAKER_LOCAL_LOG_MAX_BYTES": "4096", "GENNAKER_LOCAL_LOG_KEEP": "1"}) == (
        logfiles.LogLimits(4096, 1)
    )
    with pytest.raises(InvalidRequest, match="GENNAKER_LOCAL_LOG_MAX_BYTES='lots' is not a whole number"):
        logfiles.LogLimits.from_env({"GENNAKER_LOCAL_LOG_MAX_BYTES": "lots"})


def test_an_instance_that_floods_its_log_stays_bounded(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    max_bytes, keep = 20_000, 2
    monkeypatch.setenv("GENNAKER_LOCAL_LOG_MAX_BYTES", str(max_bytes))  # read by the supervisor
    monkeypatch.setenv("GENNAKER_LOCAL_LOG_KEEP", str(keep))
    lab.group(desired=1, APP_LINES="5000")  # about 500 kB before it serves
    instance = lab.up()
    log = lab.home / "local" / "logs" / GROUP / f"{instance.id}.log"

    def files() -> list[Path]:
        return [log, *(logfiles.rotated(log, n) for n in range(1, keep + 2))]

    def bounded() -> int | None:
        total = sum(path.stat().st_size for path in files() if path.exists())
        return total if total <= max_bytes * (keep + 1) and logfiles.rotated(log, 1).exists() else None

    wait_for("the instance's log to be rotated within its bound", bounded)
    assert not logfiles.rotated(log, keep + 1).exists()
    kept = "".join(path.read_text() for path in reversed(files()) if path.exists())
    assert "line 004999" in kept and "line 000000" not in kept  # the newest lines are kept

    get(instance.port, "/say/still-writing")  # the instance's stream goes on after rotations
    wait_for("the instance's next line in its log", lambda: "still-writing" in log.read_text())
    assert b"\0" not in log.read_bytes()


def test_the_supervisor_and_the_proxy_rotate_their_own_logs(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    max_bytes, keep = 4096, 1
    monkeypatch.setenv("GENNAKER_LOCAL_LOG_MAX_BYTES", str(max_bytes))
    monkeypatch.setenv("GENNAKER_LOCAL_LOG_KEEP", str(keep))
    lb = LoadBalancer(
        name="probe-lb", application="probe", account=ACCOUNT, region=REGION, listeners=(Listener(port=free_port()),)
    )
    logs = [
        lab.home / "local" / "logs" / GROUP / "supervisor.log",
        local_proxy.log_file(lab.home, lb.name),
    ]
    for log in logs:  # a long history before they start (their own output is too little to wait for)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"old line {number:05d}\n" for number in range(5000)))
    lab.store.put_load_balancer(lb)
    lab.balancers.add(lb.name)
    local_proxy.ensure_running(lab.store, lab.home, ACCOUNT, REGION, lb.name)
    lab.group(desired=1)

    for log in logs:
        wait_for(f"{log.name} to be rotated", lambda log=log: logfiles.rotated(log, 1).exists())
        assert logfiles.rotated(log, 1).stat().st_size <= max_bytes and not logfiles.rotated(log, 2).exists()
        assert "old line 04999" in logfiles.rotated(log, 1).read_text() + log.read_text()


# --------------------------------------------------------------------------- 3. private files


def app_tarball(folder: Path) -> Path:
    path = folder / "probe-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        data = APP.encode()
        member = tarfile.TarInfo("app.py")
        member.size, member.mode = len(data), 0o644
        archive.addfile(member, io.BytesIO(data))
    return path


def test_state_and_log_files_are_private_after_a_deploy(lab: Lab, tmp_path: Path) -> None:
    provider = LocalProvider(ACCOUNT, REGION, home=lab.home)
    try:
        deploy_with_a_load_balancer(provider, lab, app_tarball(tmp_path))
    finally:
        provider.close()
    locks = ClusterLocks(lab.home / "locks.db")
    assert locks.acquire("cluster:local/local/probe-test", "run/task") is None

    open_to_others = []
    for folder, dirs, files in os.walk(lab.home):
        for path in [Path(folder) / name for name in (*dirs, *files)]:
            if artifact_content(path, lab.home / "local" / "images"):
                continue
            if path.lstat().st_mode & 0o077:
                open_to_others.append(f"{path.relative_to(lab.home)} {stat.filemode(path.lstat().st_mode)}")
    assert open_to_others == []
    assert (lab.home / "local" / "state.db-wal").exists()  # SQLite's side files were checked too


def artifact_content(path: Path, images: Path) -> bool:
    """Inside an image directory, but not its manifest: the artifact's own files keep their modes."""
    if not path.is_relative_to(images):
        return False
    parts = path.relative_to(images).parts
    return len(parts) > 1 and parts[0].startswith("img-") and parts[1:] != ("manifest.json",)


def deploy_with_a_load_balancer(provider: LocalProvider, lab: Lab, artifact: Path) -> None:
    def key(purpose: str) -> IdempotencyKey:
        return IdempotencyKey("test_isolation", "run-1", "task", purpose)

    request = BakeRequest(
        package="probe",
        version="1.0",
        artifact=str(artifact),
        application="probe",
        base="none",
        account=ACCOUNT,
        region=REGION,
        start_command=f"{sys.executable} app.py",
    )
    baked = provider.bake(request, key("bake"))
    assert baked.status is OperationStatus.SUCCEEDED, baked.message
    lb = LoadBalancer(
        name="probe-lb", application="probe", account=ACCOUNT, region=REGION, listeners=(Listener(port=free_port()),)
    )
    lab.balancers.add(lb.name)
    assert provider.upsert_load_balancer(lb, key("lb")).status is OperationStatus.SUCCEEDED
    spec = ServerGroupSpec(
        application="probe",
        stack="test",
        account=ACCOUNT,
        region=REGION,
        image_id=baked.result["image_id"],
        capacity=Capacity.fixed(1),
        load_balancers=(lb.name,),
        health_check=HEALTH,
    )
    created = provider.create_server_group(spec, key("create"))
    assert created.status is OperationStatus.SUCCEEDED, created.message
    name = str(created.result["server_group"])
    lab.groups.add(name)
    wait_for(f"{name} Up", lambda: [i for i in provider.instances(name) if i.health is Health.UP])

    def served() -> bool:
        with contextlib.suppress(OSError):  # 503 until the proxy's next look at the routing table
            return get(lb.listeners[0].port, "/health") == b"ok"
        return False

    wait_for("the proxy to serve it", served)
