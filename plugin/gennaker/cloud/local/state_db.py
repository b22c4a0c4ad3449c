"""The local state's file: its schema, connections, transactions and the generic row helpers.

:class:`StateFile` is the part of :class:`~gennaker.cloud.local.state.StateStore` that
knows SQLite; the rows of each kind of resource are methods of its other bases
(:mod:`~gennaker.cloud.local.state_groups`, :mod:`~gennaker.cloud.local.state_resources`,
:mod:`~gennaker.cloud.local.state_operations`). How several processes share the file
safely is told in :mod:`gennaker.cloud.local.state`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from gennaker.cloud.local import privfiles, retention
from gennaker.cloud.model import CloudModel
from gennaker.errors import InvalidRequest, NotFound, ProviderUnavailable
from gennaker.paths import gennaker_home

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of a state file this code writes; a newer one is refused, 0 is created."""
M = TypeVar("M", bound=CloudModel)

SCHEMA = """
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
"""The tables of schema version 1 (a change needs a new :data:`SCHEMA_VERSION` and a migration)."""


def default_state_path() -> Path:
    """Where the local provider keeps its state: ``<gennaker home>/local/state.db``."""
    return gennaker_home() / "local" / "state.db"


def ts(moment: datetime) -> str:
    """A sortable UTC text for index columns (the JSON body keeps pydantic's form)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(data: Any) -> str:
    """The stored JSON of a body: compact, keys sorted."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def filters(**equal: Any) -> tuple[str, tuple[Any, ...]]:
    """`` WHERE a = ? AND b = ?`` for the filters that are not None."""
    given = {column: value for column, value in equal.items() if value is not None}
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{column} = ?" for column in given), tuple(given.values())


class StateFile:
    """One SQLite state file: per-process, per-thread connections, transactions, snapshots, the schema.

    Every write is one transaction; callers compose several in :meth:`transaction`
    (nested calls join it). The generic row helpers (``_put``, ``_one``, ``_many``,
    ``_delete``) are what the resource methods of the store are written with.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_state_path()
        self.timeout = timeout
        self._local = threading.local()
        privfiles.private_file(self.path)  # 0600 (its -wal and -shm take its mode) in 0700 folders
        self._migrate()

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
                for statement in SCHEMA.split(";"):
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


__all__ = ["SCHEMA", "SCHEMA_VERSION", "StateFile", "default_state_path", "dumps", "filters", "ts"]
