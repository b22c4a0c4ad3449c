"""The local provider's supervisor: a server group's instances as real processes on 127.0.0.1.

One supervisor process per server group keeps ``capacity.desired`` copies of the
group's image running, each on its own port, checks their health, records it in the
state store, restarts crashed ones, and outlives the Airflow task that started it.

Starting and stopping (:func:`ensure_running`, :func:`stop`)
    ``python -m gennaker.cloud.local.supervisor --home H --state S --account A --region R
    --server-group NAME`` is started detached by :func:`ensure_running`: its own session
    (``start_new_session``, so neither the task's death nor a kill of the task's process
    group reaches it), stdin from ``/dev/null``, stdout and stderr appended to
    ``<home>/local/logs/<group>/supervisor.log``, no inherited file descriptors, cwd =
    home. It is idempotent: under an ``flock`` on ``<home>/local/run/<A>/<R>/<NAME>.lock``
    it reads ``<NAME>.pid``; a live process whose ``/proc/<pid>/cmdline`` is this module
    for this group is returned as is, a stale file (process gone, or the pid reused by
    something else) is replaced. The supervisor itself also holds an ``flock`` on
    ``<NAME>.alive`` (holding its pid) for its whole life, so even a supervisor started
    by hand never runs twice. :func:`stop` sends SIGTERM and waits; the supervisor then
    stops its instances (they are marked Down, "stopped with its supervisor") and exits.
    Without a supervisor (or if it ignores SIGTERM until the timeout: SIGKILL), stop()
    stops the instance processes itself.

The loop (every ``interval``, 0.5 s)
    One pass, :func:`reconcile_once` (also usable without the loop, by tests and the
    provider), under an ``flock`` on ``<NAME>.reconcile.lock`` so passes never overlap:

    - read the group; gone from the store, or tagged ``gennaker:destroying``: stop every
      instance (the tagged group's instance rows are deleted too) and report
      ``destroyed`` (the supervisor exits; so it does if the state file disappears);
    - an instance row that was deleted (the provider's terminate) -> its process is stopped;
    - more rows than desired -> the newest (by ``launched``) are deleted and stopped;
      fewer -> new rows (``i-<hex>``) are made and started;
    - each row's process: a dead one is a crash (below); a new or due one is started;
    - health checks of the running ones that are due (``interval``), in parallel.

    Stopping = SIGTERM to the instance's process group, SIGKILL to the group after
    ``stop_grace`` (5 s) if the leader still runs (and once more to catch stragglers).

    After each pass that went through, the loop writes ``<NAME>.heartbeat``; a watchdog
    thread restarts the home's other dead supervisors and dead load balancer proxies
    (:mod:`local_watchdog`: readers show the rows of a silent supervisor as Unknown).

An instance
    ``image = store.get_image(group.image_id)``; ``image.manifest``: ``path`` (the image
    directory, absolute or relative to ``<home>/local/images``), ``start_command`` (an
    argv list or a shell-like string; argv[0] and any argument naming a file of the image
    directory are made absolute), ``env``. cwd = image directory; environment = built
    by :mod:`procenv`, never inherited: PATH, HOME, LANG, ... + manifest env, + ``group.environment``, +
    ``PORT``, ``HOST=127.0.0.1``, ``GENNAKER_INSTANCE_ID``, ``GENNAKER_SERVER_GROUP``;
    stdout and stderr appended to ``<home>/local/logs/<group>/<instance-id>.log`` (a
    ``--- gennaker: ...`` line before every start); its own session and process group.
    The port: a free one of 127.0.0.1 (bind port 0, read it, close) when the instance is
    made; a restart reuses it unless something else listens there, then another is picked
    (said in both logs) and the row's ``port`` changes.

    What the supervisor knows about a process lives in
    ``<home>/local/run/<A>/<R>/<NAME>/<instance-id>.json`` (pid, start time, boot id,
    port, argv, state, crash and health counters), so any pass, in any process, picks up
    where the last one stopped. A recorded process is "still ours" if ``/proc/<pid>``
    exists and is not a zombie, its start time (``/proc/<pid>/stat``) and the machine's
    boot id are the recorded ones, and its ``cmdline`` ends with the recorded argv's last
    word (or its environment names the instance): a reused pid is never adopted.

Health (``group.health_check``, the spec's HealthCheck as a dict; camelCase or snake_case keys)
    ``type`` http (default) | tcp | none; ``path`` (``/health``); ``interval`` (2 s);
    ``timeout`` (2 s); ``healthyThreshold`` (1); ``gracePeriod`` (0); durations as the spec
    writes them (``2s``, ``PT2S``, numbers of seconds). ``port`` is ignored: every local
    instance has its own. One probe is :func:`instance_health`: ``GET
    http://127.0.0.1:<port><path>``, 2xx and 3xx pass; reasons in plain words
    ("connection refused on 127.0.0.1:41234", "HTTP 503 on /health", "no answer within
    2s on 127.0.0.1:41234"). A started instance is Starting until ``healthyThreshold``
    consecutive passes make it Up; while Starting its reason is the last failure
    (prefixed "in its grace period" during ``gracePeriod``). Up -> Down on a failed check,
    Down -> Up after ``healthyThreshold`` passes again. ``none``: Up once the process runs.
    Every change of health or reason is written with ``store.update_instance`` (health,
    ``health_since`` when the health changes, ``health_reason``; ``""`` when Up), and
    ``store.record_event`` logs ``instance.started``, ``.up``, ``.down``, ``.crashed``,
    ``.restarted``, ``.failed``, ``.adopted``, ``.terminated``, ``.stopped`` (subject:
    instance id; data: server group, pid, port) and ``supervisor.started``/``.stopped``.

Crashes
    A process that exits on its own is a crash: the row goes Down ("crashed: exit code 3;
    restart 1 of 5 in 0.5 s; see <log>") and the process is started again after a backoff
    (``restart_backoff``, 0.5 s, doubling, at most 10 s), ``restarts += 1``. More than
    ``restart_limit`` (5) crashes in a row without the instance getting Up leave it Down
    for good: "crashed 6 times; last exit code 3; see <log>" (the count resets when it is
    Up). A start that fails (no such program) counts as a crash. Options: command line,
    else ``GENNAKER_LOCAL_RESTART_LIMIT``, ``GENNAKER_LOCAL_RESTART_BACKOFF``,
    ``GENNAKER_LOCAL_STOP_GRACE``, ``GENNAKER_LOCAL_SUPERVISOR_INTERVAL``.

Restarts of the supervisor or the machine
    The instances run in their own sessions: killing the supervisor leaves them running.
    :func:`ensure_running` starts a new supervisor, whose first pass adopts every recorded
    process that is still ours (``instance.adopted``, no restart) and restarts the others
    (``restarts += 1``, not counted as a crash: they died with the machine or were never
    watched). Instances stopped by :func:`stop` are started again without counting.
    An adopted process is not the supervisor's child: its exit code is unknown.

POSIX only (``fcntl``, sessions, process groups); ``/proc`` makes identity checks exact
(Linux), elsewhere a live pid is taken at its word.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, NamedTuple

from gennaker.cloud.local import logfiles, privfiles, procenv
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import Health, Image, Instance, ServerGroup, utcnow
from gennaker.errors import CloudError, InvalidRequest, NotFound, ProviderUnavailable, QuotaExceeded
from gennaker.paths import gennaker_home
from gennaker.spec.durations import format_duration, parse_duration

MODULE = "gennaker.cloud.local.supervisor"
MODULES = (MODULE, "gennaker.cloud.local_supervisor")
"""This module's name, and its name before the local provider moved to ``cloud/local/``: an upgrade must
recognise (not orphan) the supervisors that are running."""
LOCALHOST = "127.0.0.1"
DESTROYING_TAG = "gennaker:destroying"
"""A server group tag: when set (any non-empty value) the supervisor stops and deletes its instances and exits."""

MAX_BACKOFF = 10.0
log = logging.getLogger(MODULE)

# The umask instances start with: the one this process inherited (main() makes its own 077 for its files).
_INSTANCE_UMASK = -1  # -1: unchanged

# Processes this process started (supervisors, instances): polled to learn exit codes and reap zombies.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


# --------------------------------------------------------------------------- options and paths


@dataclass(frozen=True)
class SupervisorOptions:
    """How the supervisor loop behaves; :meth:`from_env` reads ``GENNAKER_LOCAL_*``."""

    interval: float = 0.5
    restart_limit: int = 5
    restart_backoff: float = 0.5
    stop_grace: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SupervisorOptions:
        """Defaults, overridden by ``GENNAKER_LOCAL_SUPERVISOR_INTERVAL``, ``..._RESTART_LIMIT`` and so on."""
        env = os.environ if environ is None else environ
        names = {
            "interval": "GENNAKER_LOCAL_SUPERVISOR_INTERVAL",
            "restart_limit": "GENNAKER_LOCAL_RESTART_LIMIT",
            "restart_backoff": "GENNAKER_LOCAL_RESTART_BACKOFF",
            "stop_grace": "GENNAKER_LOCAL_STOP_GRACE",
        }
        values: dict[str, Any] = {}
        for attr, var in names.items():
            text = env.get(var, "").strip()
            if not text:
                continue
            try:
                values[attr] = int(text) if attr == "restart_limit" else parse_duration(text).total_seconds()
            except ValueError as error:
                raise InvalidRequest(f"{var}={text!r} is not valid: {error}") from error
        return cls(**values)

    def to_args(self) -> list[str]:
        """The command-line options that give these values."""
        return [
            f"--interval={self.interval}",
            f"--restart-limit={self.restart_limit}",
            f"--restart-backoff={self.restart_backoff}",
            f"--stop-grace={self.stop_grace}",
        ]


@dataclass(frozen=True)
class SupervisorPaths:
    """Where one server group's supervisor keeps its pid, locks, process records and logs."""

    home: Path
    account: str
    region: str
    name: str

    @classmethod
    def of(cls, home: str | os.PathLike[str], account: str, region: str, name: str) -> SupervisorPaths:
        for what, value in (("account", account), ("region", region), ("server group", name)):
            if not value or value in (".", "..") or "/" in value or "\0" in value:
                raise InvalidRequest(f"{what} {value!r} cannot name a directory")
        return cls(Path(home).expanduser().absolute(), account, region, name)

    @property
    def run_dir(self) -> Path:
        return self.home / "local" / "run" / self.account / self.region

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / f"{self.name}.lock"

    @property
    def alive_file(self) -> Path:
        return self.run_dir / f"{self.name}.alive"

    @property
    def pass_lock(self) -> Path:
        return self.run_dir / f"{self.name}.reconcile.lock"

    @property
    def stopped_file(self) -> Path:
        """Present after :func:`stop`: a watchdog leaves the group's supervisor stopped (the next start removes it)."""
        return self.run_dir / f"{self.name}.stopped"

    @property
    def records_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def log_dir(self) -> Path:
        return self.home / "local" / "logs" / self.name

    @property
    def supervisor_log(self) -> Path:
        return self.log_dir / "supervisor.log"

    def instance_log(self, instance_id: str) -> Path:
        return self.log_dir / f"{instance_id}.log"

    def record_file(self, instance_id: str) -> Path:
        return self.records_dir / f"{instance_id}.json"


