"""The HTTP server: ``/``, ``/version``, ``/health``, ``/metrics``; graceful on SIGTERM.

Routes:

- ``/``        an HTML page: ``hello <version>``, the instance id and the server group;
- ``/version`` JSON ``{"version", "instance", "serverGroup"}``;
- ``/health``  200 ``ok``; 503 ``starting`` during the start-up delay and ``draining``
  once SIGTERM arrived;
- ``/metrics`` Prometheus text (see :mod:`hello_service.metrics`).

``/`` and ``/version`` get the release's behaviour: its added latency, then its error
rate (that fraction of them is answered 500).

SIGTERM (or SIGINT): stop accepting connections, close idle keep-alive connections,
let in-flight requests finish, exit 0.
"""

from __future__ import annotations

import html
import json
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from hello_service.config import Settings
from hello_service.metrics import CONTENT_TYPE, Metrics

IDLE_TIMEOUT_SECONDS = 5.0


class HelloServer(ThreadingHTTPServer):
    """A threading server that waits for its request threads when it closes."""

    daemon_threads = False  # server_close() joins them: in-flight requests finish
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.time()
        self._monotonic_start = time.monotonic()
        behaviour = settings.behaviour
        self.metrics = Metrics(
            version=settings.version,
            started=self.started,
            latency_ms=behaviour.latency_ms,
            error_rate=behaviour.error_rate,
        )
        self.draining = threading.Event()
        self._connections: set[HelloHandler] = set()
        self._connections_lock = threading.Lock()
        self._random = random.Random()
        self._random_lock = threading.Lock()
        super().__init__((settings.host, settings.port), HelloHandler)

    @property
    def starting(self) -> bool:
        """Still inside the release's start-up delay."""
        return time.monotonic() - self._monotonic_start < self.settings.behaviour.startup_seconds

    def fails_now(self) -> bool:
        """Draw against the release's error rate."""
        rate = self.settings.behaviour.error_rate
        if rate <= 0:
            return False
        with self._random_lock:
            return self._random.random() < rate

    def track(self, handler: HelloHandler, active: bool) -> None:
        with self._connections_lock:
            if active:
                self._connections.add(handler)
            else:
                self._connections.discard(handler)

    def drain(self) -> None:
        """Stop serving: called from a helper thread, since shutdown() waits for serve_forever()."""
        self.draining.set()
        self.shutdown()
        with self._connections_lock:
            idle = [handler for handler in self._connections if handler.idle]
        for handler in idle:  # a keep-alive connection waiting for its next request
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class HelloHandler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, closed after IDLE_TIMEOUT_SECONDS without a request."""

    server: HelloServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_SECONDS
    server_version = "hello-service"
    idle = True

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY the client's delayed ACK holds the
        # body back ~40 ms, which would make every release look slow to a latency canary.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self, False)

    def handle_one_request(self) -> None:
        self.idle = True
        super().handle_one_request()
        self.idle = True

    def parse_request(self) -> bool:
        self.idle = False
        self._started = time.perf_counter()
        return super().parse_request()

    # ----------------------------------------------------------------------- routes

    def do_GET(self) -> None:  # http.server's naming
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_POST(self) -> None:
        self._send(405, "text/plain; charset=utf-8", "method not allowed\n", body=True, extra={"Allow": "GET, HEAD"})

    def _route(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        server = self.server
        if path == "/health":
            if server.draining.is_set():
                self._send(503, "text/plain; charset=utf-8", "draining\n", body=body)
            elif server.starting:
                self._send(503, "text/plain; charset=utf-8", "starting\n", body=body)
            else:
                self._send(200, "text/plain; charset=utf-8", "ok\n", body=body)
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE, server.metrics.render(), body=body)
        elif path in ("/", "/version"):
            latency = server.settings.behaviour.latency_ms
            if latency > 0:
                time.sleep(latency / 1000)
            if server.fails_now():
                rate = server.settings.behaviour.error_rate
                self._send(500, "text/plain; charset=utf-8", f"simulated failure (error rate {rate})\n", body=body)
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", self._page(), body=body)
            else:
                self._send(200, "application/json", json.dumps(self._identity()) + "\n", body=body)
        else:
            self._send(404, "text/plain; charset=utf-8", f"no route {path}\n", body=body)

    def _identity(self) -> dict[str, str]:
        settings = self.server.settings
        return {"version": settings.version, "instance": settings.instance, "serverGroup": settings.server_group}

    def _page(self) -> str:
        settings = self.server.settings
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.server.started))
        version, instance = html.escape(settings.version), html.escape(settings.instance)
        group = html.escape(settings.server_group or "(none)")
        return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>hello {version}</title>
<style>body{{font-family:sans-serif;margin:3em}} dt{{font-weight:bold}} code{{background:#eee;padding:0 .3em}}</style>
</head>
<body>
<h1>hello {version}</h1>
<dl>
<dt>instance</dt><dd><code>{instance}</code></dd>
<dt>server group</dt><dd><code>{group}</code></dd>
<dt>started</dt><dd>{started}</dd>
</dl>
<p><a href="/version">/version</a> &middot; <a href="/health">/health</a> &middot; <a href="/metrics">/metrics</a></p>
</body>
</html>
"""

    # ----------------------------------------------------------------------- plumbing

    def _send(
        self, code: int, content_type: str, text: str, *, body: bool, extra: dict[str, str] | None = None
    ) -> None:
        payload = text.encode("utf-8")
        if self.server.draining.is_set():
            self.close_connection = True
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(payload)
        finally:
            started = getattr(self, "_started", time.perf_counter())
            self.server.metrics.observe(self.path, code, time.perf_counter() - started)

    def log_message(self, format: str, *args: object) -> None:  # the base class's names
        if self.server.settings.access_log:
            sys.stderr.write(f"{self.address_string()} [{self.log_date_time_string()}] {format % args}\n")


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return 0."""
    server = HelloServer(settings)
    host, port = settings.host, server.server_port

    def stop(signum: int, frame: FrameType | None) -> None:
        if not server.draining.is_set():
            server.draining.set()  # /health answers 503 from now on; a second signal does nothing more
            print(f"hello-service: {signal.Signals(signum).name}, draining", file=sys.stderr, flush=True)
            threading.Thread(target=server.drain, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    behaviour = settings.behaviour
    print(
        f"hello-service {settings.version} listening on http://{host}:{port} "
        f"(instance {settings.instance}, latency {behaviour.latency_ms:g} ms, error rate {behaviour.error_rate:g}, "
        f"start-up {behaviour.startup_seconds:g} s)",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # joins the request threads: in-flight requests finish
    print("hello-service: stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m hello_service`` and the ``hello-service`` script."""
    del argv  # configured by the environment only
    try:
        settings = Settings.from_env()
    except ValueError as error:
        print(f"hello-service: {error}", file=sys.stderr)
        return 2
    try:
        return serve(settings)
    except OSError as error:
        print(f"hello-service: cannot listen on {settings.host}:{settings.port}: {error}", file=sys.stderr)
        return 1
