"""Health that tells the truth for the local provider: heartbeats, reads that distrust stale rows, a watchdog.

Heartbeat
    Every supervisor writes ``<home>/local/run/<A>/<R>/<NAME>.heartbeat`` (JSON: pid, unix
    time, its loop interval) after each pass that went through. The health it wrote into
    the state store is only as fresh as that file.

Reads (:func:`observe`)
    What :class:`~gennaker.cloud.local.provider.LocalProvider` returns (and the Clusters page shows)
    is the store's rows, corrected by what is known right now:

    - an instance whose recorded process has ended reads Down ("its process (pid N) has
      ended"), whatever its row says: the supervisor may not have noticed yet, or be dead;
    - when the supervisor has not written its heartbeat for :func:`stale_after` seconds
      (max(10 s, 10 x its interval)) and was not stopped on purpose, the other instances
      read Unknown with the reason ("supervisor of hello-prod-v001 not heard from for 42 s (last heartbeat
      12:00:03 UTC); its instances' health is unknown (last known: Up)").

Watchdog (:func:`revive`, :class:`Watchdog`)
    No new service: every supervisor runs a watchdog thread that looks after the other
    groups' supervisors and every load balancer's proxy of its home, and every proxy one
    that looks after the supervisors of the groups it serves. A dead one is started again
    with its own idempotent ``ensure_running`` (its flock and pid file: never two copies).
    Never restarted: the supervisor of a group that is gone or tagged ``gennaker:destroying``,
    the proxy of a load balancer that is gone, and anything stopped on purpose with
    ``local_supervisor.stop`` / ``local_proxy.stop`` (they leave a ``.stopped`` file that
    the next start removes).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gennaker.cloud.local import privfiles
from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.local.supervisor_options import DESTROYING_TAG, SupervisorPaths
from gennaker.cloud.model import Health, Instance, LoadBalancer, ServerGroup
from gennaker.errors import CloudError, NotFound

log = logging.getLogger("gennaker.cloud.local.watchdog")

MIN_STALE_SECONDS = 10.0
"""A heartbeat is stale after max(this, :data:`STALE_INTERVALS` x the supervisor's interval)."""
STALE_INTERVALS = 10
WATCHDOG_SECONDS = 2.0
"""How often a watchdog thread looks for dead supervisors and proxies."""
RETRY_AFTER_FAILURE = 30.0
"""How long a watchdog leaves alone a supervisor or proxy that it could not start (a port taken, an image gone)."""

_failed_until: dict[str, float] = {}

_clock: Callable[[], float] = time.time
"""The reader's clock (unix seconds); tests move it forward instead of waiting."""


# --------------------------------------------------------------------------- heartbeat


@dataclass(frozen=True)
class Heartbeat:
    """The last sign of life of a supervisor: when, which pid, and how often it meant to write."""

    at: float
    pid: int
    interval: float

    @property
    def stale_after(self) -> float:
        return stale_after(self.interval)


def stale_after(interval: float) -> float:
    """Seconds without a heartbeat after which a supervisor's rows are no longer believed."""
    return max(MIN_STALE_SECONDS, STALE_INTERVALS * interval)


def heartbeat_file(paths: SupervisorPaths) -> Path:
    """``<run dir>/<NAME>.heartbeat``."""
    return paths.run_dir / f"{paths.name}.heartbeat"


def write_heartbeat(paths: SupervisorPaths, pid: int, interval: float) -> None:
    """Record that the supervisor ``pid`` finished a pass now."""
    text = json.dumps({"at": time.time(), "pid": pid, "interval": interval})
    privfiles.write_private(heartbeat_file(paths), text)  # 0600: only our user reads the run files


def read_heartbeat(paths: SupervisorPaths) -> Heartbeat | None:
    """The group's last heartbeat; None if none was written (or it cannot be read)."""
    try:
        data = json.loads(heartbeat_file(paths).read_text())
        return Heartbeat(float(data["at"]), int(data["pid"]), float(data["interval"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- truthful reads


def _clock_text(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%H:%M:%S UTC")


def supervisor_silence(home: Path, group: ServerGroup, now: float | None = None) -> str | None:
    """Why the group's rows cannot be believed (its supervisor is silent); None if they can.

    No heartbeat at all (a supervisor of an older gennaker, or rows written without one) is
    believed: the check of each instance's process in :func:`observe` still applies.
    """
    now = _clock() if now is None else now
    paths = SupervisorPaths.of(home, group.account, group.region, group.name)
    beat = read_heartbeat(paths)
    if beat is None or now - beat.at <= beat.stale_after:
        return None
    if stopped_on_purpose(paths.stopped_file) and (
        local_supervisor.supervisor_pid(home, group.account, group.region, group.name) is None
    ):
        return None  # stop() stopped the instances too and wrote them Down (an ended process reads Down anyway)
    return (
        f"supervisor of {group.name} not heard from for {now - beat.at:.0f} s "
        f"(last heartbeat {_clock_text(beat.at)}); its instances' health is unknown"
    )


def observe(home: Path, group: ServerGroup, now: float | None = None) -> ServerGroup:
    """The group as it is now: ended processes read Down, every other row Unknown while the supervisor is silent."""
    if not group.instances:
        return group
    paths = SupervisorPaths.of(home, group.account, group.region, group.name)
    silence = supervisor_silence(home, group, now)
    instances = []
    for instance in group.instances:
        ended = local_supervisor.process_ended(paths, instance.id) if instance.health is not Health.DOWN else None
        if ended is not None:
            reason = ended if silence is None else f"{ended}; {silence}"
            instance = _read_as(instance, Health.DOWN, reason)
        elif silence is not None:
            instance = _read_as(instance, Health.UNKNOWN, silence)
        instances.append(instance)
    return group.replace(instances=tuple(instances))


def _read_as(instance: Instance, health: Health, why: str) -> Instance:
    last = f"{instance.health}{': ' + instance.health_reason if instance.health_reason else ''}"
    return instance.replace(health=health, health_reason=f"{why} (last known: {last})")


# --------------------------------------------------------------------------- the watchdog


def stopped_on_purpose(marker: Path) -> bool:
    """A ``.stopped`` file says the process was stopped with ``stop()``: not to be restarted by a watchdog."""
    return marker.exists()


def _group_rows(store: StateStore) -> list[tuple[str, str, str, bool]]:
    """(account, region, name, being destroyed) of every server group: one light query, no instances."""
    with store.snapshot() as db:
        rows = db.execute("SELECT account, region, name, body FROM server_groups").fetchall()
    return [(a, r, n, bool(json.loads(body).get("tags", {}).get(DESTROYING_TAG))) for a, r, n, body in rows]


def revive_supervisor(store: StateStore, home: Path, account: str, region: str, name: str) -> bool:
    """Start the group's supervisor again if it died; True if it was started."""
    paths = SupervisorPaths.of(home, account, region, name)
    if not paths.alive_file.exists():
        return False  # never ran here: not dead, just not started (a read of the provider starts it)
    if stopped_on_purpose(paths.stopped_file):
        return False  # (a start removes the file: a running supervisor never has one for long)
    if local_supervisor.supervisor_pid(home, account, region, name) is not None:
        return False
    try:  # read again just before: a group being destroyed (or gone) keeps its supervisor dead
        group = store.get_server_group(account, region, name)
    except NotFound:
        return False
    if group.tags.get(DESTROYING_TAG):
        return False
    pid = local_supervisor.ensure_running(store, home, account, region, name)
    log.warning("watchdog: the supervisor of %s was dead; started it again (pid %s)", name, pid)
    _event(store, "supervisor.revived", name, f"supervisor of {name} was dead; restarted as pid {pid}", account, pid)
    return True


def revive_proxy(store: StateStore, home: Path, lb: LoadBalancer) -> bool:
    """Start the load balancer's proxy again if it died; True if it was started."""
    if not local_proxy.has_run(home, lb.account, lb.region, lb.name):
        return False  # never ran here: upsert_load_balancer starts it
    if local_proxy.running_pid(home, lb.account, lb.region, lb.name) is not None:
        return False
    if stopped_on_purpose(local_proxy.stopped_file(home, lb.account, lb.region, lb.name)):
        return False
    try:
        store.get_load_balancer(lb.account, lb.region, lb.name)
    except NotFound:
        return False
    pid = local_proxy.ensure_running(store, home, lb.account, lb.region, lb.name)
    log.warning("watchdog: the proxy of load balancer %s was dead; started it again (pid %s)", lb.name, pid)
    message = f"proxy of load balancer {lb.name} was dead; restarted as pid {pid}"
    _event(store, "loadBalancer.proxyRevived", lb.name, message, lb.account, pid)
    return True


def revive(
    store: StateStore,
    home: Path,
    *,
    groups: Iterable[tuple[str, str, str]] | None = None,
    balancers: Iterable[LoadBalancer] | None = None,
    skip_group: tuple[str, str, str] | None = None,
) -> list[str]:
    """Restart the dead supervisors of ``groups`` (None: every group of the home) and proxies of ``balancers``
    (None: every load balancer of the home); what was restarted. One failure does not stop the others,
    and what failed to start is not tried again by this process for :data:`RETRY_AFTER_FAILURE` seconds.
    """
    local_supervisor.reap_children()  # supervisors this process restarted and that exited since
    if groups is None:
        groups = [(a, r, n) for a, r, n, destroying in _group_rows(store) if not destroying]
    if balancers is None:
        balancers = store.list_load_balancers()
    targets: list[tuple[str, Callable[[], bool]]] = [
        (f"supervisor of {name}", functools.partial(revive_supervisor, store, home, account, region, name))
        for account, region, name in groups
        if (account, region, name) != skip_group  # a supervisor does not watch itself
    ]
    targets += [(f"proxy of {lb.name}", functools.partial(revive_proxy, store, home, lb)) for lb in balancers]
    revived: list[str] = []
    now = time.monotonic()
    for what, start in targets:
        if _failed_until.get(what, 0.0) > now:
            continue
        try:
            if start():
                revived.append(what)
        except CloudError as error:
            _failed_until[what] = now + RETRY_AFTER_FAILURE
            log.warning("watchdog: could not restart the %s (next try in %g s): %s", what, RETRY_AFTER_FAILURE, error)
    return revived


def _event(store: StateStore, kind: str, subject: str, message: str, account: str, pid: int) -> None:
    try:
        store.record_event(kind, subject, message, account=account, data={"pid": pid})
    except CloudError as error:
        log.warning("could not record %s: %s", kind, error)


class Watchdog:
    """A daemon thread calling ``check`` every ``every`` seconds until :meth:`stop`; errors are logged, not fatal."""

    def __init__(self, check: Callable[[], object], *, every: float = WATCHDOG_SECONDS, name: str = "watchdog") -> None:
        self._check = check
        self._every = every
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self._every):
            try:
                self._check()
            except Exception:  # a watchdog that dies watches nothing: log and go on
                log.exception("watchdog check failed; trying again in %s s", self._every)


__all__ = [
    "MIN_STALE_SECONDS",
    "WATCHDOG_SECONDS",
    "Heartbeat",
    "Watchdog",
    "heartbeat_file",
    "observe",
    "read_heartbeat",
    "revive",
    "revive_proxy",
    "revive_supervisor",
    "stale_after",
    "stopped_on_purpose",
    "supervisor_silence",
    "write_heartbeat",
]