# --------------------------------------------------------------------------- health checks


@dataclass(frozen=True)
class HealthCheckSettings:
    """The spec's HealthCheck, read from a server group's ``health_check`` dict (times in seconds)."""

    type: str = "http"
    path: str = "/health"
    interval: float = 2.0
    timeout: float = 2.0
    healthy_threshold: int = 1
    grace_period: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> HealthCheckSettings:
        """Read camelCase or snake_case keys; raises :class:`InvalidRequest` on bad values."""
        data = dict(data or {})

        def pick(*keys: str) -> Any:
            for key in keys:
                if data.get(key) is not None:
                    return data[key]
            return None

        def seconds(default: float, *keys: str) -> float:
            value = pick(*keys)
            if value is None:
                return default
            try:
                return parse_duration(value).total_seconds()
            except ValueError as error:
                raise InvalidRequest(f"health check {keys[0]}: {error}") from error

        kind = str(pick("type") or "http").lower()
        if kind not in ("http", "tcp", "none"):
            raise InvalidRequest(f"health check type {kind!r} is not http, tcp or none")
        path = str(pick("path") or "/health")
        threshold = pick("healthyThreshold", "healthy_threshold")
        try:
            threshold = 1 if threshold is None else int(threshold)
        except (TypeError, ValueError) as error:
            raise InvalidRequest(f"health check healthyThreshold {threshold!r} is not a number") from error
        return cls(
            type=kind,
            path=path if path.startswith("/") else f"/{path}",
            interval=seconds(2.0, "interval"),
            timeout=max(seconds(2.0, "timeout"), 0.01),
            healthy_threshold=max(threshold, 1),
            grace_period=seconds(0.0, "gracePeriod", "grace_period"),
        )


