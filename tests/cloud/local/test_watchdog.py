"""Health that tells the truth: heartbeats, reads of silent supervisors, the watchdog, no routing to the dead.

Real processes, as in test_provider_local (its lab, load loop and teardown that fails on
leftovers are reused); only the 1.0.0 demo service is built and baked here.
"""

# ruff: noqa: F811  (the fixtures imported from test_provider_local are test arguments here)

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from localcloud import build_hello, proc_running, wait_for

from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local import watchdog as local_watchdog
from gennaker.cloud.local.images import bake, images_root
from gennaker.cloud.local.proxy import RoutingTable
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.local.supervisor import DESTROYING_TAG, SupervisorPaths
from gennaker.cloud.model import Capacity, Health, Instance, LoadBalancer, ServerGroup
from gennaker.triggers.server_group import measure_health
from gennaker.web import views
from gennaker.web.reader import read_account

from .test_provider_local import (  # noqa: F401  (fixtures: pytest finds them by name)
    ACCOUNT,
    LB,
    REGION,
    RELEASES,
    Baked,
    Lab,
    Load,
    bounded,
    hello_request,
    lab,
    shared_pip,
)

ROUTE_BOUND = 3.0
"""Seconds after an instance's process died by when the load balancer sends it nothing more."""
RESTORE_BOUND = 15.0
"""Seconds after the kills by when the group has a new supervisor and all its instances Up."""


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory, shared_pip: None) -> dict[str, Baked]:
    """Only 1.0.0, built and baked once for the module."""
    version, options = RELEASES["v1"]
    wheel = build_hello(version, tmp_path_factory.mktemp("hello-dist"), *options)
    home = tmp_path_factory.mktemp("baked-home")
    store = StateStore(home / "local" / "state.db")
    try:
        request = hello_request(wheel, version)
        image = bake(store, request, home=home)
        return {"v1": Baked(request, image.id, images_root(home) / image.id)}
    finally:
        store.close()


