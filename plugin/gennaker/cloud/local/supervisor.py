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

The supervisor's loop (every ``interval``, 0.5 s) runs one pass of :mod:`~gennaker.cloud.local.reconcile`
(instances started, stopped, restarted and health-checked there; see that module) and then writes
``<NAME>.heartbeat``; a watchdog thread restarts the home's other dead supervisors and dead load balancer
proxies (:mod:`~gennaker.cloud.local.watchdog`: readers show the rows of a silent supervisor as Unknown).
It exits when its group is gone or tagged ``gennaker:destroying`` (after stopping every instance), and when
the state file disappears.

The pieces: :mod:`~gennaker.cloud.local.supervisor_options` (options, the files of a group),
:mod:`~gennaker.cloud.local.supervisor_health` (health check settings, one probe),
:mod:`~gennaker.cloud.local.instance_processes` (process records, an image's command),
:mod:`~gennaker.cloud.local.reconcile` (one pass), :mod:`~gennaker.cloud.local.processes` (pids, locks,
ports). This module is their public face: everything the rest of gennaker uses is importable from here.

Restarts of the supervisor or the machine
    The instances run in their own sessions: killing the supervisor leaves them running.
    :func:`ensure_running` starts a new supervisor, whose first pass adopts every recorded
    process that is still ours (``instance.adopted``, no restart) and restarts the others
    (``restarts += 1``, not counted as a crash: they died with the machine or were never
    watched). Instances stopped by :func:`stop` are started again without counting.
    An adopted process is not the supervisor's child: its exit code is unknown.

Upgrades
    A supervisor started by gennaker 0.1 runs ``python -m gennaker.cloud.local_supervisor`` with the same
    options: :data:`MODULES` names both, so it is found, reused and stopped like one of ours.

POSIX only (``fcntl``, sessions, process groups); ``/proc`` makes identity checks exact
(Linux), elsewhere a live pid is taken at its word.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gennaker.cloud.local import logfiles, privfiles, procenv, processes, reconcile
from gennaker.cloud.local.instance_processes import (
    Command,
    image_command,
    instance_pids,
    process_ended,
    stop_instances,
)
from gennaker.cloud.local.processes import LOCALHOST, free_port, pid_alive
from gennaker.cloud.local.reconcile import Reconciler, ReconcileResult, reconcile_once
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.local.supervisor_health import HealthCheckSettings, Probe, instance_health
from gennaker.cloud.local.supervisor_options import (
    DESTROYING_TAG,
    MODULE,
    MODULES,
    SupervisorOptions,
    SupervisorPaths,
)
from gennaker.errors import CloudError, ProviderUnavailable
from gennaker.paths import gennaker_home

log = logging.getLogger(MODULE)


def reap_children() -> None:
    """Reap the processes this process started that have exited (their exit codes stay for the next pass)."""
    processes.CHILDREN.reap()


def is_supervisor(pid: int | None, paths: SupervisorPaths) -> bool:
    """``pid`` runs, and is this module supervising this server group of this home."""
    wanted = {
        "--home": str(paths.home),
        "--account": paths.account,
        "--region": paths.region,
        "--server-group": paths.name,
    }
    return processes.runs_module(pid, MODULES, wanted)


def _alive_holder(paths: SupervisorPaths) -> int | None:
    """The pid of the supervisor holding ``<name>.alive``, if one holds it."""
    if not processes.lock_held(paths.alive_file):
        return None
    deadline = time.monotonic() + 2.0  # a supervisor that just locked it writes its pid right after
    while True:
        pid = processes.read_pid(paths.alive_file)
        if is_supervisor(pid, paths) or time.monotonic() >= deadline:
            return pid if processes.pid_alive(pid) else None
        time.sleep(0.02)


def supervisor_pid(home: str | os.PathLike[str], account: str, region: str, name: str) -> int | None:
    """The pid of the server group's running supervisor, or None."""
    paths = SupervisorPaths.of(home, account, region, name)
    pid = processes.read_pid(paths.pid_file)
    if is_supervisor(pid, paths):
        return pid
    return _alive_holder(paths)


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
    with processes.flock(paths.lock_file):
        pid = processes.read_pid(paths.pid_file)
        if is_supervisor(pid, paths):
            assert pid is not None
            return pid
        holder = _alive_holder(paths)
        if holder is not None:
            privfiles.write_private(paths.pid_file, f"{holder}\n")
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
        process = processes.start_detached(argv, log_path=paths.supervisor_log, cwd=paths.home, env=_supervisor_env())
        processes.CHILDREN.add(process)
        privfiles.write_private(paths.pid_file, f"{process.pid}\n")
        return _await_start(process, paths, timeout=startup_timeout)


def _await_start(process: subprocess.Popen[bytes], paths: SupervisorPaths, *, timeout: float) -> int:
    """Wait until the new supervisor holds ``<name>.alive``; the pid that supervises (a race winner's, if it lost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is None:
            if processes.read_pid(paths.alive_file) == process.pid and _alive_holder(paths) == process.pid:
                return process.pid
        else:
            processes.CHILDREN.forget(process.pid)
            holder = _alive_holder(paths)
            if code == 0 and holder is not None:  # another supervisor had it (started by hand)
                privfiles.write_private(paths.pid_file, f"{holder}\n")
                return holder
            said = processes.tail_file(paths.supervisor_log)
            raise ProviderUnavailable(
                f"the supervisor of {paths.name} exited at once ({processes.exit_phrase(code)}): {said}",
                hint=f"see {paths.supervisor_log}",
            )
        time.sleep(0.02)
    raise ProviderUnavailable(
        f"the supervisor of {paths.name} (pid {process.pid}) did not start within {timeout} s",
        hint=f"see {paths.supervisor_log}",
    )


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
    privfiles.write_private(paths.stopped_file, f"{time.time()}\n")  # before the signal: no watchdog starts it again
    pid = supervisor_pid(home, account, region, name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if processes.wait_gone([pid], timeout):
            log.warning("supervisor %s of %s did not stop within %s s; killing it", pid, name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            processes.wait_gone([pid], 5.0)
    stop_instances(home, account, region, name)
    with processes.flock(paths.lock_file):
        if pid is not None and processes.read_pid(paths.pid_file) == pid:
            with contextlib.suppress(FileNotFoundError):
                paths.pid_file.unlink()
    return pid is not None


# --------------------------------------------------------------------------- the supervisor process


class _Stopping:
    """The signal handler of the loop: it asks the loop to stop after its pass."""

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
    alive = processes.hold_lock(paths.alive_file)  # held (locked) for the whole life
    if alive is None:
        log.info("another supervisor (pid %s) already runs %s; exiting", processes.read_pid(paths.alive_file), name)
        return 0
    try:
        os.ftruncate(alive, 0)
        os.pwrite(alive, f"{os.getpid()}\n".encode(), 0)
        with contextlib.suppress(FileNotFoundError):
            paths.stopped_file.unlink()  # running again: a watchdog restarts it if it dies
        with processes.flock(paths.lock_file):
            privfiles.write_private(paths.pid_file, f"{os.getpid()}\n")
        stopping = _Stopping()
        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return _loop(store, paths, options, stopping)
    finally:
        with contextlib.suppress(OSError, ProviderUnavailable), processes.flock(paths.lock_file, timeout=10.0):
            if processes.read_pid(paths.pid_file) == os.getpid():
                paths.pid_file.unlink()
        os.close(alive)


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
    reconcile.keep_instance_umask(os.umask(0o077))


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DESTROYING_TAG",
    "LOCALHOST",
    "MODULE",
    "MODULES",
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
    "is_supervisor",
    "main",
    "pid_alive",
    "process_ended",
    "reap_children",
    "reconcile_once",
    "run_supervisor",
    "stop",
    "stop_instances",
    "supervisor_pid",
]
