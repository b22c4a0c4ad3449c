"""The local provider's load balancer: an HTTP reverse proxy on 127.0.0.1, one process per load balancer.

Run as ``python -m gennaker.cloud.local.proxy --home H --account A --region R --load-balancer NAME``,
normally through :func:`ensure_running` (idempotent; detached; log in

The process (:mod:`~gennaker.cloud.local.proxy_process`) listens on ``127.0.0.1:<port>`` for every listener of
the load balancer, re-reads its routing table (:mod:`~gennaker.cloud.local.proxy_routing`: weights, draining,
firewalls) from the state store every 0.25 s, forwards each request to an Up instance of an enabled server
group (:mod:`~gennaker.cloud.local.proxy_http`: retries, 502/503/504, forwarded headers) and records
per-second metrics per server group (:mod:`~gennaker.cloud.local.proxy_metrics`, the ``lb_metrics`` table).
Every listener speaks plain HTTP/1.1, also one declared ``HTTPS`` or ``TCP`` (no TLS locally; logged once).
The local load balancer passes client addresses through to the instances, like an AWS NLB with client IP
preservation, so a server group's own firewalls decide which clients may reach it. It runs a watchdog thread
that restarts the dead supervisors of the groups it serves (never one stopped with ``stop()`` or of a group
being destroyed), and exits cleanly on SIGTERM or SIGINT (draining requests in flight, at most
``--drain-timeout`` seconds) or when its load balancer is deleted from the store.

One proxy per load balancer: the process holds an exclusive ``flock`` on
``<home>/local/run/lb-<account>-<region>-<name>.pid`` for its lifetime (the file holds
its pid once it listens), so a stale pid file is one nobody has locked, whatever pid it
names: a proxy started by an earlier gennaker (``python -m gennaker.cloud.local_proxy``) is found the same way.
:func:`ensure_running` and :func:`stop` serialise on a second lock file next to it.

This module is the public face of those pieces: everything the rest of gennaker uses is importable from here.

The API::

    ensure_running(store, home, account, region, name, *, timeout=30.0) -> pid
    stop(store, home, account, region, name, *, timeout=35.0) -> bool     # False: none ran
    running_pid(home, account, region, name) -> pid | None
    log_file(home, name) -> Path
    read_metrics(store, account, region, server_group, start, end, *, load_balancer=None)
        -> list[MetricBucket]                                              # start <= ts < end
    histogram_quantile(histogram, q, max_ms=None) -> float | None          # over merged buckets
    ListenerPortInUse (an InvalidRequest): "port 8080 on 127.0.0.1 is in use by another
        program; choose another port in the load balancer's listeners"

``home`` is the gennaker home (None: :func:`~gennaker.paths.gennaker_home`); the
proxy opens ``store.path``, which need not lie under it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from gennaker.cloud.local import logfiles, privfiles, procenv, processes
from gennaker.cloud.local.proxy_http import (
    CLIENT_IDLE_TIMEOUT,
    CONNECT_TIMEOUT,
    HOST,
    MAX_ATTEMPTS,
    MAX_BUFFERED_BODY,
    UPSTREAM_TIMEOUT,
    ListenerPortInUse,
)
from gennaker.cloud.local.proxy_metrics import (
    HISTOGRAM_BOUNDS_MS,
    METRICS_SCHEMA,
    METRICS_TABLE,
    MetricBucket,
    MetricsRecorder,
    ensure_metrics_table,
    forget_metrics,
    histogram_quantile,
    read_metrics,
)
from gennaker.cloud.local.proxy_process import (
    DRAIN_SECONDS,
    EJECT_SECONDS,
    EXIT_NOT_FOUND,
    EXIT_PORT_IN_USE,
    FLUSH_SECONDS,
    REFRESH_SECONDS,
    ProxyProcess,
    fatal,
)
from gennaker.cloud.local.proxy_routing import RoutingTable, ended_processes, serves, share_weights
from gennaker.cloud.local.state import StateStore
from gennaker.errors import CloudError, NotFound, ProviderUnavailable
from gennaker.paths import gennaker_home

logger = logging.getLogger("gennaker.cloud.local.proxy")

MODULE = "gennaker.cloud.local.proxy"
"""The proxy's module (``python -m``); gennaker 0.1's ``gennaker.cloud.local_proxy`` still runs it."""
START_TIMEOUT = 30.0
"""How long :func:`ensure_running` waits for a new proxy to listen."""


# --------------------------------------------------------------------------- pid files and locks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _pid_file(home: Path, account: str, region: str, name: str) -> Path:
    return home / "local" / "run" / f"lb-{_slug(account)}-{_slug(region)}-{_slug(name)}.pid"


def stopped_file(home: str | os.PathLike[str] | None, account: str, region: str, name: str) -> Path:
    """Present after :func:`stop`: a watchdog leaves this proxy stopped (the next start removes it)."""
    return _pid_file(_home(home), account, region, name).with_suffix(".stopped")


def has_run(home: str | os.PathLike[str] | None, account: str, region: str, name: str) -> bool:
    """A proxy of this load balancer ran in this home once (a watchdog restarts only those)."""
    return _pid_file(_home(home), account, region, name).exists()


def log_file(home: str | os.PathLike[str] | None, name: str) -> Path:
    """``<home>/local/logs/lb-<name>.log``: where a load balancer's proxy logs."""
    return _home(home) / "local" / "logs" / f"lb-{_slug(name)}.log"


