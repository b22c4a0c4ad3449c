"""The local provider's state: one SQLite file that several processes share safely.

Airflow's workers, the triggerer, the API server and the local supervisor all read
and write the same file, ``$GENNAKER_HOME/local/state.db`` (``$GENNAKER_HOME``
defaults to ``$AIRFLOW_HOME/gennaker``, else ``~/airflow/gennaker``). Why it is safe:

- WAL journal: readers never block the writer, nor the writer them;
- every write runs in ``BEGIN IMMEDIATE`` (:meth:`StateStore.transaction`): the write
  lock is taken up front, so a read-then-write (claim a key, allocate a name) cannot
  interleave with another process's, and never fails half way on a lock upgrade;
- a busy timeout: a writer waits for the lock (30 s by default) instead of failing;
  after that it raises :class:`ProviderUnavailable` (retryable);
- one connection per process and thread; a forked child opens its own;
- ``synchronous=FULL``: a committed operation record survives a power cut, since
  idempotency rests on it (the write rate is tiny).

Rows keep a few indexed columns and the model's dict as JSON (``body``). Instances
are rows of their own (the supervisor updates health without rewriting the group);
:meth:`StateStore.get_server_group` joins them back. The ``names`` table reserves
server group names (see :meth:`StateStore.allocate_server_group_name`) and the
``events`` table is the audit log. Events, finished operations and the other logs are
pruned by age and count as part of writing (:mod:`gennaker.cloud.local.retention`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from gennaker.cloud.local import privfiles, retention
from gennaker.cloud.model import (
    CloudModel,
    Event,
    Firewall,
    Image,
    Instance,
    LoadBalancer,
    Operation,
    OperationKind,
    OperationStatus,
    ServerGroup,
    utcnow,
)
from gennaker.cloud.naming import format_server_group_name, next_sequence, parse_server_group_name
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import IdempotencyConflict, InvalidName, InvalidRequest, NotFound, ProviderUnavailable
from gennaker.paths import gennaker_home

SCHEMA_VERSION = 1
M = TypeVar("M", bound=CloudModel)

_SCHEMA = """
CREATE TABLE images (
    id TEXT PRIMARY KEY, account TEXT NOT NULL, region TEXT NOT NULL, package TEXT NOT NULL,
    application TEXT, inputs_hash TEXT NOT NULL, created TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX images_package ON images (account, region, package, created);
CREATE INDEX images_inputs ON images (account, region, inputs_hash);
CREATE TABLE server_groups (
    account TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL, cluster TEXT NOT NULL,
    application TEXT NOT NULL, created TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (account, region, name));
CREATE INDEX server_groups_cluster ON server_groups (account, region, cluster, created);
CREATE INDEX server_groups_application ON server_groups (application, created);
CREATE TABLE instances (
    id TEXT PRIMARY KEY, account TEXT NOT NULL, region TEXT NOT NULL, server_group TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX instances_server_group ON instances (account, region, server_group);
CREATE TABLE load_balancers (
    account TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL, application TEXT NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (account, region, name));
CREATE TABLE firewalls (
    account TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL, application TEXT NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (account, region, name));
CREATE TABLE operations (
    id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, status TEXT NOT NULL,
    started TEXT NOT NULL, updated TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX operations_status ON operations (status, started);
CREATE TABLE names (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, region TEXT NOT NULL,
    cluster TEXT NOT NULL, name TEXT NOT NULL, reserved_by TEXT, reserved TEXT NOT NULL,
    released INTEGER NOT NULL DEFAULT 0, UNIQUE (account, region, name));
CREATE INDEX names_cluster ON names (account, region, cluster, seq);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
    account TEXT, key TEXT, message TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX events_subject ON events (subject, id);
"""


def default_state_path() -> Path:
    """Where the local provider keeps its state: ``<gennaker home>/local/state.db``."""
    return gennaker_home() / "local" / "state.db"


def _ts(moment: datetime) -> str:
    """A sortable UTC text for index columns (the JSON body keeps pydantic's form)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


class StateStore:
    """The local provider's images, server groups, instances, load balancers, firewalls, operations, events.

    Every write is one transaction; callers compose several in :meth:`transaction`
    (nested calls join it). Lookups of one resource raise :class:`NotFound`. A store
    pickles as its path, so it can be handed to another process, which opens the file
    itself.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_state_path()
        self.timeout = timeout
        self._local = threading.local()
        privfiles.private_file(self.path)  # 0600 (its -wal and -shm take its mode) in 0700 folders
        self._migrate()

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self.path), self.timeout))

    # ----------------------------------------------------------------------- connections and transactions

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        # A connection must not cross fork(): a child that inherited one opens its own.
        if getattr(local, "pid", None) != os.getpid():
            local.conn = self._connect()
            local.pid = os.getpid()
            local.depth = 0
            local.reading = False
        conn: sqlite3.Connection = local.conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit BEGINs (transaction() issues them); timeout = busy timeout.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        _locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), self.path)
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def close(self) -> None:
        """Close this thread's connection (the next call opens another)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.pid = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception).

        Nested use joins the outer transaction through a savepoint, so an inner failure
        that the caller catches undoes only the inner writes.
        """
        conn = self._connection()
        depth = self._local.depth
        if self._local.reading:
            # A write inside a read snapshot would have to upgrade its lock, which SQLite
            # refuses at once (SQLITE_BUSY) instead of waiting: a bug in the caller.
            raise RuntimeError("a write transaction cannot start inside StateStore.snapshot()")
        begin, commit, rollback = _statements(depth)
        _locked(lambda: conn.execute(begin), self.path)
        self._local.depth = depth + 1
        try:
            yield conn
            _locked(lambda: conn.execute(commit), self.path)
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                conn.execute(rollback)
                if depth:
                    conn.execute(commit)  # RELEASE the savepoint we rolled back to
            raise
        finally:
            self._local.depth = depth
        if depth == 0 and not getattr(self._local, "pruning", False):
            self._prune_now_and_then()

    def _prune_now_and_then(self) -> None:
        """Apply the retention (:mod:`gennaker.cloud.local.retention`) after a write, at most once a minute."""
        self._local.pruning = True  # the prune's own transaction must not prune again
        try:
            retention.maybe_prune(self)
        finally:
            self._local.pruning = False

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A consistent read of several tables (``BEGIN DEFERRED``) that does not wait for writers.

        Inside a :meth:`transaction` it simply joins it.
        """
        conn = self._connection()
        if self._local.depth:
            yield conn
            return
        conn.execute("BEGIN DEFERRED")
        self._local.depth, self._local.reading = 1, True
        try:
            yield conn
        finally:
            self._local.depth, self._local.reading = 0, False
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InvalidRequest(
                    f"{self.path} was written by a newer gennaker (schema {version} > {SCHEMA_VERSION})",
                    hint="upgrade gennaker on this machine, or point GENNAKER_HOME elsewhere",
                )
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ----------------------------------------------------------------------- generic rows

    def _put(self, table: str, columns: Mapping[str, Any]) -> None:
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        with self.transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})", tuple(columns.values()))

    def _one(self, model: type[M], sql: str, params: Sequence[Any], what: str) -> M:
        row = self._connection().execute(sql, params).fetchone()
        if row is None:
            raise NotFound(f"{what} not found in {self.path}")
        return model.from_dict(json.loads(row[0]))

    def _many(self, model: type[M], sql: str, params: Sequence[Any]) -> list[M]:
        rows = self._connection().execute(sql, params).fetchall()
        return [model.from_dict(json.loads(row[0])) for row in rows]

    def _delete(self, table: str, where: str, params: Sequence[Any]) -> bool:
        with self.transaction() as db:
            return db.execute(f"DELETE FROM {table} WHERE {where}", params).rowcount > 0

    # ----------------------------------------------------------------------- images

    def put_image(self, image: Image) -> None:
        """Store (or replace) an image."""
        self._put(
            "images",
            {
                "id": image.id,
                "account": image.account,
                "region": image.region,
                "package": image.package,
                "application": image.application,
                "inputs_hash": image.inputs_hash,
                "created": _ts(image.created),
                "body": _dumps(image.to_dict()),
            },
        )

    def get_image(self, image_id: str) -> Image:
        """One image by id."""
        return self._one(Image, "SELECT body FROM images WHERE id = ?", (image_id,), f"image {image_id}")

    def find_images(
        self,
        *,
        account: str | None = None,
        region: str | None = None,
        package: str | None = None,
        application: str | None = None,
        inputs_hash: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[Image]:
        """Images matching every given filter (``tags``: all of them), newest first."""
        where, params = _filters(
            account=account, region=region, package=package, application=application, inputs_hash=inputs_hash
        )
        images = self._many(Image, f"SELECT body FROM images{where} ORDER BY created DESC, rowid DESC", params)
        wanted = dict(tags or {})
        return [image for image in images if wanted.items() <= image.tags.items()]

    def delete_image(self, image_id: str) -> bool:
        """Forget an image; False if there was none."""
        return self._delete("images", "id = ?", (image_id,))

    # ----------------------------------------------------------------------- server groups

    def put_server_group(self, group: ServerGroup) -> None:
        """Store (or replace) a server group. Its ``instances`` are not stored: see :meth:`put_instance`."""
        self._put(
            "server_groups",
            {
                "account": group.account,
                "region": group.region,
                "name": group.name,
                "cluster": group.cluster,
                "application": group.application,
                "created": _ts(group.created),
                "body": _dumps(group.model_dump(mode="json", exclude={"instances"})),
            },
        )

    def get_server_group(self, account: str, region: str, name: str) -> ServerGroup:
        """One server group, with its instances."""
        with self.snapshot() as db:
            row = db.execute(
                "SELECT body FROM server_groups WHERE account = ? AND region = ? AND name = ?",
                (account, region, name),
            ).fetchone()
            if row is None:
                raise NotFound(f"server group {name} not found in account {account}, region {region}")
            return self._with_instances(json.loads(row[0]))

    def list_server_groups(
        self,
        *,
        account: str | None = None,
        region: str | None = None,
        application: str | None = None,
        cluster: str | None = None,
    ) -> list[ServerGroup]:
        """Server groups matching every given filter, with instances, oldest first."""
        where, params = _filters(account=account, region=region, application=application, cluster=cluster)
        with self.snapshot() as db:
            rows = db.execute(f"SELECT body FROM server_groups{where} ORDER BY created, rowid", params).fetchall()
            return [self._with_instances(json.loads(row[0])) for row in rows]

    def _with_instances(self, body: dict[str, Any]) -> ServerGroup:
        instances = self.list_instances(account=body["account"], region=body["region"], server_group=body["name"])
        body["instances"] = [instance.to_dict() for instance in instances]
        return ServerGroup.from_dict(body)

    def update_server_group(
        self, account: str, region: str, name: str, change: Callable[[ServerGroup], ServerGroup]
    ) -> ServerGroup:
        """Read, change and write back one server group atomically; returns the new one."""
        with self.transaction():
            group = change(self.get_server_group(account, region, name))
            if (group.account, group.region, group.name) != (account, region, name):
                raise InvalidRequest(f"a change to server group {name} may not rename or move it")
            self.put_server_group(group)
            return group

    def delete_server_group(self, account: str, region: str, name: str) -> bool:
        """Forget a server group, its instances, and release its name; False if there was none."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM instances WHERE account = ? AND region = ? AND server_group = ?", (account, region, name)
            )
            self.release_server_group_name(account, region, name)
            return self._delete("server_groups", "account = ? AND region = ? AND name = ?", (account, region, name))

    # ----------------------------------------------------------------------- server group names

    def allocate_server_group_name(
        self, *, account: str, region: str, cluster: str, reserved_by: str | IdempotencyKey | None = None
    ) -> str:
        """Reserve the cluster's next server group name (``hello-prod-v004``), atomically across processes.

        The next sequence follows the newest name ever reserved in the cluster (so a
        destroyed group's name is not handed out again until the sequence wraps),
        skipping names still reserved or in use. ``reserved_by`` (an idempotency key)
        makes it repeatable: the same holder gets the same name back while it is held.
        """
        if parse_server_group_name(cluster).sequence is not None:
            raise InvalidName(f"{cluster!r} is a server group name, not a cluster")
        holder = None if reserved_by is None else str(reserved_by)
        with self.transaction() as db:
            if holder is not None:
                held = _held_name(db, account, region, cluster, holder)
                if held is not None:
                    return held
            name = _next_free_name(db, account, region, cluster)
            db.execute(
                "DELETE FROM names WHERE account = ? AND region = ? AND name = ?", (account, region, name)
            )  # a released reservation of the same name, from before the sequence wrapped
            db.execute(
                "INSERT INTO names (account, region, cluster, name, reserved_by, reserved) VALUES (?, ?, ?, ?, ?, ?)",
                (account, region, cluster, name, holder, _ts(utcnow())),
            )
            return name

    def release_server_group_name(self, account: str, region: str, name: str) -> None:
        """Free a reserved name (its group was destroyed, or never made); it still counts for "newest"."""
        with self.transaction() as db:
            db.execute(
                "UPDATE names SET released = 1 WHERE account = ? AND region = ? AND name = ?", (account, region, name)
            )

    # ----------------------------------------------------------------------- instances

    def put_instance(self, instance: Instance, *, account: str, region: str) -> None:
        """Store (or replace) an instance of a server group in ``account``/``region``."""
        self._put(
            "instances",
            {
                "id": instance.id,
                "account": account,
                "region": region,
                "server_group": instance.server_group,
                "body": _dumps(instance.to_dict()),
            },
        )

    def get_instance(self, instance_id: str) -> Instance:
        """One instance by id."""
        return self._one(Instance, "SELECT body FROM instances WHERE id = ?", (instance_id,), f"instance {instance_id}")

    def list_instances(self, *, account: str, region: str, server_group: str) -> list[Instance]:
        """A server group's instances, in the order they were stored."""
        return self._many(
            Instance,
            "SELECT body FROM instances WHERE account = ? AND region = ? AND server_group = ? ORDER BY rowid",
            (account, region, server_group),
        )

    def update_instance(self, instance_id: str, change: Callable[[Instance], Instance]) -> Instance:
        """Read, change and write back one instance atomically (health, restarts); returns the new one."""
        with self.transaction() as db:
            row = db.execute("SELECT account, region FROM instances WHERE id = ?", (instance_id,)).fetchone()
            if row is None:
                raise NotFound(f"instance {instance_id} not found in {self.path}")
            instance = change(self.get_instance(instance_id))
            if instance.id != instance_id:
                raise InvalidRequest(f"a change to instance {instance_id} may not change its id")
            self.put_instance(instance, account=row[0], region=row[1])
            return instance

    def delete_instance(self, instance_id: str) -> bool:
        """Forget an instance; False if there was none."""
        return self._delete("instances", "id = ?", (instance_id,))

    # ----------------------------------------------------------------------- load balancers and firewalls

    def put_load_balancer(self, load_balancer: LoadBalancer) -> None:
        """Store (or replace) a load balancer."""
        self._put("load_balancers", _owned_columns(load_balancer))

    def get_load_balancer(self, account: str, region: str, name: str) -> LoadBalancer:
        """One load balancer."""
        return self._one(LoadBalancer, *_owned_query("load_balancers", account, region, name), f"load balancer {name}")

    def list_load_balancers(
        self, *, account: str | None = None, region: str | None = None, application: str | None = None
    ) -> list[LoadBalancer]:
        """Load balancers matching every given filter, by name."""
        where, params = _filters(account=account, region=region, application=application)
        return self._many(LoadBalancer, f"SELECT body FROM load_balancers{where} ORDER BY name", params)

    def delete_load_balancer(self, account: str, region: str, name: str) -> bool:
        """Forget a load balancer; False if there was none."""
        return self._delete("load_balancers", "account = ? AND region = ? AND name = ?", (account, region, name))

    def put_firewall(self, firewall: Firewall) -> None:
        """Store (or replace) a firewall."""
        self._put("firewalls", _owned_columns(firewall))

    def get_firewall(self, account: str, region: str, name: str) -> Firewall:
        """One firewall."""
        return self._one(Firewall, *_owned_query("firewalls", account, region, name), f"firewall {name}")

    def list_firewalls(
        self, *, account: str | None = None, region: str | None = None, application: str | None = None
    ) -> list[Firewall]:
        """Firewalls matching every given filter, by name."""
        where, params = _filters(account=account, region=region, application=application)
        return self._many(Firewall, f"SELECT body FROM firewalls{where} ORDER BY name", params)

    def delete_firewall(self, account: str, region: str, name: str) -> bool:
        """Forget a firewall; False if there was none."""
        return self._delete("firewalls", "account = ? AND region = ? AND name = ?", (account, region, name))

    # ----------------------------------------------------------------------- operations

    def claim_operation(
        self,
        key: IdempotencyKey | str,
        kind: OperationKind | str,
        *,
        request: Mapping[str, Any] | None = None,
        message: str = "",
    ) -> tuple[Operation, bool]:
        """The operation for ``key``: ``(existing, False)`` if the key was claimed before, else ``(new, True)``.

        Atomic across processes: of several claims of one key exactly one gets
        ``True`` and does the work; the others get its operation. A key already used
        for another kind of operation raises :class:`IdempotencyConflict`.
        """
        key_text, kind = str(key), OperationKind(kind)
        with self.transaction() as db:
            row = db.execute("SELECT body FROM operations WHERE key = ?", (key_text,)).fetchone()
            if row is not None:
                return _same_kind(Operation.from_dict(json.loads(row[0])), kind), False
            op = Operation(
                id=f"op-{uuid.uuid4().hex[:16]}",
                kind=kind,
                key=key_text,
                message=message or f"{kind.value} started",
                request=dict(request or {}),
            )
            self._put_operation(op)
            self.record_event("operation.started", op.id, op.message, key=key_text, data={"kind": kind.value})
            return op, True

    def _put_operation(self, op: Operation) -> None:
        self._put(
            "operations",
            {
                "id": op.id,
                "key": op.key,
                "kind": op.kind.value,
                "status": op.status.value,
                "started": _ts(op.started),
                "updated": _ts(op.updated),
                "body": _dumps(op.to_dict()),
            },
        )

    def get_operation(self, operation_id: str) -> Operation:
        """One operation by id."""
        return self._one(
            Operation, "SELECT body FROM operations WHERE id = ?", (operation_id,), f"operation {operation_id}"
        )

    def find_operation(self, key: IdempotencyKey | str) -> Operation | None:
        """The operation claimed with ``key``, if any."""
        row = self._connection().execute("SELECT body FROM operations WHERE key = ?", (str(key),)).fetchone()
        return None if row is None else Operation.from_dict(json.loads(row[0]))

    def update_operation(
        self,
        operation_id: str,
        *,
        status: OperationStatus | str | None = None,
        message: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> Operation:
        """Record progress: a new status or message, more result keys (merged). A final operation is read-only."""
        with self.transaction():
            op = self.get_operation(operation_id)
            if op.done:
                raise InvalidRequest(f"operation {op.id} already ended {op.status.value}; it cannot change")
            changes: dict[str, Any] = {"updated": utcnow(), "result": {**op.result, **(result or {})}}
            if status is not None:
                changes["status"] = OperationStatus(status)
                changes["message"] = f"{op.kind.value} {changes['status'].value.lower()}"
            if message is not None:
                changes["message"] = message
            new = op.replace(**changes)
            self._put_operation(new)
            if new.done:
                self.record_event(f"operation.{new.status.value.lower()}", new.id, new.message, key=new.key)
            return new

    def list_operations(
        self, *, status: OperationStatus | str | None = None, kind: OperationKind | str | None = None
    ) -> list[Operation]:
        """Operations matching the filters, oldest first (a restarted supervisor resumes the RUNNING ones)."""
        where, params = _filters(
            status=None if status is None else OperationStatus(status).value,
            kind=None if kind is None else OperationKind(kind).value,
        )
        return self._many(Operation, f"SELECT body FROM operations{where} ORDER BY started, rowid", params)

    # ----------------------------------------------------------------------- audit log

    def record_event(
        self,
        kind: str,
        subject: str,
        message: str = "",
        *,
        account: str | None = None,
        key: IdempotencyKey | str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Event:
        """Append one line to the audit log."""
        event = Event(
            kind=kind,
            subject=subject,
            message=message,
            account=account,
            key=None if key is None else str(key),
            data=dict(data or {}),
        )
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO events (at, kind, subject, account, key, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_ts(event.at), kind, subject, account, event.key, message, _dumps(event.data)),
            )
        return event.replace(id=cursor.lastrowid)

    def events(self, *, subject: str | None = None, after: int = 0, limit: int = 1000) -> list[Event]:
        """Audit log lines with id above ``after`` (oldest first), for one subject or all."""
        where, params = _filters(subject=subject)
        where = f"{where} AND id > ?" if where else " WHERE id > ?"
        rows = self._connection().execute(
            f"SELECT id, at, kind, subject, account, key, message, data FROM events{where} ORDER BY id LIMIT ?",
            (*params, after, limit),
        )
        return [_event(row) for row in rows]


# --------------------------------------------------------------------------- helpers


def _reopen(path: str, timeout: float) -> StateStore:
    return StateStore(path, timeout=timeout)


def _statements(depth: int) -> tuple[str, str, str]:
    """BEGIN/COMMIT/ROLLBACK for the outermost transaction; a savepoint for a nested one."""
    if depth == 0:
        return "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"
    name = f"nested_{depth}"
    return f"SAVEPOINT {name}", f"RELEASE {name}", f"ROLLBACK TO {name}"


def _locked(run: Callable[[], Any], path: Path) -> Any:
    """Run a statement; a lock still held after the busy timeout becomes ProviderUnavailable."""
    try:
        return run()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            raise ProviderUnavailable(f"the local state {path} stayed locked by another process: {error}") from error
        raise


def _filters(**equal: Any) -> tuple[str, tuple[Any, ...]]:
    """`` WHERE a = ? AND b = ?`` for the filters that are not None."""
    given = {column: value for column, value in equal.items() if value is not None}
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{column} = ?" for column in given), tuple(given.values())


def _owned_columns(resource: LoadBalancer | Firewall) -> dict[str, Any]:
    return {
        "account": resource.account,
        "region": resource.region,
        "name": resource.name,
        "application": resource.application,
        "body": _dumps(resource.to_dict()),
    }


def _owned_query(table: str, account: str, region: str, name: str) -> tuple[str, tuple[str, ...]]:
    return f"SELECT body FROM {table} WHERE account = ? AND region = ? AND name = ?", (account, region, name)


def _same_kind(op: Operation, kind: OperationKind) -> Operation:
    if op.kind is not kind:
        raise IdempotencyConflict(
            f"idempotency key {op.key} already names a {op.kind.value} operation ({op.id}), not {kind.value}"
        )
    return op


def _held_name(db: sqlite3.Connection, account: str, region: str, cluster: str, holder: str) -> str | None:
    row = db.execute(
        "SELECT name FROM names WHERE account = ? AND region = ? AND cluster = ? AND reserved_by = ? AND released = 0",
        (account, region, cluster, holder),
    ).fetchone()
    return None if row is None else str(row[0])


def _next_free_name(db: sqlite3.Connection, account: str, region: str, cluster: str) -> str:
    """The name after the cluster's newest reservation (or newest group), skipping every name in use."""
    where = "account = ? AND region = ? AND cluster = ?"
    params = (account, region, cluster)
    reservations = db.execute(f"SELECT name, released FROM names WHERE {where} ORDER BY seq", params).fetchall()
    groups = [row[0] for row in db.execute(f"SELECT name FROM server_groups WHERE {where} ORDER BY created", params)]
    in_use = {name for name, released in reservations if not released} | set(groups)
    newest = reservations[-1][0] if reservations else (groups[-1] if groups else None)
    return format_server_group_name(cluster, next_sequence(in_use, newest=newest))


def _event(row: Sequence[Any]) -> Event:
    event_id, at, kind, subject, account, key, message, data = row
    return Event(
        id=event_id,
        at=datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc),
        kind=kind,
        subject=subject,
        account=account,
        key=key,
        message=message,
        data=json.loads(data),
    )


__all__ = ["SCHEMA_VERSION", "StateStore", "default_state_path"]
