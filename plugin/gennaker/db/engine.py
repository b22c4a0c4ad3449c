"""Which database holds gennaker's shared tables, and one SQLAlchemy engine per process for it.

The database is, in this order:

1. ``GENNAKER_STATE_DB`` (environment), a SQLAlchemy URL;
2. ``[gennaker] state_db`` in Airflow's configuration;
3. Airflow's metadata database (``[database] sql_alchemy_conn``), so PostgreSQL and MySQL work as
   Airflow does.

Airflow 3 hides its database from task and trigger code: the process that runs them
(``airflow.sdk.execution_time.supervisor.block_orm_access``) overwrites ``sql_alchemy_conn``
in its configuration and in ``os.environ`` with ``airflow-db-not-allowed:///``. So gennaker
never uses ``airflow.settings`` (its engine and sessions are gone there) but builds its own
engine, and when the configuration says "not allowed" it reads the
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` the process was started with (``/proc/self/environ``
keeps the environment a process was started with; a forked task inherits it), else
Airflow's configuration file (``airflow.cfg``; Airflow's default when it sets nothing). A
deployment whose database URL comes from a command or a secrets backend, or that keeps
database credentials away from workers, sets ``GENNAKER_STATE_DB`` (a database of gennaker's
own is fine: only gennaker reads these tables). Nothing here connects at import time.
"""

from __future__ import annotations

import configparser
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, select
from sqlalchemy.exc import SQLAlchemyError

from gennaker.errors import SharedStateUnavailable

STATE_DB_ENV = "GENNAKER_STATE_DB"
AIRFLOW_DB_ENV = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
BLOCKED = "airflow-db-not-allowed"  # the scheme Airflow's block_orm_access writes


def sqlite_url(path: str | Path) -> str:
    """The URL of a SQLite file."""
    return f"sqlite:///{Path(path).expanduser().absolute()}"


def state_db_url() -> str:
    """The URL of the database of gennaker's shared tables (see the module docstring)."""
    url = os.environ.get(STATE_DB_ENV, "").strip()
    if url:
        return url
    configured, airflow_db = _airflow_config()
    if configured:
        return configured
    for candidate in (airflow_db, os.environ.get(AIRFLOW_DB_ENV, ""), _started_with(AIRFLOW_DB_ENV)):
        if candidate and not candidate.startswith(BLOCKED):
            return candidate
    from_file = _from_config_file()
    if from_file:
        return from_file
    raise SharedStateUnavailable(
        "gennaker cannot find the database of its cluster locks and audit trail: Airflow's metadata database "
        "is hidden from this process",
        hint=f"set {STATE_DB_ENV} to a SQLAlchemy URL (Airflow's database or one of gennaker's own) in the "
        "environment of every Airflow component, then run `gennaker db migrate`",
    )


def _airflow_config() -> tuple[str, str]:
    """``[gennaker] state_db`` and ``[database] sql_alchemy_conn`` as this process's Airflow configuration has them."""
    try:
        from airflow.configuration import conf
    except ImportError:  # pragma: no cover - gennaker runs inside Airflow
        return "", ""
    try:
        configured = conf.get("gennaker", "state_db", fallback="") or ""
        airflow_db = conf.get("database", "sql_alchemy_conn", fallback="") or ""
    except Exception:  # a _cmd/_secret that fails in a blocked task: fall back to the environment
        return "", ""
    return str(configured).strip(), str(airflow_db).strip()


def _started_with(name: str) -> str:
    """A variable as the process was started with it (Linux), before anything in it changed ``os.environ``."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return ""
    prefix = f"{name}=".encode()
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace").strip()
    return ""


def _from_config_file() -> str:
    """``sql_alchemy_conn`` as Airflow's configuration file has it, else Airflow's default (a hidden database).

    Only when nothing else can set it: a ``_cmd`` or ``_secret`` variant (in the file or in the environment
    the process started with) may name another database, which gennaker cannot run here; then nothing.
    """
    home = os.environ.get("AIRFLOW_HOME") or _started_with("AIRFLOW_HOME") or str(Path("~/airflow").expanduser())
    path = Path(os.environ.get("AIRFLOW_CONFIG") or _started_with("AIRFLOW_CONFIG") or Path(home) / "airflow.cfg")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, configparser.Error):
        return ""
    for variant in ("sql_alchemy_conn_cmd", "sql_alchemy_conn_secret"):
        if parser.get("database", variant, fallback="").strip() or _started_with(
            f"{AIRFLOW_DB_ENV}_{variant.rsplit('_', 1)[1].upper()}"
        ):
            return ""
    value = parser.get("database", "sql_alchemy_conn", fallback="").strip() or "sqlite:///{AIRFLOW_HOME}/airflow.db"
    return "" if value.startswith(BLOCKED) else value.replace("{AIRFLOW_HOME}", home)


def shown(url: str) -> str:
    """A URL as messages and logs show it: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<an unreadable database URL>"


