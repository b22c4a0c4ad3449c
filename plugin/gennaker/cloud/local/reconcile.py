"""One supervisor pass over a server group: its instance processes brought in line with the state store.

One pass, :func:`reconcile_once` (the supervisor's loop runs one every ``interval``; tests and the provider
run one without the loop), under an ``flock`` on ``<NAME>.reconcile.lock`` so passes never overlap:

- read the group; gone from the store, or tagged ``gennaker:destroying``: stop every instance (the tagged
  group's instance rows are deleted too) and report ``destroyed``;
- an instance row that was deleted (the provider's terminate) -> its process is stopped;
- more rows than desired -> the newest (by ``launched``) are deleted and stopped; fewer -> new rows
  (``i-<hex>``) are made and started;
- each row's process: a dead one is a crash (below); a new or due one is started;
- health checks of the running ones that are due (``interval``), in parallel.

Stopping = SIGTERM to the instance's process group, SIGKILL to the group after ``stop_grace`` (5 s) if the
leader still runs (and once more to catch stragglers).

An instance runs its image's command (:func:`~gennaker.cloud.local.instance_processes.image_command`) with
``PORT``, ``HOST=127.0.0.1``, ``GENNAKER_INSTANCE_ID`` and ``GENNAKER_SERVER_GROUP`` added, its output appended
to ``<home>/local/logs/<group>/<instance-id>.log`` (a ``--- gennaker: ...`` line before every start), in its own
session. The port: a free one of 127.0.0.1 when the instance is made; a restart reuses it unless something
else listens there, then another is picked (said in both logs) and the row's ``port`` changes.

Health: a started instance is Starting until ``healthyThreshold`` consecutive passes make it Up; while
Starting its reason is the last failure (prefixed "in its grace period" during ``gracePeriod``). Up -> Down on
a failed check, Down -> Up after ``healthyThreshold`` passes again. ``none``: Up once the process runs. Every
change of health or reason is written with ``store.update_instance``, and ``store.record_event`` logs
``instance.started``, ``.up``, ``.down``, ``.crashed``, ``.restarted``, ``.failed``, ``.adopted``,
``.terminated``, ``.stopped`` (subject: instance id; data: server group, pid, port).

Crashes: a process that exits on its own is a crash: the row goes Down ("crashed: exit code 3; restart 1 of 5
in 0.5 s; see <log>") and the process is started again after a backoff (``restart_backoff``, doubling, at most
:data:`MAX_BACKOFF`), ``restarts += 1``. More than ``restart_limit`` crashes in a row without the instance
getting Up leave it Down for good (the count resets when it is Up). A start that fails counts as a crash.

Adoption: the first pass of a new supervisor adopts every recorded process that is still ours
(``instance.adopted``, no restart) and restarts the others (``restarts += 1``, not counted as a crash).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gennaker.cloud.local import logfiles, privfiles, processes
from gennaker.cloud.local.instance_processes import (
    ProcessRecord,
    drop_record,
    image_command,
    is_ours,
    load_records,
    save_record,
)
from gennaker.cloud.local.processes import LOCALHOST
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.local.supervisor_health import HealthCheckSettings, Probe, instance_health, seconds_text
from gennaker.cloud.local.supervisor_options import DESTROYING_TAG, MODULE, SupervisorOptions, SupervisorPaths
from gennaker.cloud.model import Health, Instance, ServerGroup, utcnow
from gennaker.errors import InvalidRequest, NotFound

MAX_BACKOFF = 10.0
"""The longest wait before a crashed instance is started again."""
log = logging.getLogger(MODULE)

# The umask instances start with: the one the supervisor inherited (its main() makes its own 077 for its files).
_instance_umask = -1  # -1: unchanged


def keep_instance_umask(umask: int) -> None:
    """Start instances with ``umask`` (the supervisor's inherited one), whatever this process's own is."""
    global _instance_umask
    _instance_umask = umask


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
        with processes.flock(self.paths.pass_lock, timeout=60.0):
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
        records = load_records(self.paths)
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
        current: list[tuple[Instance, ProcessRecord]] = []
        saved = {iid: record.to_json() for iid, record in records.items()}
        for instance in rows:
            record = records.get(instance.id) or ProcessRecord(instance.id)
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
                save_record(self.paths, record)
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
        record: ProcessRecord,
        adopt: bool,
        ports: set[int],
        result: ReconcileResult,
    ) -> Instance:
        """Notice a dead process (crash, or gone while nobody watched), start a due one."""
        if record.state == "running":
            child = record.pid in processes.CHILDREN
            if is_ours(record):
                if adopt and not child:
                    log.info(
                        "%s: adopted instance %s (pid %s, port %s)", self.name, instance.id, record.pid, record.port
                    )
                    self._event("instance.adopted", instance, f"adopted pid {record.pid}", record)
                return instance
            code = processes.CHILDREN.exit_code(record.pid) if record.pid else None
            if adopt and not child:
                reason = f"its process (pid {record.pid}) was gone when the supervisor started; restarting"
                log.info("%s: instance %s: %s", self.name, instance.id, reason)
                record.state, record.pid, record.next_start, record.count_restart = "backoff", None, 0.0, True
                save_record(self.paths, record)
                instance = self._set_health(instance, Health.DOWN, reason)
            else:
                instance = self._crashed(instance, record, processes.exit_phrase(code), result)
        if record.state in ("new", "backoff", "stopped") and time.time() >= record.next_start:
            instance = self._start(group, instance, record, ports, result)
        return instance

    def _crashed(self, instance: Instance, record: ProcessRecord, what: str, result: ReconcileResult) -> Instance:
        record.crashes += 1
        record.last_exit = what
        record.pid, record.passes, record.fails = None, 0, 0
        result.crashed.append(instance.id)
        limit = self.options.restart_limit
        log_path = record.log or str(self.paths.instance_log(instance.id))
        if record.crashes > limit:
            record.state = "failed"
            save_record(self.paths, record)
            reason = f"crashed {record.crashes} times; last {what}; see {log_path}"
            log.warning("%s: instance %s gave up: %s", self.name, instance.id, reason)
            instance = self._set_health(instance, Health.DOWN, reason)
            self._event("instance.failed", instance, reason, record)
            return instance
        delay = min(self.options.restart_backoff * 2 ** (record.crashes - 1), MAX_BACKOFF)
        record.state, record.next_start, record.count_restart = "backoff", time.time() + delay, True
        save_record(self.paths, record)
        reason = f"crashed: {what}; restart {record.crashes} of {limit} in {delay:g} s; see {log_path}"
        log.warning("%s: instance %s %s", self.name, instance.id, reason)
        instance = self._set_health(instance, Health.DOWN, reason)
        self._event("instance.crashed", instance, reason, record)
        return instance

    def _start(
        self, group: ServerGroup, instance: Instance, record: ProcessRecord, ports: set[int], result: ReconcileResult
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
            port = processes.free_port(ports)
        elif not processes.port_free(port):
            new = processes.free_port(ports | {port})
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
        stamp = utcnow().isoformat(timespec="seconds")
        with logfiles.open_log(log_path) as out:  # O_APPEND: copy-truncate rotation keeps the child's stream
            if note:
                out.write(f"--- {stamp} gennaker: {note}\n".encode())
            out.write(f"--- {stamp} gennaker: starting on {LOCALHOST}:{port}: {shlex.join(command.argv)}\n".encode())
        try:
            process = processes.start_detached(
                command.argv, log_path=log_path, cwd=command.cwd, env=env, umask=_instance_umask
            )
        except OSError as error:
            with logfiles.open_log(log_path) as out:
                out.write(f"--- {stamp} gennaker: could not start: {error}\n".encode())
            record.port, record.log = port, str(log_path)
            return self._crashed(instance, record, f"start error: {error}", result)
        processes.CHILDREN.add(process)
        stat = processes.proc_stat(process.pid)
        counted = record.count_restart
        record.state, record.pid, record.port, record.argv = "running", process.pid, port, command.argv
        record.proc_start, record.boot_id = (stat[1] if stat else None), processes.boot_id()
        record.log, record.started_at, record.next_start = str(log_path), time.time(), 0.0
        record.passes, record.fails, record.count_restart = 0, 0, False
        save_record(self.paths, record)  # before anything can fail: never two processes for one record
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

    def _stop(self, records: Sequence[ProcessRecord], kind: str, why: str) -> list[str]:
        """Stop the records' processes (all at once), forget the records, log an event each."""
        live = [record for record in records if is_ours(record)]
        stuck = processes.stop_pids([record.pid for record in live if record.pid], self.options.stop_grace)
        for record in records:
            drop_record(self.paths, record.instance_id)
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
        records = list(load_records(self.paths).values())
        stopped = self._stop(records, "terminated", why) if records else []
        if group is not None:
            for instance in group.instances:
                self.store.delete_instance(instance.id)
        with contextlib.suppress(OSError):
            self.paths.records_dir.rmdir()
        return stopped

    def shutdown(self) -> list[str]:
        """Stop every instance process (the supervisor is stopping); rows go Down; a restart starts them again."""
        with processes.flock(self.paths.pass_lock, timeout=60.0):
            records = load_records(self.paths)
            live = [record for record in records.values() if is_ours(record)]
            processes.stop_pids([record.pid for record in live if record.pid], self.options.stop_grace)
            for record in live:
                record.state, record.pid, record.next_start = "stopped", None, 0.0
                save_record(self.paths, record)
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
        self, instance: Instance, record: ProcessRecord, probe: Probe, settings: HealthCheckSettings
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
            reason = f"in its grace period ({seconds_text(settings.grace_period)}); last check: {probe.reason}"
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

    def _event(self, kind: str, instance: Instance, message: str, record: ProcessRecord | None = None) -> None:
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


__all__ = ["MAX_BACKOFF", "ReconcileResult", "Reconciler", "keep_instance_umask", "reconcile_once"]