class Probe(NamedTuple):
    """One health check: did it pass, and what happened, in plain words."""

    ok: bool
    reason: str


def instance_health(
    port: int | None,
    health_check: HealthCheckSettings | Mapping[str, Any] | None = None,
    *,
    host: str = LOCALHOST,
) -> Probe:
    """Check one instance once: HTTP GET of the health path (2xx/3xx pass), a TCP connect, or nothing (``none``)."""
    settings = (
        health_check if isinstance(health_check, HealthCheckSettings) else HealthCheckSettings.from_dict(health_check)
    )
    if settings.type == "none":
        return Probe(True, "no health check")
    if port is None:
        return Probe(False, "no port")
    where = f"{host}:{port}"
    if settings.type == "tcp":
        try:
            with socket.create_connection((host, port), timeout=settings.timeout):
                return Probe(True, f"TCP connect to {where}")
        except OSError as error:
            return Probe(False, _network_reason(error, where, settings.timeout))
    conn = http.client.HTTPConnection(host, port, timeout=settings.timeout)
    try:
        conn.request("GET", settings.path, headers={"User-Agent": "gennaker-supervisor", "Connection": "close"})
        response = conn.getresponse()
        response.read(65536)
        status = response.status
    except http.client.HTTPException as error:
        return Probe(False, f"no valid HTTP answer on {settings.path} at {where} ({type(error).__name__})")
    except OSError as error:
        return Probe(False, _network_reason(error, where, settings.timeout))
    finally:
        conn.close()
    if 200 <= status < 400:
        return Probe(True, f"HTTP {status} on {settings.path}")
    return Probe(False, f"HTTP {status} on {settings.path}")


def _network_reason(error: OSError, where: str, timeout: float) -> str:
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused on {where}"
    if isinstance(error, TimeoutError | socket.timeout):
        return f"no answer within {_seconds(timeout)} on {where}"
    if isinstance(error, ConnectionResetError):
        return f"connection reset on {where}"
    return f"{error.strerror or error} on {where}"


