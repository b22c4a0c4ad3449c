"""An upgrade orphans nothing: supervisors and proxies started by gennaker 0.1's module names are ours.

gennaker 0.1 started ``python -m gennaker.cloud.local_supervisor`` and ``python -m gennaker.cloud.local_proxy``
with the arguments ``ensure_running`` passes today. Processes started that way before an upgrade keep
running through it: this version must find them (no second supervisor or proxy), report their pids, and
stop them and their instances.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from localcloud import describe, free_port, marked_processes, proc_running, wait_for

from gennaker.cloud.local import procenv
from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import Capacity, Health, Image, Listener, LoadBalancer, ServerGroup

if not Path("/proc/self/stat").exists():  # pragma: no cover - identity checks read /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

ACCOUNT = REGION = "local"
GROUP = "legacy-test-v000"
BALANCER = "legacy-lb"
FAST = local_supervisor.SupervisorOptions(interval=0.1, restart_limit=3, restart_backoff=0.05, stop_grace=2.0)
HEALTH = {"type": "http", "path": "/health", "interval": 0.1, "timeout": 1}

APP = r"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["GENNAKER_INSTANCE_ID"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


@dataclass
class Home:
    """A gennaker home with a state store holding one server group of a tiny app and one load balancer."""

    path: Path
    store: StateStore
    mark: str
    port: int

    def start_legacy(self, module: str, *args: str) -> subprocess.Popen[bytes]:
        """``python -m <module> --home H --state S --account A --region R <args>``, detached as 0.1 did."""
        argv = [sys.executable, "-m", module, "--home", str(self.path), "--state", str(self.store.path)]
        argv += ["--account", ACCOUNT, "--region", REGION, *args]
        log = self.path / "legacy.log"
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.path,
                env=procenv.service_env(),
            )

    def up(self) -> list[int]:
        """The pids of the group's instances once its one instance is Up, else an empty list."""
        instances = self.store.list_instances(account=ACCOUNT, region=REGION, server_group=GROUP)
        pids = local_supervisor.instance_pids(self.path, ACCOUNT, REGION, GROUP)
        if len(instances) == 1 and instances[0].health is Health.UP and len(pids) == 1:
            return list(pids.values())
        return []


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    mark = uuid.uuid4().hex
    monkeypatch.setenv("GENNAKER_TEST_MARK", mark)  # passed on through GENNAKER_LOCAL_PASS_ENV (conftest)
    path = tmp_path / "home"
    path.mkdir()
    app_dir = tmp_path / "image"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    store = StateStore(path / "local" / "state.db")
    image = Image(
        id="img-legacy",
        name="legacy-1.0",
        package="legacy",
        version="1.0",
        base="none",
        region=REGION,
        account=ACCOUNT,
        inputs_hash="0" * 64,
        manifest={"path": str(app_dir), "start_command": [sys.executable, "app.py"]},
    )
    store.put_image(image)
    store.put_server_group(
        ServerGroup(
            name=GROUP,
            account=ACCOUNT,
            region=REGION,
            image_id=image.id,
            capacity=Capacity(min=0, max=1, desired=1),
            health_check=HEALTH,
            load_balancers=(BALANCER,),
        )
    )
    port = free_port()
    store.put_load_balancer(
        LoadBalancer(
            name=BALANCER, application="legacy", account=ACCOUNT, region=REGION, listeners=(Listener(port=port),)
        )
    )
    try:
        yield Home(path, store, mark, port)
    finally:
        local_supervisor.stop(path, ACCOUNT, REGION, GROUP, timeout=10)
        local_proxy.stop(store, path, ACCOUNT, REGION, BALANCER, timeout=10)
        store.close()
        left = marked_processes(mark, started_from=path)
        for pid in left:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)
        assert not left, f"left running: {[describe(pid) for pid in left]}"


def test_a_supervisor_started_by_the_old_module_name_is_found_reused_and_stopped(home: Home) -> None:
    legacy = home.start_legacy("gennaker.cloud.local_supervisor", "--server-group", GROUP, *FAST.to_args())
    try:
        found = wait_for(
            "the legacy supervisor to be found",
            lambda: local_supervisor.supervisor_pid(home.path, ACCOUNT, REGION, GROUP),
        )
        assert found == legacy.pid
        paths = local_supervisor.SupervisorPaths.of(home.path, ACCOUNT, REGION, GROUP)
        assert local_supervisor.is_supervisor(legacy.pid, paths)  # by its command line, not only by its lock
        instance_pids = wait_for("its instance Up", home.up)

        assert (
            local_supervisor.ensure_running(home.store, home.path, ACCOUNT, REGION, GROUP, options=FAST) == legacy.pid
        )
        assert local_supervisor.supervisor_pid(home.path, ACCOUNT, REGION, GROUP) == legacy.pid
        assert legacy.poll() is None

        assert local_supervisor.stop(home.path, ACCOUNT, REGION, GROUP, timeout=10) is True
        assert legacy.wait(timeout=10) == 0
        assert not any(proc_running(pid) for pid in instance_pids)
        assert local_supervisor.supervisor_pid(home.path, ACCOUNT, REGION, GROUP) is None
        assert local_supervisor.instance_pids(home.path, ACCOUNT, REGION, GROUP) == {}
    finally:
        if legacy.poll() is None:
            os.killpg(legacy.pid, signal.SIGKILL)
            legacy.wait()


def test_a_proxy_started_by_the_old_module_name_is_found_reused_and_stopped(home: Home) -> None:
    local_supervisor.ensure_running(home.store, home.path, ACCOUNT, REGION, GROUP, options=FAST)
    wait_for("the instance Up", home.up)
    legacy = home.start_legacy("gennaker.cloud.local_proxy", "--load-balancer", BALANCER)
    try:
        found = wait_for(
            "the legacy proxy to be found", lambda: local_proxy.running_pid(home.path, ACCOUNT, REGION, BALANCER)
        )
        assert found == legacy.pid
        with urllib.request.urlopen(f"http://127.0.0.1:{home.port}/", timeout=5) as response:
            assert response.status == 200 and response.read().startswith(b"i-")

        assert local_proxy.ensure_running(home.store, home.path, ACCOUNT, REGION, BALANCER) == legacy.pid
        assert local_proxy.running_pid(home.path, ACCOUNT, REGION, BALANCER) == legacy.pid
        assert legacy.poll() is None

        assert local_proxy.stop(home.store, home.path, ACCOUNT, REGION, BALANCER, timeout=10) is True
        assert legacy.wait(timeout=10) == 0
        assert local_proxy.running_pid(home.path, ACCOUNT, REGION, BALANCER) is None
    finally:
        if legacy.poll() is None:
            os.killpg(legacy.pid, signal.SIGKILL)
            legacy.wait()