class Stranger:
    """Another program that takes a port as soon as it is free: counts what reaches it, answers 500.

    The port may stay unbindable for a moment after its owner died (its closed connections
    linger): the stranger tries again until it is in, or until :meth:`close`.
    """

    def __init__(self, port: int) -> None:
        hits: list[float] = []
        self.hits = hits
        self.port = port
        self.bound_at: float | None = None
        self.server: ThreadingHTTPServer | None = None
        self._closing = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(time.monotonic())
                body = b"not the service\n"
                self.send_response(500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._handler = Handler
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        while not self._closing.is_set():
            try:
                self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
            except OSError:
                self._closing.wait(0.02)
                continue
            self.bound_at = time.monotonic()
            self.server.serve_forever(poll_interval=0.05)
            return

    def close(self) -> None:
        self._closing.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.thread.join(timeout=5)


def kill_and_wait(pid: int, what: str) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(f"{what} (pid {pid}) to die", lambda: not proc_running(pid), timeout=10)


def test_a_killed_supervisor_and_instance_lose_their_traffic_and_the_group_comes_back(lab: Lab) -> None:
    provider = lab.provider()
    image = lab.image(provider, "v1")
    lab.load_balancer(provider)
    name = lab.create(provider, lab.spec(image, 2))
    lab.wait_up(provider, name, 2)
    lab.wait_serving("1.0.0")
    supervisor = local_supervisor.supervisor_pid(lab.home, ACCOUNT, REGION, name)
    assert supervisor is not None
    pids = local_supervisor.instance_pids(lab.home, ACCOUNT, REGION, name)
    victim, survivor = sorted(pids)
    port = {i.id: i.port for i in provider.get_server_group(name).instances}[victim]
    assert port is not None
    seen_up_dead: list[str] = []

    def restored() -> bool:
        """One read that starts nothing (as the Clusters page reads); never Up for the dead process."""
        instances = {i.id: i for i in provider.get_server_group(name).instances}
        now_pids = local_supervisor.instance_pids(lab.home, ACCOUNT, REGION, name)
        if instances[victim].health is Health.UP and now_pids.get(victim) in (None, pids[victim]):
            seen_up_dead.append(instances[victim].health_reason)
        new = local_supervisor.supervisor_pid(lab.home, ACCOUNT, REGION, name)
        return (
            new not in (None, supervisor)
            and len(instances) == 2
            and all(i.health is Health.UP for i in instances.values())
            and now_pids.get(victim) not in (None, pids[victim])
        )

    with Load(lab.port, threads=3, limit=60) as load:
        wait_for("the load to get answers", lambda: len(load.since(0)) > 20)
        kill_and_wait(supervisor, "the supervisor")
        kill_and_wait(pids[victim], f"instance {victim}")
        killed = time.monotonic()
        stranger = Stranger(port)  # another program takes the dead instance's port when it can
        try:
            bound = killed + ROUTE_BOUND

            def past_the_bound() -> bool:
                restored()  # reads all along, too
                return len(load.since(bound)) > 30

            wait_for("requests sent after the bound", past_the_bound, timeout=RESTORE_BOUND, every=0.1)
            late = [at - killed for at in stranger.hits if at > bound]
            assert not late, f"the load balancer sent {len(late)} request(s) to the dead instance's port"
            wait_for(f"{name} restored by the watchdog", restored, timeout=RESTORE_BOUND, every=0.1)
            back = time.monotonic()
            wait_for("requests after the restore", lambda: len(load.since(back)) > 30, timeout=10)
        finally:
            stranger.close()

    assert not seen_up_dead, f"{victim} read Up while its process was dead: {seen_up_dead}"
    assert not [at for at in stranger.hits if at > bound], "requests reached the dead instance's port after the bound"
    failed = [s.error for s in load.since(bound) if s.error]
    assert not failed, failed[:5]
    assert local_supervisor.instance_pids(lab.home, ACCOUNT, REGION, name)[survivor] == pids[survivor]


def test_a_silent_supervisors_instances_read_unknown_with_the_reason(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = lab.provider()
    image = lab.image(provider, "v1")
    name = lab.create(provider, lab.spec(image, 1, load_balancers=()))  # no proxy: no watchdog revives it
    lab.wait_up(provider, name, 1)
    supervisor = local_supervisor.supervisor_pid(lab.home, ACCOUNT, REGION, name)
    assert supervisor is not None
    kill_and_wait(supervisor, "the supervisor")
    (fresh,) = provider.get_server_group(name).instances
    assert fresh.health is Health.UP  # heard from a moment ago: its rows are believed

    beat = local_watchdog.read_heartbeat(SupervisorPaths.of(lab.home, ACCOUNT, REGION, name))
    assert beat is not None and beat.pid == supervisor
    monkeypatch.setattr(local_watchdog, "_clock", lambda: beat.at + 42)  # the reader 42 s later
    last = datetime.fromtimestamp(beat.at, tz=timezone.utc).strftime("%H:%M:%S")
    why = f"supervisor of {name} not heard from for 42 s (last heartbeat {last} UTC); its instances' health is unknown"

    (read,) = provider.get_server_group(name).instances
    (listed,) = provider.list_server_groups("hello")[0].instances
    for instance in (read, listed):
        assert instance.health is Health.UNKNOWN
        assert instance.health_reason.startswith(why), instance.health_reason
        assert "(last known: Up)" in instance.health_reason
    snapshot = read_account(ACCOUNT, provider)  # what the Clusters page shows
    (shown,) = [views.instance(i) for g in snapshot.server_groups for i in g.instances]
    assert shown.health == "Unknown" and shown.health_reason.startswith(why)
    waiting = measure_health(name, [read], desired=1)  # a stage waiting for health does not count it
    assert not waiting.healthy and waiting.states == {"Unknown": 1}


def test_the_routing_table_leaves_out_instances_whose_process_ended() -> None:
    lb = LoadBalancer(name=LB, application="hello", account=ACCOUNT, region=REGION, clusters=("hello-prod",))
    up = tuple(
        Instance(id=f"i-{port}", server_group="hello-prod-v001", host="127.0.0.1", port=port, health=Health.UP)
        for port in (1001, 1002)
    )
    group = ServerGroup(
        name="hello-prod-v001", account=ACCOUNT, region=REGION, image_id="img-1", capacity=Capacity.fixed(2)
    ).replace(instances=up)
    table = RoutingTable(lb, [group], {}, ended=frozenset({"i-1001"}))
    picks = {pick[1].id for _ in range(10) if (pick := table.choose(None, set(), frozenset()))}
    assert picks == {"i-1002"}
    assert table.choose(None, {"i-1002"}, frozenset()) is None  # never the ended one, even as a last resort
    assert "not sending to i-1001: their processes have ended" in table.describe()


def test_the_watchdog_restarts_what_died_once_and_leaves_alone_what_was_stopped_or_is_going(lab: Lab) -> None:
    provider = lab.provider()
    image = lab.image(provider, "v1")
    lab.load_balancer(provider)
    name = lab.create(provider, lab.spec(image, 1))
    lab.wait_up(provider, name, 1)
    store, home = provider.store, lab.home

    assert local_supervisor.stop(home, ACCOUNT, REGION, name)  # on purpose: stays stopped
    assert local_watchdog.revive(store, home) == []
    (stopped,) = provider.get_server_group(name).instances
    assert stopped.health is Health.DOWN  # stop() stopped its instances too, and said so

    provider.instances(name)  # a read of the provider starts it again
    lab.wait_up(provider, name, 1)
    supervisor = local_supervisor.supervisor_pid(home, ACCOUNT, REGION, name)
    proxy = local_proxy.running_pid(home, ACCOUNT, REGION, LB)
    assert supervisor is not None and proxy is not None
    os.kill(proxy, signal.SIGKILL)  # both watchdogs die at once: only this test's calls revive them
    kill_and_wait(supervisor, "the supervisor")
    wait_for("the proxy to die", lambda: not proc_running(proxy), timeout=10)
    revived = local_watchdog.revive(store, home)
    assert sorted(revived) == [f"proxy of {LB}", f"supervisor of {name}"]
    assert local_watchdog.revive(store, home) == []  # running: never a second copy
    lab.wait_up(provider, name, 1)
    lab.wait_serving("1.0.0")

    supervisor = local_supervisor.supervisor_pid(home, ACCOUNT, REGION, name)
    proxy = local_proxy.running_pid(home, ACCOUNT, REGION, LB)
    assert supervisor is not None and proxy is not None
    os.kill(proxy, signal.SIGKILL)
    kill_and_wait(supervisor, "the supervisor")
    wait_for("the proxy to die", lambda: not proc_running(proxy), timeout=10)
    store.update_server_group(ACCOUNT, REGION, name, lambda g: g.replace(tags={**g.tags, DESTROYING_TAG: "true"}))
    store.delete_load_balancer(ACCOUNT, REGION, LB)
    assert local_watchdog.revive(store, home) == []  # being destroyed, deleted: left dead
    assert local_supervisor.supervisor_pid(home, ACCOUNT, REGION, name) is None
    assert local_proxy.running_pid(home, ACCOUNT, REGION, LB) is None
