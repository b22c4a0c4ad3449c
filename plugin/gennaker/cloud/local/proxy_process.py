"""The local load balancer's process: listeners, the routing table refresher, the metrics flusher, shutdown.

It re-reads its routing table from the state store every :data:`REFRESH_SECONDS` (one snapshot read of a few
rows, parsed again only when a row changed), so enable, disable, resize, health and weight changes take
effect within about a quarter second; listeners added or removed later are opened and closed as the state
changes. It runs a watchdog thread that restarts the dead supervisors of the groups it serves. It exits
cleanly on SIGTERM or SIGINT: stops accepting, lets in-flight requests finish (at most ``drain_seconds``),
flushes metrics, exits 0; the same when its load balancer is deleted from the store.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, cast

from gennaker.cloud.local import processes
from gennaker.cloud.local.proxy_http import HOST, ListenerPortInUse, ListenerServer
from gennaker.cloud.local.proxy_metrics import MetricsRecorder, ensure_metrics_table, metrics_max_age_seconds
from gennaker.cloud.local.proxy_routing import ParsedRows, RawRows, RoutingTable, ended_processes, parse_rows, read_rows
from gennaker.cloud.local.state import StateStore
from gennaker.errors import CloudError, InvalidRequest

logger = logging.getLogger("gennaker.cloud.local.proxy")

REFRESH_SECONDS = 0.25
"""How often the routing table is re-read from the store."""
FLUSH_SECONDS = 1.0
"""How often finished one-second metric buckets are written to the store."""
EJECT_SECONDS = 2.0
"""How long an instance whose connection failed is passed over (unless nothing else is left)."""
DRAIN_SECONDS = 30.0
"""Default bound on the wait for in-flight requests at shutdown."""

EXIT_PORT_IN_USE = 3
EXIT_NOT_FOUND = 4
EXIT_ALREADY_RUNNING = 5


class ProxyProcess:
    """The proxy's process: listeners, the routing table refresher, the metrics flusher, shutdown."""

    def __init__(
        self,
        store: StateStore,
        home: Path,
        account: str,
        region: str,
        name: str,
        *,
        drain_seconds: float = DRAIN_SECONDS,
        access_log: bool = False,
    ) -> None:
        self.store, self.home = store, home
        self.account, self.region, self.name = account, region, name
        self.drain_seconds = drain_seconds
        self.access_log = access_log
        self.metrics = MetricsRecorder(account, region, name)
        self.table: RoutingTable = cast(RoutingTable, None)  # set by _refresh before any listener opens
        self.draining = False
        self._raw: RawRows | None = None
        self._parsed: ParsedRows | None = None
        self._described = ""
        self._servers: dict[int, ListenerServer] = {}
        self._retry_bind: dict[int, float] = {}
        self._stop = threading.Event()
        self._signals = 0
        self._inflight = 0
        self._idle = threading.Condition()
        self._ejected: dict[str, float] = {}
        self._ejected_lock = threading.Lock()
        self._throttle: dict[Any, float] = {}
        self._warned_protocols: set[int] = set()

    # ------------------------------------------------------------------- requests in flight, ejection, logs

    def enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def leave(self) -> None:
        with self._idle:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def eject(self, instance_id: str) -> None:
        with self._ejected_lock:
            self._ejected[instance_id] = time.monotonic() + EJECT_SECONDS

    def avoided(self) -> frozenset[str]:
        if not self._ejected:
            return frozenset()
        now = time.monotonic()
        with self._ejected_lock:
            for instance_id in [i for i, until in self._ejected.items() if until <= now]:
                del self._ejected[instance_id]
            return frozenset(self._ejected)

    def denied(self, client: str, port: int, table: RoutingTable) -> None:
        if self._once(("denied", client, port), 10.0):
            groups = ", ".join(f"{g.name} ({','.join(g.firewalls) or 'none'})" for g in table.serving)
            logger.warning(
                "firewall: denied %s on port %d; no serving group's firewalls admit it: %s", client, port, groups
            )

    def _once(self, key: Any, seconds: float) -> bool:
        now = time.monotonic()
        if self._throttle.get(key, 0.0) > now:
            return False
        self._throttle[key] = now + seconds
        return True

    # ------------------------------------------------------------------- lifecycle

    def run(self, pid_file: Path) -> int:
        """Serve until SIGTERM/SIGINT or the load balancer's deletion; the exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        lock = processes.hold_lock(pid_file)
        if lock is None:
            fatal(f"another proxy for load balancer {self.name} holds {pid_file} (pid {processes.read_pid(pid_file)})")
            return EXIT_ALREADY_RUNNING
        with contextlib.suppress(FileNotFoundError):
            pid_file.with_suffix(".stopped").unlink()  # running again: a watchdog restarts it if it dies
        try:
            return self._serve(lock)
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(lock, 0)
            os.close(lock)

    def _serve(self, lock: int) -> int:
        ensure_metrics_table(self.store)
        if not self._refresh():
            fatal(f"load balancer {self.name} not found in account {self.account}, region {self.region}")
            return EXIT_NOT_FOUND
        for listener in self.table.lb.listeners:
            try:
                self._listen(listener.port)
            except ListenerPortInUse as error:
                fatal(str(error))
                self._close_listeners()
                return EXIT_PORT_IN_USE
            except CloudError as error:
                fatal(str(error))
                self._close_listeners()
                return 1
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        ports = ", ".join(str(p) for p in sorted(self._servers)) or "none yet"
        logger.info(
            "load balancer %s (%s/%s) listening on %s port(s) %s", self.name, self.account, self.region, HOST, ports
        )
        flusher = threading.Thread(target=self._flush_loop, name="metrics", daemon=True)
        flusher.start()
        watchdog = self._start_watchdog()
        reason = "stopped by a signal"
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                if not self._refresh():
                    reason = "its load balancer was deleted"
                    break
            except Exception as error:  # a locked or broken store: keep serving the last table
                if self._once("refresh", 10.0):
                    logger.warning("could not re-read the routing table (keeping the last one): %s", error)
                continue
            self._sync_listeners()
        watchdog.stop()
        logger.info("stopping: %s; draining %d request(s) in flight", reason, self._inflight)
        self.draining = True
        self._close_listeners()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=self.drain_seconds)
            left = self._inflight
        if left:
            logger.warning("%d request(s) still in flight after %gs; exiting anyway", left, self.drain_seconds)
        self._stop.set()
        flusher.join(timeout=5)
        try:
            self.metrics.flush(self.store, final=True)
        except Exception as error:
            logger.warning("could not write the last metrics: %s", error)
        if reason != "stopped by a signal":
            with contextlib.suppress(Exception):
                self.store.record_event(
                    "loadBalancer.proxyStopped",
                    self.name,
                    f"proxy of load balancer {self.name} exited: {reason}",
                    account=self.account,
                    data={"pid": os.getpid(), "region": self.region},
                )
        logger.info("exited")
        return 0

    def _start_watchdog(self) -> Any:
        """A thread that restarts the dead supervisors of the server groups this load balancer serves."""
        from gennaker.cloud.local import watchdog as local_watchdog  # it imports this module

        def check() -> None:
            parsed = self._parsed
            if parsed is not None:
                groups = [(g.account, g.region, g.name) for g in parsed[1]]
                local_watchdog.revive(self.store, self.home, groups=groups, balancers=())

        return local_watchdog.Watchdog(check, name="watchdog").start()

    def _table_or_none(self) -> RoutingTable | None:
        return self.table if self._raw is not None else None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(128 + signum)  # a second signal: do not wait for the drain
        self._stop.set()

    def _refresh(self) -> bool:
        """Re-read the routing table; False if the load balancer no longer exists.

        Also rebuilt when an Up instance's process ends: it gets nothing more even while its
        row still says Up (its supervisor may be dead), until the supervisor starts it again.
        """
        raw = read_rows(self.store, self.account, self.region, self.name)
        if raw is None:
            return False
        parsed = parse_rows(raw) if raw != self._raw or self._parsed is None else self._parsed
        ended = ended_processes(self.home, parsed[0], parsed[1])
        previous = self._table_or_none()
        if raw != self._raw or previous is None or ended != previous.ended:
            table = RoutingTable(*parsed, previous, ended=ended)
            self.table, self._raw, self._parsed = table, raw, parsed
            described = table.describe()
            if described != self._described:
                logger.info("routing: %s", described)
                self._described = described
            for listener in table.lb.listeners:
                if listener.protocol != "HTTP" and listener.port not in self._warned_protocols:
                    self._warned_protocols.add(listener.port)
                    logger.warning("listener %d is %s: served as plain HTTP locally", listener.port, listener.protocol)
        return True

    def _listen(self, port: int) -> None:
        try:
            server = ListenerServer(port, self)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ListenerPortInUse(port) from error
            if error.errno == errno.EACCES:
                raise InvalidRequest(
                    f"cannot listen on port {port} on {HOST}: permission denied",
                    hint="ports below 1024 need privileges; choose another port in the load balancer's listeners",
                ) from error
            raise InvalidRequest(f"cannot listen on port {port} on {HOST}: {error}") from error
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"listener-{port}", daemon=True
        )
        thread.start()
        self._servers[port] = server

    def _sync_listeners(self) -> None:
        wanted = {listener.port for listener in self.table.lb.listeners}
        now = time.monotonic()
        for port in sorted(wanted - set(self._servers)):
            if self._retry_bind.get(port, 0.0) > now:
                continue
            try:
                self._listen(port)
                self._retry_bind.pop(port, None)
                logger.info("listening on %s:%d", HOST, port)
            except CloudError as error:
                self._retry_bind[port] = now + 5.0
                logger.error("%s (retrying every 5s)", error)
        for port in sorted(set(self._servers) - wanted):
            server = self._servers.pop(port)
            logger.info("closing listener %s:%d (requests in flight finish)", HOST, port)
            threading.Thread(target=_close_server, args=(server,), daemon=True).start()
        for port in list(self._retry_bind):
            if port not in wanted:
                del self._retry_bind[port]

    def _close_listeners(self) -> None:
        for server in self._servers.values():
            _close_server(server)
        self._servers.clear()

    def _flush_loop(self) -> None:
        next_prune = 0.0
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                self.metrics.flush(self.store)
                if time.monotonic() >= next_prune:
                    self.metrics.prune(self.store, time.time() - metrics_max_age_seconds())
                    next_prune = time.monotonic() + 60.0
            except Exception as error:
                if self._once("flush", 10.0):
                    logger.warning("could not write metrics (kept for the next try): %s", error)


def _close_server(server: ListenerServer) -> None:
    server.shutdown()
    server.server_close()


def fatal(message: str) -> None:
    """The line :func:`ensure_running` reads back from the log when the process fails to start."""
    logger.error("fatal: %s", message)


__all__ = [
    "DRAIN_SECONDS",
    "EJECT_SECONDS",
    "EXIT_ALREADY_RUNNING",
    "EXIT_NOT_FOUND",
    "EXIT_PORT_IN_USE",
    "FLUSH_SECONDS",
    "REFRESH_SECONDS",
    "ProxyProcess",
    "fatal",
]