def _seconds(value: float) -> str:
    return format_duration(timedelta(seconds=value))


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` from ``/proc/<pid>/stat``; None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _environ_has(pid: int, entry: str) -> bool:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return entry.encode() in raw.split(b"\0")


def pid_alive(pid: int | None) -> bool:
    """A process with this pid runs (a zombie does not count). Reaps it if this process started it."""
    if not pid or pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None  # poll() reaps; the exit code stays for _exit_code()
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X", "x")
    if _has_proc():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_children() -> None:
    """Reap the processes this process started that have exited (their exit codes stay for :func:`_exit_code`)."""
    for child in list(_CHILDREN.values()):
        child.poll()


def _exit_code(pid: int) -> int | None:
    """The exit code of a child of this process that ended (None if unknown: not our child)."""
    child = _CHILDREN.pop(pid, None)
    return None if child is None else child.poll()


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs, at most ``timeout`` s; the ones still running."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            for pid in set(pids) - set(alive):
                _CHILDREN.pop(pid, None)
            return alive
        time.sleep(0.02)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a process group whose leader is ``pid`` (a process started with its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_pids(pids: Sequence[int], grace: float) -> list[int]:
    """SIGTERM each process group, SIGKILL what is left after ``grace`` s; the ones that would not die."""
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    alive = _wait_gone(pids, grace)
    for pid in pids:  # also the stragglers of groups whose leader did exit
        _signal_group(pid, signal.SIGKILL)
    return _wait_gone(alive, 5.0)


def _exit_phrase(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit code {code} (killed by {name})"
    return f"exit code {code}"


# --------------------------------------------------------------------------- files and locks


@contextlib.contextmanager
def _flock(path: Path, *, timeout: float | None = 30.0) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (made if missing); ProviderUnavailable after ``timeout`` s."""
    fd = privfiles.open_private(path, os.O_RDWR)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ProviderUnavailable(f"{path} stayed locked by another process for {timeout} s") from None
                time.sleep(0.02)
        yield fd
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    privfiles.write_private(path, text)  # 0600 in 0700 folders: only our user reads the run files


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _is_supervisor(pid: int | None, paths: SupervisorPaths) -> bool:
    """``pid`` runs, and is this module supervising this server group of this home."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    cmdline = _cmdline(pid)
    if cmdline is None:
        return not _has_proc()
    wanted = {
        "--home": str(paths.home),
        "--account": paths.account,
        "--region": paths.region,
        "--server-group": paths.name,
    }
    got = {arg: cmdline[i + 1] for i, arg in enumerate(cmdline[:-1]) if arg in wanted}
    return any(module in cmdline for module in MODULES) and got == wanted


def _alive_holder(paths: SupervisorPaths) -> int | None:
    """The pid of the supervisor holding ``<name>.alive``, if one holds it."""
    fd = privfiles.open_private(paths.alive_file, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # nobody holds it (closing the fd releases our lock)
        except BlockingIOError:
            pass
    finally:
        os.close(fd)
    deadline = time.monotonic() + 2.0  # a supervisor that just locked it writes its pid right after
    while True:
        pid = _read_pid(paths.alive_file)
        if _is_supervisor(pid, paths) or time.monotonic() >= deadline:
            return pid if pid_alive(pid) else None
        time.sleep(0.02)


def supervisor_pid(home: str | os.PathLike[str], account: str, region: str, name: str) -> int | None:
    """The pid of the server group's running supervisor, or None."""
    paths = SupervisorPaths.of(home, account, region, name)
    pid = _read_pid(paths.pid_file)
    if _is_supervisor(pid, paths):
        return pid
    return _alive_holder(paths)


# --------------------------------------------------------------------------- process records


@dataclass
class _Record:
    """What the supervisor knows about one instance's process (a JSON file per instance)."""

    instance_id: str
    state: str = "new"  # new | running | backoff | failed | stopped
    pid: int | None = None
    proc_start: int | None = None
    boot_id: str | None = None
    port: int | None = None
    argv: list[str] = field(default_factory=list)
    log: str = ""
    started_at: float = 0.0
    next_start: float = 0.0
    crashes: int = 0
    last_exit: str = ""
    count_restart: bool = False
    passes: int = 0
    fails: int = 0

    @classmethod
    def from_json(cls, text: str) -> _Record:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _is_ours(record: _Record) -> bool:
    """The recorded process still runs and is the one we started (not a reused pid)."""
    pid = record.pid
    if record.state != "running" or not pid_alive(pid):
        return False
    assert pid is not None
    if pid in _CHILDREN:
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return not _has_proc()
    if record.proc_start is not None and stat[1] != record.proc_start:
        return False
    if record.boot_id is not None and _boot_id() not in (None, record.boot_id):
        return False
    cmdline = _cmdline(pid)
    if cmdline and record.argv and cmdline[-1] == record.argv[-1]:
        return True
    return _environ_has(pid, f"GENNAKER_INSTANCE_ID={record.instance_id}")


def _load_records(paths: SupervisorPaths) -> dict[str, _Record]:
    records: dict[str, _Record] = {}
    if not paths.records_dir.is_dir():
        return records
    for file in sorted(paths.records_dir.glob("*.json")):
        try:
            record = _Record.from_json(file.read_text())
        except (OSError, ValueError, TypeError) as error:
            log.warning("ignoring unreadable process record %s: %s", file, error)
            continue
        records[record.instance_id] = record
    return records


def _save_record(paths: SupervisorPaths, record: _Record) -> None:
    _write_atomic(paths.record_file(record.instance_id), record.to_json())


def _drop_record(paths: SupervisorPaths, instance_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        paths.record_file(instance_id).unlink()


def process_ended(paths: SupervisorPaths, instance_id: str) -> str | None:
    """Why the instance's recorded process is not running, if it is not; None if it runs or nothing is recorded.

    Cheap enough for every read and every routing refresh: the record, then ``/proc/<pid>/stat``
    (alive, not a zombie, and the recorded start time: a reused pid does not count).
    """
    try:
        record = _Record.from_json(paths.record_file(instance_id).read_text())
    except (OSError, ValueError, TypeError):
        return None
    if record.state != "running" or record.pid is None:
        return f"its process is not running ({record.state})"
    stat = _proc_stat(record.pid)  # not pid_alive(): a reader's own old child may have had this pid
    if stat is None and (_has_proc() or not pid_alive(record.pid)):
        return f"its process (pid {record.pid}) has ended"
    if stat is not None and stat[0] in ("Z", "X", "x"):
        return f"its process (pid {record.pid}) has ended"
    if stat is not None and record.proc_start is not None and stat[1] != record.proc_start:
        return f"its process (pid {record.pid}) has ended (the pid now names another process)"
    return None


def instance_pids(home: str | os.PathLike[str], account: str, region: str, name: str) -> dict[str, int]:
    """Instance id -> pid of every recorded instance process of the group that still runs."""
    paths = SupervisorPaths.of(home, account, region, name)
    return {
        iid: record.pid for iid, record in _load_records(paths).items() if record.pid is not None and _is_ours(record)
    }


def stop_instances(
    home: str | os.PathLike[str], account: str, region: str, name: str, *, grace: float = 5.0
) -> list[str]:
    """Stop every recorded instance process of the group now (no store writes); the ids stopped.

    For a group with no supervisor (killed, or never restarted); a running supervisor
    would start them again: use :func:`stop` instead.
    """
    paths = SupervisorPaths.of(home, account, region, name)
    with _flock(paths.pass_lock, timeout=60.0):
        records = _load_records(paths)
        live = {iid: record for iid, record in records.items() if _is_ours(record)}
        _stop_pids([record.pid for record in live.values() if record.pid], grace)
        for record in live.values():
            record.state, record.pid, record.next_start = "stopped", None, 0.0
            _save_record(paths, record)
        return sorted(live)


# --------------------------------------------------------------------------- ports and commands


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def free_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A free TCP port of 127.0.0.1 (bind port 0, read it, close), not one of ``exclude``."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOCALHOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise QuotaExceeded(f"found no free port on {LOCALHOST}")


@dataclass(frozen=True)
class Command:
    """How to start an instance of an image: argv, working directory, environment (without the instance's)."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]


def image_command(image: Image, group: ServerGroup, home: str | os.PathLike[str]) -> Command:
    """The image's start command for the group: manifest ``path``, ``start_command`` and ``env``."""
    manifest = image.manifest
    where = manifest.get("path")
    if not where:
        raise InvalidRequest(f"image {image.id} has no manifest path (its directory)")
    image_dir = Path(str(where)).expanduser()
    if not image_dir.is_absolute():
        image_dir = Path(home).expanduser().absolute() / "local" / "images" / image_dir
    if not image_dir.is_dir():
        raise InvalidRequest(f"the directory {image_dir} of image {image.id} does not exist")
    raw = manifest.get("start_command", manifest.get("startCommand"))
    if isinstance(raw, str):
        argv = shlex.split(raw)
    elif isinstance(raw, list | tuple) and all(isinstance(arg, str | int | float) for arg in raw):
        argv = [str(arg) for arg in raw]
    else:
        raise InvalidRequest(f"image {image.id} has no start_command (an argv list) in its manifest")
    if not argv:
        raise InvalidRequest(f"image {image.id} has an empty start_command")
    argv = [_resolve(arg, image_dir, first=index == 0) for index, arg in enumerate(argv)]
    # Built from named parts, never the caller's environment (see procenv): no secret of Airflow's.
    env = procenv.instance_env(manifest.get("env"), group.environment)
    return Command(argv=argv, cwd=image_dir, env=env)


def _resolve(arg: str, image_dir: Path, *, first: bool) -> str:
    """An argument that names a file of the image directory, made absolute (argv[0] if it has a ``/``)."""
    if not arg or os.path.isabs(arg) or arg.startswith("-"):
        return arg
    candidate = image_dir / arg
    if candidate.exists() or (first and "/" in arg):
        return str(candidate)
    return arg


# --------------------------------------------------------------------------- one pass


@dataclass
class ReconcileResult:
    """What one pass did; ``destroyed``: the group is gone (or destroying), every instance was stopped."""

    destroyed: bool = False
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    health: dict[str, Health] = field(default_factory=dict)


class Reconciler:
    """Brings one server group's processes in line with the store, one pass at a time.

    Everything it must remember between passes is in the store and the process records,
    so a new Reconciler (a restarted supervisor, or :func:`reconcile_once`) carries on;
    it only keeps when each instance was last probed.
    """

    def __init__(
        self,
        store: StateStore,
        home: str | os.PathLike[str],
        account: str,
        region: str,
        name: str,
        options: SupervisorOptions | None = None,
    ) -> None:
        self.store = store
        self.paths = SupervisorPaths.of(home, account, region, name)
        self.account, self.region, self.name = account, region, name
        self.options = options or SupervisorOptions.from_env()
        self._last_probe: dict[str, float] = {}
        self._bad_health_check: str | None = None

    # ----------------------------------------------------------------------- the pass

    def reconcile(self, *, adopt: bool = False) -> ReconcileResult:
        """One pass (see the module doc). ``adopt``: the first pass of a new supervisor."""
        with _flock(self.paths.pass_lock, timeout=60.0):
            return self._reconcile(adopt)

    def _reconcile(self, adopt: bool) -> ReconcileResult:
        result = ReconcileResult()
        try:
            group = self.store.get_server_group(self.account, self.region, self.name)
        except NotFound:
            result.stopped = self._teardown(None, "its server group was destroyed")
            result.destroyed = True
            return result
        if group.tags.get(DESTROYING_TAG):
            result.stopped = self._teardown(group, "its server group is being destroyed")
            result.destroyed = True
            return result

        settings = self._settings(group)
        records = _load_records(self.paths)
        rows = sorted(group.instances, key=lambda instance: (instance.launched, instance.id))
        row_ids = {instance.id for instance in rows}

        gone = [records.pop(iid) for iid in list(records) if iid not in row_ids]
        if gone:
            result.stopped += self._stop(gone, "terminated", "its instance was terminated")

        desired = group.capacity.desired
        if len(rows) > desired:
            extra = rows[desired:][::-1]  # newest first
            rows = rows[:desired]
            for instance in extra:
                self.store.delete_instance(instance.id)
            stopping = [records.pop(instance.id) for instance in extra if instance.id in records]
            self._stop(stopping, "terminated", f"scaled down to {desired}")
            for instance in extra:
                if instance.id not in {record.instance_id for record in stopping}:
                    self._event("instance.terminated", instance, f"scaled down to {desired}")
            result.stopped += [instance.id for instance in extra]

        while len(rows) < desired:
            instance = Instance(
                id=f"i-{uuid.uuid4().hex[:12]}",
                server_group=self.name,
                host=LOCALHOST,
                health=Health.STARTING,
                health_reason="waiting to be started",
            )
            self.store.put_instance(instance, account=self.account, region=self.region)
            rows.append(instance)

        ports = {port for port in [*(r.port for r in records.values()), *(i.port for i in rows)] if port}
        just_started: set[str] = set()
        current: list[tuple[Instance, _Record]] = []
        saved = {iid: record.to_json() for iid, record in records.items()}
        for instance in rows:
            record = records.get(instance.id) or _Record(instance.id)
            instance = self._lifecycle(group, instance, record, adopt, ports, result)
            if instance.id in result.started:
                just_started.add(instance.id)
            current.append((instance, record))

        now = time.monotonic()
        due = [
            (instance, record)
            for instance, record in current
            if record.state == "running"
            and instance.id not in just_started
            and now - self._last_probe.get(instance.id, -1e9) >= settings.interval
        ]
        for instance, _ in due:
            self._last_probe[instance.id] = now
        probes = self._probe_all([record.port for _, record in due], settings)
        applied = {
            instance.id: self._apply_probe(instance, record, probe, settings)
            for (instance, record), probe in zip(due, probes, strict=True)
        }
        for instance, record in current:
            if saved.get(instance.id) != record.to_json():
                _save_record(self.paths, record)
            result.health[instance.id] = applied.get(instance.id, instance).health
        self._last_probe = {iid: at for iid, at in self._last_probe.items() if iid in row_ids}
        return result

    def _settings(self, group: ServerGroup) -> HealthCheckSettings:
        try:
            settings = HealthCheckSettings.from_dict(group.health_check)
        except InvalidRequest as error:
            if self._bad_health_check != str(error):
                log.warning("%s: bad health check %s (%s); using the defaults", self.name, group.health_check, error)
            self._bad_health_check = str(error)
            return HealthCheckSettings()
        return settings

    # ----------------------------------------------------------------------- process lifecycle

    def _lifecycle(
        self,
        group: ServerGroup,
        instance: Instance,
        record: _Record,
        adopt: bool,
        ports: set[int],
        result: ReconcileResult,
    ) -> Instance:
        """Notice a dead process (crash, or gone while nobody watched), start a due one."""
        if record.state == "running":
            child = record.pid in _CHILDREN
            if _is_ours(record):
                if adopt and not child:
                    log.info(
                        "%s: adopted instance %s (pid %s, port %s)", self.name, instance.id, record.pid, record.port
                    )
                    self._event("instance.adopted", instance, f"adopted pid {record.pid}", record)
                return instance
            code = _exit_code(record.pid) if record.pid else None
            if adopt and not child:
                reason = f"its process (pid {record.pid}) was gone when the supervisor started; restarting"
                log.info("%s: instance %s: %s", self.name, instance.id, reason)
                record.state, record.pid, record.next_start, record.count_restart = "backoff", None, 0.0, True
                _save_record(self.paths, record)
                instance = self._set_health(instance, Health.DOWN, reason)
            else:
                instance = self._crashed(instance, record, _exit_phrase(code), result)
        if record.state in ("new", "backoff", "stopped") and time.time() >= record.next_start:
            instance = self._start(group, instance, record, ports, result)
        return instance

    def _crashed(self, instance: Instance, record: _Record, what: str, result: ReconcileResult) -> Instance:
        record.crashes += 1
        record.last_exit = what
        record.pid, record.passes, record.fails = None, 0, 0
        result.crashed.append(instance.id)
        limit = self.options.restart_limit
        log_path = record.log or str(self.paths.instance_log(instance.id))
        if record.crashes > limit:
            record.state = "failed"
            _save_record(self.paths, record)
            reason = f"crashed {record.crashes} times; last {what}; see {log_path}"
            log.warning("%s: instance %s gave up: %s", self.name, instance.id, reason)
            instance = self._set_health(instance, Health.DOWN, reason)
            self._event("instance.failed", instance, reason, record)
            return instance
        delay = min(self.options.restart_backoff * 2 ** (record.crashes - 1), MAX_BACKOFF)
        record.state, record.next_start, record.count_restart = "backoff", time.time() + delay, True
        _save_record(self.paths, record)
        reason = f"crashed: {what}; restart {record.crashes} of {limit} in {delay:g} s; see {log_path}"
        log.warning("%s: instance %s %s", self.name, instance.id, reason)
        instance = self._set_health(instance, Health.DOWN, reason)
        self._event("instance.crashed", instance, reason, record)
        return instance

    def _start(
        self, group: ServerGroup, instance: Instance, record: _Record, ports: set[int], result: ReconcileResult
    ) -> Instance:
        try:
            command = image_command(self.store.get_image(group.image_id), group, self.paths.home)
        except (NotFound, InvalidRequest) as error:
            record.next_start = time.time() + 2.0  # the image may yet appear; not the process's fault
            return self._set_health(instance, instance.health, f"cannot start: {error.message}")

        log_path = self.paths.instance_log(instance.id)
        privfiles.private_dir(self.paths.log_dir)
        port = instance.port or record.port
        note = ""
        if port is None:
            port = free_port(ports)
        elif not _port_free(port):
            new = free_port(ports | {port})
            note = f"port {port} is in use; using port {new} instead"
            log.warning("%s: instance %s: %s", self.name, instance.id, note)
            port = new
        ports.add(port)
        env = {
            **command.env,
            "PORT": str(port),
            "HOST": LOCALHOST,
            "GENNAKER_INSTANCE_ID": instance.id,
            "GENNAKER_SERVER_GROUP": self.name,
        }
        with logfiles.open_log(log_path) as out:  # O_APPEND: copy-truncate rotation keeps the child's stream
            stamp = utcnow().isoformat(timespec="seconds")
            if note:
                out.write(f"--- {stamp} gennaker: {note}\n".encode())
            out.write(f"--- {stamp} gennaker: starting on {LOCALHOST}:{port}: {shlex.join(command.argv)}\n".encode())
            out.flush()
            try:
                process = subprocess.Popen(
                    command.argv,
                    cwd=command.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    umask=_INSTANCE_UMASK,
                )
            except OSError as error:
                out.write(f"--- {stamp} gennaker: could not start: {error}\n".encode())
                record.port, record.log = port, str(log_path)
                return self._crashed(instance, record, f"start error: {error}", result)
        _CHILDREN[process.pid] = process
        stat = _proc_stat(process.pid)
        counted = record.count_restart
        record.state, record.pid, record.port, record.argv = "running", process.pid, port, command.argv
        record.proc_start, record.boot_id = (stat[1] if stat else None), _boot_id()
        record.log, record.started_at, record.next_start = str(log_path), time.time(), 0.0
        record.passes, record.fails, record.count_restart = 0, 0, False
        _save_record(self.paths, record)  # before anything can fail: never two processes for one record
        result.started.append(instance.id)
        self._last_probe.pop(instance.id, None)

        reason = f"started pid {process.pid} on {LOCALHOST}:{port}; waiting for its health check"
        log.info("%s: instance %s %s%s", self.name, instance.id, reason, " (a restart)" if counted else "")
        instance = self._change(
            instance,
            port=port,
            health=Health.STARTING,
            health_reason=reason,
            restarts=instance.restarts + (1 if counted else 0),
        )
        if counted:
            self._event("instance.restarted", instance, f"restart {instance.restarts}: {reason}", record)
        else:
            self._event("instance.started", instance, reason, record)
        return instance

    def _stop(self, records: Sequence[_Record], kind: str, why: str) -> list[str]:
        """Stop the records' processes (all at once), forget the records, log an event each."""
        live = [record for record in records if _is_ours(record)]
        stuck = _stop_pids([record.pid for record in live if record.pid], self.options.stop_grace)
        for record in records:
            _drop_record(self.paths, record.instance_id)
            self._last_probe.pop(record.instance_id, None)
            message = f"{why}; stopped pid {record.pid}" if record in live else why
            if record.pid in stuck:
                message += " (it would not die, even on SIGKILL)"
            log.info("%s: instance %s %s", self.name, record.instance_id, message)
            self.store.record_event(
                f"instance.{kind}",
                record.instance_id,
                message,
                account=self.account,
                data={"server_group": self.name, "pid": record.pid, "port": record.port},
            )
        return [record.instance_id for record in records]

    def _teardown(self, group: ServerGroup | None, why: str) -> list[str]:
        records = list(_load_records(self.paths).values())
        stopped = self._stop(records, "terminated", why) if records else []
        if group is not None:
            for instance in group.instances:
                self.store.delete_instance(instance.id)
        with contextlib.suppress(OSError):
            self.paths.records_dir.rmdir()
        return stopped

    def shutdown(self) -> list[str]:
        """Stop every instance process (the supervisor is stopping); rows go Down; a restart starts them again."""
        with _flock(self.paths.pass_lock, timeout=60.0):
            records = _load_records(self.paths)
            live = [record for record in records.values() if _is_ours(record)]
            _stop_pids([record.pid for record in live if record.pid], self.options.stop_grace)
            for record in live:
                record.state, record.pid, record.next_start = "stopped", None, 0.0
                _save_record(self.paths, record)
                with contextlib.suppress(NotFound):
                    instance = self.store.get_instance(record.instance_id)
                    instance = self._set_health(instance, Health.DOWN, "stopped with its supervisor")
                    self._event("instance.stopped", instance, "stopped with its supervisor", record)
            return [record.instance_id for record in live]

    # ----------------------------------------------------------------------- health

    def _probe_all(self, ports: list[int | None], settings: HealthCheckSettings) -> list[Probe]:
        if len(ports) <= 1:
            return [instance_health(port, settings) for port in ports]
        with ThreadPoolExecutor(max_workers=min(len(ports), 16), thread_name_prefix="probe") as pool:
            return list(pool.map(lambda port: instance_health(port, settings), ports))

    def _apply_probe(
        self, instance: Instance, record: _Record, probe: Probe, settings: HealthCheckSettings
    ) -> Instance:
        threshold = settings.healthy_threshold
        if probe.ok:
            record.fails = 0
            record.passes = min(record.passes + 1, threshold)
            if instance.health is Health.UP:
                return instance
            if record.passes >= threshold:
                record.crashes = 0
                instance = self._set_health(instance, Health.UP, "")
                self._event("instance.up", instance, f"up: {probe.reason}", record)
                return instance
            return self._set_health(instance, instance.health, f"health check passed {record.passes} of {threshold}")
        record.passes = 0
        record.fails += 1
        if instance.health is Health.UP:
            instance = self._set_health(instance, Health.DOWN, probe.reason)
            self._event("instance.down", instance, f"down: {probe.reason}", record)
            return instance
        health = Health.DOWN if instance.health is Health.DOWN else Health.STARTING
        if time.time() < record.started_at + settings.grace_period:
            reason = f"in its grace period ({_seconds(settings.grace_period)}); last check: {probe.reason}"
        else:
            reason = probe.reason
        return self._set_health(instance, health, reason)

    # ----------------------------------------------------------------------- store writes

    def _set_health(self, instance: Instance, health: Health, reason: str) -> Instance:
        if instance.health is health and instance.health_reason == reason:
            return instance
        if instance.health is not health:
            log.info("%s: instance %s is %s%s", self.name, instance.id, health, f" ({reason})" if reason else "")
        return self._change(instance, health=health, health_reason=reason)

    def _change(self, instance: Instance, **changes: Any) -> Instance:
        """Write changes to the instance row (``health_since`` follows health); the row as it was if it is gone."""

        def change(current: Instance) -> Instance:
            since = {"health_since": utcnow()} if changes.get("health", current.health) is not current.health else {}
            return current.replace(**changes, **since)

        try:
            return self.store.update_instance(instance.id, change)
        except NotFound:  # terminated meanwhile: the next pass stops its process
            return instance

    def _event(self, kind: str, instance: Instance, message: str, record: _Record | None = None) -> None:
        data = {"server_group": self.name, "port": instance.port, "pid": record.pid if record else None}
        self.store.record_event(kind, instance.id, message, account=self.account, data=data)


def reconcile_once(
    store: StateStore,
    home: str | os.PathLike[str],
    account: str,
    region: str,
    name: str,
    *,
    options: SupervisorOptions | None = None,
    adopt: bool = False,
) -> ReconcileResult:
    """One supervisor pass over the group, in this process (processes it starts are its children)."""
    return Reconciler(store, home, account, region, name, options).reconcile(adopt=adopt)


# --------------------------------------------------------------------------- starting and stopping the supervisor


def ensure_running(
    store: StateStore,
    home: str | os.PathLike[str],
    account: str,
    region: str,
    name: str,
    *,
    options: SupervisorOptions | None = None,
    startup_timeout: float = 30.0,
) -> int:
    """Start the group's supervisor unless it runs; its pid. Raises NotFound if there is no such group.

    Returns once the supervisor holds its lock (about a second for a new one); a
    supervisor that exits at once, or is not up within ``startup_timeout`` s, raises
    :class:`ProviderUnavailable` with the end of its log. ``options`` None: the
    supervisor reads ``GENNAKER_LOCAL_*`` from the environment it inherits.
    """
    paths = SupervisorPaths.of(home, account, region, name)
    store.get_server_group(account, region, name)
    with _flock(paths.lock_file):
        pid = _read_pid(paths.pid_file)
        if _is_supervisor(pid, paths):
            assert pid is not None
            return pid
        holder = _alive_holder(paths)
        if holder is not None:
            _write_atomic(paths.pid_file, f"{holder}\n")
            return holder
        privfiles.private_dir(paths.log_dir)
        logfiles.LogLimits.from_env()  # a bad setting is a clear error here, not a supervisor that dies at once
        argv = [
            sys.executable,
            "-m",
            MODULE,
            "--home",
            str(paths.home),
            "--state",
            str(Path(store.path).absolute()),
            "--account",
            account,
            "--region",
            region,
            "--server-group",
            name,
            *(options.to_args() if options else []),
        ]
        with logfiles.open_log(paths.supervisor_log) as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=paths.home,
                env=_supervisor_env(),
            )
        _CHILDREN[process.pid] = process
        _write_atomic(paths.pid_file, f"{process.pid}\n")
        return _await_start(process, paths, timeout=startup_timeout)


def _await_start(process: subprocess.Popen[bytes], paths: SupervisorPaths, *, timeout: float) -> int:
    """Wait until the new supervisor holds ``<name>.alive``; the pid that supervises (a race winner's, if it lost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is None:
            if _read_pid(paths.alive_file) == process.pid and _alive_holder(paths) == process.pid:
                return process.pid
        else:
            _CHILDREN.pop(process.pid, None)
            holder = _alive_holder(paths)
            if code == 0 and holder is not None:  # another supervisor had it (started by hand)
                _write_atomic(paths.pid_file, f"{holder}\n")
                return holder
            raise ProviderUnavailable(
                f"the supervisor of {paths.name} exited at once ({_exit_phrase(code)}): {_tail(paths.supervisor_log)}",
                hint=f"see {paths.supervisor_log}",
            )
        time.sleep(0.02)
    raise ProviderUnavailable(
        f"the supervisor of {paths.name} (pid {process.pid}) did not start within {timeout} s",
        hint=f"see {paths.supervisor_log}",
    )


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _supervisor_env() -> dict[str, str]:
    """A minimal environment (:func:`procenv.service_env`): its instances can read it through /proc."""
    return procenv.service_env()


def stop(home: str | os.PathLike[str], account: str, region: str, name: str, *, timeout: float = 30.0) -> bool:
    """Stop the group's supervisor (SIGTERM; it stops its instances) and wait; False if none ran.

    A supervisor still running after ``timeout`` s is killed. Instance processes left
    without a supervisor are stopped here too. ``<NAME>.stopped`` is written first, so no
    watchdog starts it again (the next start removes it).
    """
    paths = SupervisorPaths.of(home, account, region, name)
    _write_atomic(paths.stopped_file, f"{time.time()}\n")  # before the signal: no watchdog starts it again
    pid = supervisor_pid(home, account, region, name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if _wait_gone([pid], timeout):
            log.warning("supervisor %s of %s did not stop within %s s; killing it", pid, name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone([pid], 5.0)
    stop_instances(home, account, region, name)
    with _flock(paths.lock_file):
        if pid is not None and _read_pid(paths.pid_file) == pid:
            with contextlib.suppress(FileNotFoundError):
                paths.pid_file.unlink()
    return pid is not None


# --------------------------------------------------------------------------- the supervisor process


class _Stopping:
    def __init__(self) -> None:
        self.requested = False
        self.signal = ""

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signal = signal.Signals(signum).name


def run_supervisor(
    store: StateStore,
    home: str | os.PathLike[str],
    account: str,
    region: str,
    name: str,
    options: SupervisorOptions | None = None,
) -> int:
    """The supervisor loop, in this process, until SIGTERM/SIGINT or the group is gone; the exit status."""
    options = options or SupervisorOptions.from_env()
    paths = SupervisorPaths.of(home, account, region, name)
    alive: IO[str] = open(paths.alive_file, "a+", opener=privfiles.open_private)  # held (locked) for the whole life
    try:
        try:
            fcntl.flock(alive.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another supervisor (pid %s) already runs %s; exiting", _read_pid(paths.alive_file), name)
            return 0
        alive.seek(0)
        alive.truncate()
        alive.write(f"{os.getpid()}\n")
        alive.flush()
        with contextlib.suppress(FileNotFoundError):
            paths.stopped_file.unlink()  # running again: a watchdog restarts it if it dies
        with _flock(paths.lock_file):
            _write_atomic(paths.pid_file, f"{os.getpid()}\n")
        stopping = _Stopping()
        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return _loop(store, paths, options, stopping)
    finally:
        with contextlib.suppress(OSError, ProviderUnavailable), _flock(paths.lock_file, timeout=10.0):
            if _read_pid(paths.pid_file) == os.getpid():
                paths.pid_file.unlink()
        alive.close()


def _loop(store: StateStore, paths: SupervisorPaths, options: SupervisorOptions, stopping: _Stopping) -> int:
    name, account = paths.name, paths.account
    log.info(
        "supervisor pid %s of %s (account %s, region %s) started; %s", os.getpid(), name, account, paths.region, options
    )
    with contextlib.suppress(Exception):
        store.record_event(
            "supervisor.started",
            name,
            f"supervisor pid {os.getpid()} started",
            account=account,
            data={"pid": os.getpid()},
        )
    reconciler = Reconciler(store, paths.home, account, paths.region, name, options)
    watchdog = _start_watchdog(store, paths)
    first, why = True, ""
    while not stopping.requested:
        if not store.path.exists():
            why = f"the state file {store.path} is gone"
            break
        try:
            result = reconciler.reconcile(adopt=first)
        except Exception:  # a supervisor keeps supervising; the next pass retries
            log.exception("%s: the pass failed; retrying in %s s", name, options.interval)
        else:
            first = False
            if result.destroyed:
                watchdog.stop()
                log.info("%s: server group gone or destroying; stopped %s; exiting", name, result.stopped or "nothing")
                _event_quietly(store, "supervisor.stopped", name, "server group destroyed", account)
                return 0
            _heartbeat(paths, options)
        deadline = time.monotonic() + options.interval
        while not stopping.requested and time.monotonic() < deadline:
            time.sleep(min(0.05, options.interval))
    watchdog.stop()
    why = why or f"{stopping.signal or 'asked'} received"
    log.info("%s: stopping (%s): stopping the instances", name, why)
    try:
        stopped = reconciler.shutdown()
    except Exception:  # the store may be gone; stop the processes anyway
        log.exception("%s: shutdown through the store failed; stopping the processes directly", name)
        stopped = stop_instances(paths.home, account, paths.region, name, grace=options.stop_grace)
    log.info("%s: stopped %s; exiting", name, stopped or "no instances")
    _event_quietly(store, "supervisor.stopped", name, f"supervisor pid {os.getpid()} stopped ({why})", account)
    return 0


def _heartbeat(paths: SupervisorPaths, options: SupervisorOptions) -> None:
    """After a pass that went through: readers believe the health rows while this is fresh."""
    from gennaker.cloud.local import watchdog as local_watchdog  # it imports this module

    try:
        local_watchdog.write_heartbeat(paths, os.getpid(), options.interval)
    except OSError as error:  # readers then show the instances Unknown: the truth about what we know
        log.warning("%s: could not write the heartbeat: %s", paths.name, error)


def _start_watchdog(store: StateStore, paths: SupervisorPaths) -> Any:
    """A thread that restarts the home's other dead supervisors and dead load balancer proxies."""
    from gennaker.cloud.local import watchdog as local_watchdog  # it imports this module

    def check() -> None:
        local_watchdog.revive(store, paths.home, skip_group=(paths.account, paths.region, paths.name))

    return local_watchdog.Watchdog(check, name=f"watchdog-{paths.name}").start()


def _event_quietly(store: StateStore, kind: str, subject: str, message: str, account: str) -> None:
    if not store.path.exists():
        return
    try:
        store.record_event(kind, subject, message, account=account, data={"pid": os.getpid()})
    except (CloudError, OSError) as error:
        log.warning("could not record %s: %s", kind, error)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gennaker.cloud.local.supervisor --home H --account A --region R --server-group NAME``."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="the gennaker home (default: $GENNAKER_HOME, ...)")
    parser.add_argument("--state", default=None, help="the state file (default: <home>/local/state.db)")
    parser.add_argument("--account", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--server-group", required=True)
    defaults = SupervisorOptions.from_env()
    parser.add_argument("--interval", type=float, default=defaults.interval)
    parser.add_argument("--restart-limit", type=int, default=defaults.restart_limit)
    parser.add_argument("--restart-backoff", type=float, default=defaults.restart_backoff)
    parser.add_argument("--stop-grace", type=float, default=defaults.stop_grace)
    args = parser.parse_args(argv)

    _private_files()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    home = Path(args.home).expanduser() if args.home else gennaker_home()
    state = Path(args.state).expanduser() if args.state else home / "local" / "state.db"
    if not state.exists():
        log.error("no state file at %s; nothing to supervise", state)
        return 2
    options = SupervisorOptions(
        interval=args.interval,
        restart_limit=args.restart_limit,
        restart_backoff=args.restart_backoff,
        stop_grace=args.stop_grace,
    )
    store = StateStore(state)
    log_dir = SupervisorPaths.of(home, args.account, args.region, args.server_group).log_dir
    rotator = logfiles.Rotator(lambda: log_dir.glob("*.log"), logfiles.LogLimits.from_env()).start()
    try:
        return run_supervisor(store, home, args.account, args.region, args.server_group, options)
    finally:
        rotator.stop()


def _private_files() -> None:
    """Everything this supervisor creates is its user's alone; its instances get the umask it inherited."""
    global _INSTANCE_UMASK
    _INSTANCE_UMASK = os.umask(0o077)


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DESTROYING_TAG",
    "Command",
    "HealthCheckSettings",
    "Probe",
    "ReconcileResult",
    "Reconciler",
    "SupervisorOptions",
    "SupervisorPaths",
    "ensure_running",
    "free_port",
    "image_command",
    "instance_health",
    "instance_pids",
    "main",
    "pid_alive",
    "reconcile_once",
    "run_supervisor",
    "stop",
    "stop_instances",
    "supervisor_pid",
]