def _home(home: str | os.PathLike[str] | None) -> Path:
    return Path(home).expanduser() if home is not None else gennaker_home()


def _probe(path: Path) -> tuple[bool, int | None]:
    """``(a proxy holds the pid file, the pid in it)``."""
    return processes.lock_held(path), processes.read_pid(path)


@contextlib.contextmanager
def _start_lock(pid_file: Path) -> Iterator[None]:
    """Serialise :func:`ensure_running` and :func:`stop` of one load balancer across processes and threads."""
    with processes.flock(pid_file.with_suffix(".lock"), timeout=None):
        yield


_children = processes.Children()
"""Proxies this process started: reaped once they exit, so none lingers as a zombie."""


def _reap() -> None:
    _children.reap(forget=True)


def running_pid(home: str | os.PathLike[str] | None, account: str, region: str, name: str) -> int | None:
    """The pid of the load balancer's running proxy, or None."""
    held, pid = _probe(_pid_file(_home(home), account, region, name))
    return pid if held else None


def ensure_running(
    store: StateStore,
    home: str | os.PathLike[str] | None,
    account: str,
    region: str,
    name: str,
    *,
    timeout: float = START_TIMEOUT,
) -> int:
    """Start the load balancer's proxy unless it runs; its pid once it listens on every listener.

    Idempotent across threads and processes. Raises :class:`NotFound` if the load
    balancer is not in the store, :class:`ListenerPortInUse` if a listener's port is
    taken by another program, :class:`ProviderUnavailable` if it did not start within
    ``timeout`` seconds.
    """
    home_path = _home(home)
    _reap()
    store.get_load_balancer(account, region, name)
    pid_file = _pid_file(home_path, account, region, name)
    with _start_lock(pid_file):
        held, pid = _probe(pid_file)
        deadline = time.monotonic() + timeout
        while held and pid is None and time.monotonic() < deadline:  # started by hand, not listening yet
            time.sleep(0.05)
            held, pid = _probe(pid_file)
        if held and pid is not None:
            return pid
        log_path = log_file(home_path, name)
        privfiles.private_dir(log_path.parent)
        logfiles.LogLimits.from_env()  # a bad setting is a clear error here, not a proxy that dies at once
        offset = log_path.stat().st_size if log_path.exists() else 0
        env = procenv.service_env()  # minimal: never the caller's environment (Airflow's secrets)
        command = [
            sys.executable,
            "-m",
            MODULE,
            "--home",
            str(home_path),
            "--state",
            str(store.path),
            "--account",
            account,
            "--region",
            region,
            "--load-balancer",
            name,
        ]
        proc = processes.start_detached(command, log_path=log_path, cwd=home_path, env=env)
        _children.add(proc)
        while processes.read_pid(pid_file) != proc.pid:
            code = proc.poll()
            if code is not None:
                _children.forget(proc.pid)
                raise _start_error(code, name, log_path, offset)
            if time.monotonic() > deadline:
                processes.kill_group(proc.pid)
                proc.wait()
                _children.forget(proc.pid)
                raise ProviderUnavailable(
                    f"the proxy of load balancer {name} did not start listening within {timeout:g}s; see {log_path}"
                )
            time.sleep(0.02)
    lb = store.get_load_balancer(account, region, name)
    ports = ", ".join(str(listener.port) for listener in lb.listeners)
    store.record_event(
        "loadBalancer.proxyStarted",
        name,
        f"proxy of load balancer {name} listening on {HOST} port(s) {ports or 'none'} (pid {proc.pid})",
        account=account,
        data={"pid": proc.pid, "region": region, "log": str(log_path)},
    )
    return proc.pid


