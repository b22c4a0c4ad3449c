"""The local load balancer: a real proxy process in front of real HTTP backends on 127.0.0.1.

Backends are a tiny stdlib server (``backend.py`` in tmp) that answers with its own name;
their instances are written straight into a tmp state store as Up (no supervisor runs).
Every process a test starts is killed (its whole process group) when the test ends.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from localcloud import free_port, wait_for

from gennaker.cloud.local.proxy import (
    HISTOGRAM_BOUNDS_MS,
    ListenerPortInUse,
    MetricsRecorder,
    RoutingTable,
    ensure_metrics_table,
    ensure_running,
    histogram_quantile,
    log_file,
    read_metrics,
    running_pid,
    share_weights,
    stop,
)
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import (
    Capacity,
    Firewall,
    FirewallRule,
    Health,
    Instance,
    Listener,
    LoadBalancer,
    ServerGroup,
)
from gennaker.errors import NotFound

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the local provider runs on POSIX")

ACCOUNT, REGION = "local", "local"
HOST = "127.0.0.1"
LB = "hello-prod"
V1, V2 = "hello-prod-v001", "hello-prod-v002"

BACKEND = r"""
import json, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ["NAME"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = self.path.split("/")
        status = 200
        if self.path.startswith("/slow/"):
            time.sleep(int(parts[2]) / 1000)
        if self.path.startswith("/status/"):
            status = int(parts[2])
        if self.path == "/chunked":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n")
            for piece in (NAME.encode(), b"-", b"chunked"):
                self.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/echo":
            headers = dict(self.headers.items())
            answer = {"name": NAME, "method": self.command, "headers": headers, "body": body.decode()}
            payload = json.dumps(answer).encode()
        else:
            payload = NAME.encode()
        head = f"HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {len(payload)}\r\n\r\n"
        # one write: a backend killed mid-answer never leaves half an answer behind
        self.wfile.write(head.encode() + (b"" if self.command == "HEAD" else payload))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT") or 0)), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@dataclass
class Backend:
    name: str
    port: int
    proc: subprocess.Popen[bytes]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def group(self) -> str | None:
        return self.headers.get("x-gennaker-server-group")

    @property
    def text(self) -> str:
        return self.body.decode()


class Client:
    """A keep-alive HTTP/1.1 client of the proxy."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=10)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> Reply:
        try:
            self.conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = self.conn.getresponse()
            data = response.read()
        except Exception:
            self.conn.close()
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
            raise
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def close(self) -> None:
        self.conn.close()


class Lab:
    """A tmp gennaker home, its state store, backends, and the proxies started from it."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "home"
        self.store = StateStore(self.home / "local" / "state.db")
        self.script = tmp_path / "backend.py"
        self.script.write_text(BACKEND)
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: set[int] = set()
        self.clients: list[Client] = []

    # --------------------------------------------------------------- state

    def backend(self, name: str) -> Backend:
        proc = subprocess.Popen(
            [sys.executable, str(self.script)],
            env={**os.environ, "NAME": name, "PORT": "0"},
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, f"backend {name} did not start"
        return Backend(name, int(proc.stdout.readline()), proc)

    def group(
        self,
        name: str,
        backends: tuple[Backend, ...] = (),
        *,
        down: int = 0,
        enabled: bool = True,
        load_balancers: tuple[str, ...] = (),
        firewalls: tuple[str, ...] = (),
        region: str = REGION,
    ) -> ServerGroup:
        group = ServerGroup(
            name=name,
            account=ACCOUNT,
            region=region,
            image_id="img-1",
            capacity=Capacity.fixed(len(backends) + down),
            enabled=enabled,
            load_balancers=load_balancers,
            firewalls=firewalls,
        )
        self.store.put_server_group(group)
        for backend in backends:
            instance = Instance(id=backend.name, server_group=name, host=HOST, port=backend.port, health=Health.UP)
            self.store.put_instance(instance, account=ACCOUNT, region=region)
        for index in range(down):  # Down, on a port nobody listens on: routing there would fail
            instance = Instance(
                id=f"{name}-down-{index}", server_group=name, host=HOST, port=free_port(), health=Health.DOWN
            )
            self.store.put_instance(instance, account=ACCOUNT, region=region)
        return group

    def ghost(self, group: str) -> None:
        """An instance recorded Up whose process is gone (the port refuses connections)."""
        instance = Instance(id=f"{group}-ghost", server_group=group, host=HOST, port=free_port(), health=Health.UP)
        self.store.put_instance(instance, account=ACCOUNT, region=REGION)

    def load_balancer(
        self, *, clusters: tuple[str, ...] = ("hello-prod",), weights: dict[str, int] | None = None
    ) -> LoadBalancer:
        lb = LoadBalancer(
            name=LB,
            application="hello",
            account=ACCOUNT,
            region=REGION,
            listeners=(Listener(port=self.port),),
            clusters=clusters,
            weights=weights or {},
        )
        self.store.put_load_balancer(lb)
        return lb

    def set_enabled(self, name: str, enabled: bool) -> None:
        self.store.update_server_group(ACCOUNT, REGION, name, lambda g: g.replace(enabled=enabled))

    # --------------------------------------------------------------- proxy and clients

    def start(self) -> int:
        pid = ensure_running(self.store, self.home, ACCOUNT, REGION, LB)
        self.pids.add(pid)
        return pid

    def client(self) -> Client:
        client = Client(self.port)
        self.clients.append(client)
        return client

    def get(self, path: str = "/") -> Reply:
        client = Client(self.port)
        try:
            return client.request("GET", path)
        finally:
            client.close()

    def log(self) -> str:
        return log_file(self.home, LB).read_text()

    def proxies(self) -> list[int]:
        """Live proxy processes started from this lab's home (zombies excluded)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"gennaker.cloud.local.proxy" in cmdline and str(self.home).encode() in cmdline:
                found.append(int(entry.name))
        return found

    def close(self) -> None:
        for client in self.clients:
            client.close()
        with contextlib.suppress(Exception):
            stop(self.store, self.home, ACCOUNT, REGION, LB, timeout=5)
        for pid in self.pids | set(self.proxies() if Path("/proc").is_dir() else ()):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for proc in self.procs:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        self.store.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def kill(backend: Backend) -> None:
    os.killpg(backend.proc.pid, signal.SIGKILL)
    backend.proc.wait(timeout=10)


def hammer(lab: Lab, threads: int, seconds: float, events: Callable[[], None]) -> list[tuple[float, str, Reply | None]]:
    """``threads`` clients GET / in a loop while ``events`` runs; every answer as (time, error, reply)."""
    results: list[tuple[float, str, Reply | None]] = []
    lock = threading.Lock()
    done = threading.Event()

    def loop() -> None:
        client = Client(lab.port)
        try:
            while not done.is_set():
                try:
                    reply = client.request("GET", "/")
                    error = "" if reply.status == 200 else f"status {reply.status}: {reply.text}"
                except Exception as exc:  # counted as a failure
                    reply, error = None, f"{type(exc).__name__}: {exc}"
                with lock:
                    results.append((time.monotonic(), error, reply))
        finally:
            client.close()

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + seconds
    try:
        events()
        time.sleep(max(0.0, deadline - time.monotonic()))
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=15)
    assert not any(worker.is_alive() for worker in workers), "a client thread hung"
    return results


# --------------------------------------------------------------------------- pure functions


def test_share_weights() -> None:
    assert share_weights({"canary": 10}, ["base", "canary"]) == {"base": 90.0, "canary": 10.0}
    assert share_weights({}, ["a", "b"]) == {"a": 50.0, "b": 50.0}
    assert share_weights({"a": 30}, ["a", "b", "c"]) == {"a": 30.0, "b": 35.0, "c": 35.0}
    assert share_weights({"a": 1, "b": 3}, ["a", "b"]) == {"a": 1.0, "b": 3.0}  # all weighted: relative
    assert share_weights({"a": 0, "gone": 50}, ["a"]) == {"a": 1.0}  # nothing positive: share equally
    assert share_weights({"a": 120}, ["a", "b"]) == {"a": 120.0, "b": 0.0}


def test_histogram_quantile_and_metrics_recorder(tmp_path: Path) -> None:
    histogram = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)
    assert histogram_quantile(histogram, 0.5) is None
    histogram[3] = 10  # ten requests in (5 ms, 10 ms]
    assert histogram_quantile(histogram, 0.5) == pytest.approx(7.5)
    assert histogram_quantile(histogram, 0.99, max_ms=8.0) == 8.0

    store = StateStore(tmp_path / "state.db")
    ensure_metrics_table(store)
    recorder = MetricsRecorder(ACCOUNT, REGION, LB)
    for latency in range(1, 101):
        recorder.record(V1, float(latency), error=latency > 95, now=1000.5)
    recorder.record(V1, 3.0, error=False, now=1001.2)
    assert recorder.flush(store) == 2  # both seconds are over
    recorder.record(V1, 1.0, error=True, now=1001.9)  # the same second again: merged into its row
    recorder.flush(store, final=True)
    first, second = read_metrics(store, ACCOUNT, REGION, V1, 1000, 1002)
    assert (first.ts, first.requests, first.errors) == (1000, 100, 5)
    assert (first.latency_p50_ms, first.latency_p90_ms, first.latency_p99_ms) == (50.0, 90.0, 99.0)
    assert first.latency_sum_ms == sum(range(1, 101)) and first.latency_max_ms == 100.0
    assert sum(first.histogram) == 100 and first.latency_avg_ms == pytest.approx(50.5)
    assert (second.ts, second.requests, second.errors, second.latency_max_ms) == (1001, 2, 1, 3.0)
    assert read_metrics(store, ACCOUNT, REGION, V1, 1001, 1001) == []  # [start, end)
    start, end = datetime.fromtimestamp(1000, timezone.utc), datetime.fromtimestamp(1001, timezone.utc)
    assert [b.ts for b in read_metrics(store, ACCOUNT, REGION, V1, start, end)] == [1000]
    assert read_metrics(StateStore(tmp_path / "empty.db"), ACCOUNT, REGION, V1, 0, 2000) == []


# --------------------------------------------------------------------------- routing


def memory_group(name: str, *ports: int, firewalls: tuple[str, ...] = ()) -> ServerGroup:
    instances = tuple(
        Instance(id=f"{name}-{port}", server_group=name, host=HOST, port=port, health=Health.UP) for port in ports
    )
    return ServerGroup(
        name=name,
        account=ACCOUNT,
        region=REGION,
        image_id="img-1",
        capacity=Capacity.fixed(len(ports)),
        instances=instances,
        firewalls=firewalls,
    )


def test_routing_table_keeps_its_rotation_when_rebuilt() -> None:
    lb = LoadBalancer(
        name=LB, application="hello", account=ACCOUNT, region=REGION, clusters=("hello-prod",), weights={V2: 10}
    )
    groups = [memory_group(V1, 1001, 1002), memory_group(V2, 2001)]
    table = RoutingTable(lb, groups, {})
    picks = []
    for _ in range(100):  # rebuilt before every request: the shares must still come out exact
        table = RoutingTable(lb, groups, {}, previous=table)
        pick = table.choose(None, set(), frozenset())
        assert pick is not None
        picks.append(pick[1].id)
    assert Counter(picks) == {f"{V1}-1001": 45, f"{V1}-1002": 45, f"{V2}-2001": 10}
    assert table.choose(None, {f"{V1}-1001", f"{V1}-1002", f"{V2}-2001"}, frozenset()) is None
    assert table.choose(None, {f"{V2}-2001"}, frozenset({f"{V1}-1001"}))[1].id == f"{V1}-1002"  # type: ignore[index]


def test_routing_table_sends_clients_only_to_groups_whose_firewalls_admit_them() -> None:
    lb = LoadBalancer(name=LB, application="hello", account=ACCOUNT, region=REGION, clusters=("hello-prod",))
    office = Firewall(
        name="office", application="hello", account=ACCOUNT, region=REGION, rules=(FirewallRule(cidr="10.0.0.0/8"),)
    )
    table = RoutingTable(
        lb, [memory_group(V1, 1001, firewalls=("office",)), memory_group(V2, 2001)], {"office": office}
    )
    assert table.admitted("10.1.2.3", 80) == {V1, V2}
    assert table.admitted("127.0.0.1", 80) == {V2}  # V2 names no firewall: it admits everyone
    assert {table.choose(frozenset({V2}), set(), frozenset())[0] for _ in range(4)} == {V2}  # type: ignore[index]
    closed = RoutingTable(lb, [memory_group(V1, 1001, firewalls=("office", "gone"))], {"office": office})
    assert closed.admitted("127.0.0.1", 80) == frozenset() and closed.missing_firewalls == {"gone"}
    assert "firewall office admits tcp 10.0.0.0/8 ports 0-65535" in closed.describe()
    assert RoutingTable(lb, [memory_group(V1, 1001)], {}).admitted("127.0.0.1", 80) is None  # no firewall at all


def test_routes_only_to_up_instances_of_enabled_serving_groups(lab: Lab) -> None:
    a1, a2, b1, w1, x1, y1 = (lab.backend(n) for n in ("a1", "a2", "b1", "w1", "x1", "y1"))
    lab.group(V1, (a1, a2), down=1)  # in the load balancer's cluster
    lab.group(V2, (b1,), enabled=False)  # disabled
    lab.group("hello-web-v001", (w1,), load_balancers=(LB,))  # names the load balancer
    lab.group("other-prod-v001", (x1,))  # neither
    lab.group(V1, (y1,), region="elsewhere")  # the same name in another region
    lab.load_balancer()
    lab.start()
    client = lab.client()
    replies = [client.request() for _ in range(60)]
    assert {r.status for r in replies} == {200}
    assert Counter(r.text for r in replies) == {"a1": 15, "a2": 15, "w1": 30}  # groups 50/50, instances in turn
    assert all(r.group == (V1 if r.text.startswith("a") else "hello-web-v001") for r in replies)
    assert all(r.headers["x-gennaker-instance"] == r.text for r in replies)


def test_weights_send_the_canary_its_share(lab: Lab) -> None:
    base, canary = lab.backend("base"), lab.backend("canary")
    lab.group(V1, (base,))
    lab.group("hello-prod-canary-v001", (canary,))
    lab.load_balancer(clusters=("hello-prod", "hello-prod-canary"), weights={"hello-prod-canary-v001": 10})
    lab.start()
    client = lab.client()
    counts = Counter(client.request().group for _ in range(1000))
    assert counts[V1] + counts["hello-prod-canary-v001"] == 1000
    assert 70 <= counts["hello-prod-canary-v001"] <= 130, counts


def test_enable_and_disable_under_load_drop_no_request(lab: Lab) -> None:
    a, b = lab.backend("a"), lab.backend("b")
    lab.group(V1, (a,))
    lab.group(V2, (b,), enabled=False)
    lab.load_balancer()
    lab.start()
    assert lab.get().group == V1
    marks: dict[str, float] = {}
    slow: list[Reply] = []

    def slow_request() -> None:
        slow.append(lab.get("/slow/1200"))
        marks["slow_done"] = time.monotonic()

    slow_thread = threading.Thread(target=slow_request, daemon=True)

    def events() -> None:
        time.sleep(0.8)
        slow_thread.start()  # goes to v001 ...
        time.sleep(0.2)
        marks["to_v2"] = time.monotonic()  # ... which is disabled while it is in flight (red/black)
        lab.set_enabled(V2, True)
        lab.set_enabled(V1, False)
        time.sleep(1.5)
        marks["to_v1"] = time.monotonic()  # and back (a rollback)
        lab.set_enabled(V1, True)
        lab.set_enabled(V2, False)

    results = hammer(lab, threads=4, seconds=4.5, events=events)
    slow_thread.join(timeout=10)
    failures = [error for _, error, _ in results if error]
    assert not failures, failures[:5]
    assert len(results) > 200
    settle = 0.75
    before = {r.group for t, _, r in results if r and t < marks["to_v2"]}
    switched = {r.group for t, _, r in results if r and marks["to_v2"] + settle < t < marks["to_v1"]}
    back = {r.group for t, _, r in results if r and t > marks["to_v1"] + settle}
    assert (before, switched, back) == ({V1}, {V2}, {V1})
    assert slow and slow[0].status == 200 and slow[0].group == V1  # drained: finished on the disabled group
    assert marks["slow_done"] > marks["to_v2"]


def test_a_killed_instance_is_retried_elsewhere(lab: Lab) -> None:
    k1, k2, k3 = lab.backend("k1"), lab.backend("k2"), lab.backend("k3")
    lab.group(V1, (k1, k2, k3))  # k2 stays Up in the store after it dies: no supervisor notices
    lab.load_balancer()
    lab.start()
    killed: dict[str, float] = {}

    def events() -> None:
        time.sleep(0.8)
        kill(k2)
        killed["at"] = time.monotonic()

    results = hammer(lab, threads=4, seconds=2.5, events=events)
    failures = [error for _, error, _ in results if error]
    assert not failures, failures[:5]
    assert {r.text for _, _, r in results if r} == {"k1", "k2", "k3"}
    assert {r.text for t, _, r in results if r and t > killed["at"] + 0.2} == {"k1", "k3"}
    assert "failed" in lab.log()


def test_no_healthy_instance_is_a_503_with_a_message(lab: Lab) -> None:
    b = lab.backend("b")
    lab.group(V1, down=2)
    lab.group(V2, (b,), enabled=False)
    lab.load_balancer()
    lab.start()
    reply = lab.get()
    assert reply.status == 503
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text == f"load balancer {LB} has no healthy instance to send the request to\n"
    lab.set_enabled(V2, True)
    wait_for("v002 to serve", lambda: lab.get().status == 200, timeout=5.0)


def test_forwards_requests_and_streams_answers(lab: Lab) -> None:
    echo = lab.backend("echo")
    lab.group(V1, (echo,))
    lab.ghost(V1)  # recorded Up, but refuses connections: requests go to echo instead
    lab.load_balancer()
    lab.start()
    client = lab.client()
    for index in range(6):
        reply = client.request(
            "POST", "/echo", body=f"body {index}".encode(), headers={"X-Custom": "yes", "X-Forwarded-For": "10.1.2.3"}
        )
        assert reply.status == 200
        seen = json.loads(reply.body)
        assert (seen["name"], seen["method"], seen["body"]) == ("echo", "POST", f"body {index}")
        headers = seen["headers"]
        assert headers["X-Custom"] == "yes"
        assert headers["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
        assert headers["X-Forwarded-Proto"] == "http"
        assert headers["X-Forwarded-Port"] == str(lab.port)
        assert headers["Host"] == f"{HOST}:{lab.port}"
    chunked_body = client.request("PUT", "/echo", body=iter([b"in ", b"pieces"]), chunked=True)
    assert json.loads(chunked_body.body)["body"] == "in pieces"
    streamed = client.request("GET", "/chunked")
    assert (streamed.status, streamed.text, streamed.headers.get("transfer-encoding")) == (
        200,
        "echo-chunked",
        "chunked",
    )
    head = client.request("HEAD", "/")
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "4")
    assert client.request("GET", "/status/404").status == 404
    assert client.request("GET", "/").text == "echo"  # the same keep-alive connection all along


# --------------------------------------------------------------------------- firewalls


def test_firewall_rules_admit_or_refuse_clients(lab: Lab) -> None:
    a = lab.backend("a")

    def firewall(cidr: str, port_from: int = 0, port_to: int = 65535) -> None:
        rule = FirewallRule(cidr=cidr, port_from=port_from, port_to=port_to)
        lab.store.put_firewall(
            Firewall(name="hello", application="hello", account=ACCOUNT, region=REGION, rules=(rule,))
        )

    firewall("10.0.0.0/8")
    lab.group(V1, (a,), firewalls=("hello",))
    lab.load_balancer()
    lab.start()
    reply = lab.get()
    assert reply.status == 403
    assert "127.0.0.1 may not reach load balancer hello-prod" in reply.text
    assert "firewall: denied 127.0.0.1 on port" in lab.log()
    firewall("127.0.0.0/8")
    wait_for("the new rule to admit 127.0.0.1", lambda: lab.get().status == 200, timeout=5.0)
    assert lab.get().text == "a"
    firewall("127.0.0.0/8", port_from=1, port_to=lab.port - 1)  # the right address, not this port
    wait_for("the port range to refuse", lambda: lab.get().status == 403, timeout=5.0)


# --------------------------------------------------------------------------- metrics


def test_metrics_count_requests_and_errors_per_server_group(lab: Lab) -> None:
    a, b = lab.backend("a"), lab.backend("b")
    lab.group(V1, (a,))
    lab.group(V2, (b,))
    lab.load_balancer()
    start = time.time()
    lab.start()
    client = lab.client()
    sent: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for index in range(40):
        reply = client.request("GET", "/status/500" if index % 3 == 0 else "/")
        assert reply.group is not None
        sent[reply.group] += 1
        errors[reply.group] += reply.status >= 500
    assert set(sent) == {V1, V2} and sum(errors.values()) == 14

    def totals(group: str) -> tuple[int, int]:
        buckets = read_metrics(lab.store, ACCOUNT, REGION, group, start - 1, time.time() + 2)
        return sum(b.requests for b in buckets), sum(b.errors for b in buckets)

    for group in (V1, V2):
        expected = (sent[group], errors[group])
        wait_for(f"metrics of {group}", lambda: totals(group) == expected, timeout=5.0)  # noqa: B023 - waited for here
        for bucket in read_metrics(lab.store, ACCOUNT, REGION, group, start - 1, time.time() + 2, load_balancer=LB):
            assert bucket.load_balancer == LB and sum(bucket.histogram) == bucket.requests
            assert bucket.latency_sum_ms > 0
            assert bucket.latency_p50_ms is not None and bucket.latency_p99_ms is not None
            assert 0 < bucket.latency_p50_ms <= bucket.latency_p99_ms <= bucket.latency_max_ms


# --------------------------------------------------------------------------- the process


def test_a_port_in_use_is_a_clear_error(lab: Lab) -> None:
    lab.load_balancer()
    with socket.socket() as squatter:
        squatter.bind((HOST, lab.port))
        squatter.listen()
        with pytest.raises(ListenerPortInUse) as raised:
            lab.start()
    assert str(raised.value) == (
        f"port {lab.port} on 127.0.0.1 is in use by another program; choose another port in the load balancer's "
        "listeners"
    )
    assert running_pid(lab.home, ACCOUNT, REGION, LB) is None
    assert lab.proxies() == []


def test_ensure_running_starts_one_proxy(lab: Lab) -> None:
    a = lab.backend("a")
    lab.group(V1, (a,))
    with pytest.raises(NotFound):
        lab.start()  # no such load balancer yet
    lab.load_balancer()
    pids: list[int] = []
    starters = [threading.Thread(target=lambda: pids.append(lab.start())) for _ in range(4)]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join(timeout=60)
    assert len(pids) == 4 and len(set(pids)) == 1
    pid = pids[0]
    assert lab.start() == pid == running_pid(lab.home, ACCOUNT, REGION, LB)
    assert lab.proxies() == [pid]
    assert lab.get().text == "a"
    events = [e for e in lab.store.events(subject=LB) if e.kind == "loadBalancer.proxyStarted"]
    assert len(events) == 1 and events[0].data["pid"] == pid

    assert stop(lab.store, lab.home, ACCOUNT, REGION, LB, timeout=10)
    assert not stop(lab.store, lab.home, ACCOUNT, REGION, LB)
    pid_file = lab.home / "local" / "run" / f"lb-{ACCOUNT}-{REGION}-{LB}.pid"
    pid_file.write_text("4194000\n")  # stale: names a pid, but nobody holds the lock
    assert running_pid(lab.home, ACCOUNT, REGION, LB) is None
    new_pid = lab.start()
    assert new_pid not in (pid, 4194000)
    assert pid_file.read_text() == f"{new_pid}\n"
    assert lab.get().text == "a"


def test_sigterm_lets_requests_in_flight_finish(lab: Lab) -> None:
    a = lab.backend("a")
    lab.group(V1, (a,))
    lab.load_balancer()
    pid = lab.start()
    answers: list[Reply] = []
    request = threading.Thread(target=lambda: answers.append(lab.get("/slow/1000")), daemon=True)
    request.start()
    time.sleep(0.3)
    assert stop(lab.store, lab.home, ACCOUNT, REGION, LB, timeout=10)  # SIGTERM, then waits for the exit
    request.join(timeout=10)
    assert answers and answers[0].status == 200 and answers[0].text == "a"
    assert running_pid(lab.home, ACCOUNT, REGION, LB) is None
    assert pid not in lab.proxies()
    with pytest.raises(ConnectionRefusedError):
        lab.get()
    assert "stopping: stopped by a signal; draining 1 request(s) in flight" in lab.log()


def test_the_proxy_exits_when_its_load_balancer_is_deleted(lab: Lab) -> None:
    lab.load_balancer()
    pid = lab.start()
    lab.store.delete_load_balancer(ACCOUNT, REGION, LB)
    wait_for("the proxy to exit", lambda: running_pid(lab.home, ACCOUNT, REGION, LB) is None, timeout=5.0)
    wait_for("the process to end", lambda: pid not in lab.proxies(), timeout=5.0)
    assert "stopping: its load balancer was deleted" in lab.log()
    assert any(e.kind == "loadBalancer.proxyStopped" for e in lab.store.events(subject=LB))