_engines: dict[tuple[int, str], Engine] = {}
_ready: set[tuple[int, str]] = set()
_guard = threading.Lock()


def get_engine(url: str | None = None) -> Engine:
    """This process's engine for ``url`` (default: :func:`state_db_url`); built once per process and URL."""
    url = url or state_db_url()
    key = (os.getpid(), url)  # a forked child must not share its parent's pooled connections
    with _guard:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _build(url)
    return engine


def _build(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except Exception:
        raise SharedStateUnavailable(
            f"{STATE_DB_ENV} (or Airflow's sql_alchemy_conn) is not a database URL", hint="fix the URL"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=3, pool_recycle=1800)
    engine = create_engine(url, connect_args={"timeout": 30.0})

    # pysqlite begins transactions lazily, at the first write, so two processes that both read first
    # would both "win" a lock; take SQLite's write lock when the transaction starts (SQLAlchemy's recipe).
    @event.listens_for(engine, "connect")
    def _autocommit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def dispose(url: str) -> None:
    """Close and forget this process's engine for ``url`` (tests that make a database per test)."""
    with _guard:
        engine = _engines.pop((os.getpid(), url), None)
        _ready.discard((os.getpid(), url))
    if engine is not None:
        engine.dispose()


def ready_engine(url: str | None = None) -> Engine:
    """The engine, once the ``gennaker_`` tables are there at the current version (checked once per process)."""
    from gennaker.db import tables

    engine = get_engine(url)
    key = (os.getpid(), engine.url.render_as_string(hide_password=False))
    if key in _ready:
        return engine
    where = shown(key[1])
    try:
        with engine.connect() as conn:
            version = conn.execute(select(tables.schema.c.version).where(tables.schema.c.id == 1)).scalar()
    except SQLAlchemyError as error:
        if _missing_table(error):
            version = None
        else:
            raise SharedStateUnavailable(
                f"gennaker cannot read its tables in {where}: {type(getattr(error, 'orig', None) or error).__name__}",
                hint=f"check that the database answers and that this process may use it ({STATE_DB_ENV})",
            ) from error
    if version is None or version < tables.SCHEMA_VERSION:
        state = "missing" if version is None else f"at version {version}, older than {tables.SCHEMA_VERSION}"
        raise SharedStateUnavailable(f"gennaker's tables (gennaker_locks, gennaker_audit) in {where} are {state}")
    if version > tables.SCHEMA_VERSION:
        raise SharedStateUnavailable(
            f"gennaker's tables in {where} are at version {version}, newer than this gennaker knows",
            hint="upgrade gennaker on this machine to the version the others run",
        )
    with _guard:
        _ready.add(key)
    return engine


def open_engine(path: str | Path | None = None) -> Engine:
    """The shared database's engine (it must be migrated), or, given a SQLite file's path, that file's.

    A private SQLite file (tests, tools of one machine) gets its tables on first use: it is nobody
    else's, so there is no ``gennaker db migrate`` to wait for.
    """
    if not path:
        return ready_engine()
    from gennaker.cloud.local import privfiles

    privfiles.private_file(Path(path))  # 0600 (its -wal and -shm take its mode) in 0700 folders, as before
    url = sqlite_url(path)
    try:
        return ready_engine(url)
    except SharedStateUnavailable:
        from gennaker.db.migrate import migrate

        migrate(url)
        return ready_engine(url)


def _missing_table(error: SQLAlchemyError) -> bool:
    text = str(getattr(error, "orig", None) or error).lower()
    return "gennaker_schema" in text and any(
        words in text for words in ("no such table", "does not exist", "doesn't exist", "undefined table")
    )


__all__ = [
    "STATE_DB_ENV",
    "SharedStateUnavailable",
    "dispose",
    "get_engine",
    "open_engine",
    "ready_engine",
    "shown",
    "sqlite_url",
    "state_db_url",
]