def _start_error(code: int, name: str, log_path: Path, offset: int) -> CloudError:
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        text = ""
    said = [line.split("fatal: ", 1)[1] for line in text.splitlines() if "fatal: " in line]
    message = said[-1] if said else f"exited with status {code}"
    if code == EXIT_PORT_IN_USE:
        found = re.search(r"port (\d+) on", message)
        if found:
            return ListenerPortInUse(int(found.group(1)))
    if code == EXIT_NOT_FOUND:
        return NotFound(message)
    return CloudError(f"the proxy of load balancer {name} did not start: {message}", hint=f"see {log_path}")


def stop(
    store: StateStore | None,
    home: str | os.PathLike[str] | None,
    account: str,
    region: str,
    name: str,
    *,
    timeout: float = DRAIN_SECONDS + 5.0,
) -> bool:
    """Stop the load balancer's proxy (SIGTERM: it drains in-flight requests); False if none ran.

    After ``timeout`` seconds its process group is killed.
    """
    pid_file = _pid_file(_home(home), account, region, name)
    _reap()
    with _start_lock(pid_file):
        pid_file.with_suffix(".stopped").write_text(f"{time.time()}\n")  # no watchdog starts it again
        held, pid = _probe(pid_file)
        if not held or pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _probe(pid_file)[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        if _probe(pid_file)[0]:
            logger.warning("proxy %d of load balancer %s did not stop within %gs; killing it", pid, name, timeout)
            processes.kill_group(pid)
        child = _children.forget(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
    if store is not None:
        store.record_event(
            "loadBalancer.proxyStopped",
            name,
            f"proxy of load balancer {name} stopped (pid {pid})",
            account=account,
            data={"pid": pid, "region": region},
        )
    return True


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gennaker.cloud.local.proxy --home H --account A --region R --load-balancer NAME``."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="gennaker's local load balancer")
    parser.add_argument("--home", help="gennaker home (default: $GENNAKER_HOME, else $AIRFLOW_HOME/gennaker)")
    parser.add_argument("--state", help="the state store (default: <home>/local/state.db)")
    parser.add_argument("--account", default="local")
    parser.add_argument("--region", default="local")
    parser.add_argument("--load-balancer", required=True, dest="name")
    parser.add_argument("--drain-timeout", type=float, default=DRAIN_SECONDS, help="seconds to wait for requests")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    home = _home(args.home)
    os.umask(0o077)  # what the proxy creates (pid files, its log's rotated copies) is its user's alone
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{args.account}/{args.region}/{args.name} pid {os.getpid()}] %(message)s",
    )
    store = StateStore(Path(args.state) if args.state else home / "local" / "state.db")
    proxy = ProxyProcess(
        store,
        home,
        args.account,
        args.region,
        args.name,
        drain_seconds=args.drain_timeout,
        access_log=args.access_log,
    )
    own_log = log_file(home, args.name)
    rotator = logfiles.Rotator(lambda: [own_log], logfiles.LogLimits.from_env()).start()
    try:
        return proxy.run(_pid_file(home, args.account, args.region, args.name))
    except Exception as error:
        logger.exception("the proxy failed")
        fatal(f"{type(error).__name__}: {error}")
        return 1
    finally:
        rotator.stop()


__all__ = [
    "CLIENT_IDLE_TIMEOUT",
    "CONNECT_TIMEOUT",
    "DRAIN_SECONDS",
    "EJECT_SECONDS",
    "FLUSH_SECONDS",
    "HISTOGRAM_BOUNDS_MS",
    "HOST",
    "MAX_ATTEMPTS",
    "MAX_BUFFERED_BODY",
    "METRICS_SCHEMA",
    "METRICS_TABLE",
    "MODULE",
    "REFRESH_SECONDS",
    "START_TIMEOUT",
    "UPSTREAM_TIMEOUT",
    "ListenerPortInUse",
    "MetricBucket",
    "MetricsRecorder",
    "ProxyProcess",
    "RoutingTable",
    "ended_processes",
    "ensure_metrics_table",
    "ensure_running",
    "forget_metrics",
    "has_run",
    "histogram_quantile",
    "log_file",
    "main",
    "read_metrics",
    "running_pid",
    "serves",
    "share_weights",
    "stop",
    "stopped_file",
]


if __name__ == "__main__":
    sys.exit(main())
