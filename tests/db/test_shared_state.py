"""gennaker's shared tables: ``gennaker db migrate``, where the database is found, and state across processes.

Each test's database is a SQLite file (the ``state_db`` fixture sets GENNAKER_STATE_DB);
set ``GENNAKER_TEST_POSTGRES_URL`` (and install a PostgreSQL driver) to run the lock's
rules against PostgreSQL too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from gennaker.cli import main
from gennaker.cloud.locks import ClusterLocks, cluster_resource
from gennaker.db.engine import STATE_DB_ENV, dispose, sqlite_url
from gennaker.db.migrate import migrate
from gennaker.errors import SharedStateUnavailable
from gennaker.web.audit import AuditLog

R = cluster_resource("local", "local", "hello-prod")
GENNAKER_TABLES = {"gennaker_locks", "gennaker_audit", "gennaker_schema"}


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with exactly ``env`` (plus PATH), as another worker would."""
    full = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_db_migrate_creates_the_gennaker_tables_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = sqlite_url(tmp_path / "airflow.db")
    other = create_engine(url)
    with other.begin() as conn:  # a table of Airflow's own, which the migration must leave alone
        conn.execute(text("CREATE TABLE dag (dag_id TEXT PRIMARY KEY)"))
        conn.execute(text("INSERT INTO dag VALUES ('hello')"))

    assert main(["db", "migrate", "--url", url]) == 0
    assert "created gennaker_audit, gennaker_locks, gennaker_schema" in capsys.readouterr().out
    assert GENNAKER_TABLES <= set(inspect(other).get_table_names())
    assert ClusterLocks(tmp_path / "airflow.db").acquire(R, "a/run1/deploy") is None

    assert main(["db", "migrate", "--url", url]) == 0  # again: nothing to do, nothing lost
    assert "up to date (version 1)" in capsys.readouterr().out
    with other.connect() as conn:
        assert conn.execute(text("SELECT version FROM gennaker_schema")).all() == [(1,)]
        assert conn.execute(text("SELECT dag_id FROM dag")).all() == [("hello",)]
        assert conn.execute(text("SELECT owner FROM gennaker_locks")).all() == [("a/run1/deploy",)]
    other.dispose()
    dispose(url)


def test_db_migrate_finds_the_database_as_the_components_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = sqlite_url(tmp_path / "gennaker.db")
    monkeypatch.setenv(STATE_DB_ENV, url)
    assert main(["db", "migrate"]) == 0
    assert str(tmp_path / "gennaker.db") in capsys.readouterr().out
    assert GENNAKER_TABLES <= set(inspect(create_engine(url)).get_table_names())
    dispose(url)


def test_without_the_tables_stages_and_the_page_say_run_gennaker_db_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path / "airflow.db")
    monkeypatch.setenv(STATE_DB_ENV, url)
    with pytest.raises(SharedStateUnavailable, match="run `gennaker db migrate`") as lock_error:
        ClusterLocks()  # what the deploy, promote and rollback stages and the page's actions build
    assert "are missing" in str(lock_error.value)
    with pytest.raises(SharedStateUnavailable, match="run `gennaker db migrate`"):
        AuditLog()  # the Clusters page's audit trail
    migrate()
    assert ClusterLocks().acquire(R, "a/run1/deploy") is None
    dispose(url)


def test_a_lock_taken_in_one_process_is_seen_by_another(state_db: str) -> None:
    env = {STATE_DB_ENV: state_db}
    take = (
        "from gennaker.cloud.locks import ClusterLocks; "
        f"print(ClusterLocks().acquire({R!r}, 'a/run1/deploy', note='deploy stage'))"
    )
    assert _python(take, env).stdout.strip() == "None"  # that process got it, and has ended

    locks = ClusterLocks()
    holder = locks.acquire(R, "b/run2/deploy")
    assert holder is not None and holder.owner == "a/run1/deploy" and holder.note == "deploy stage"
    release = f"from gennaker.cloud.locks import ClusterLocks; print(ClusterLocks().release({R!r}, 'a/run1/deploy'))"
    assert _python(release, env).stdout.strip() == "True"
    assert locks.acquire(R, "b/run2/deploy") is None
    seen = f"from gennaker.cloud.locks import ClusterLocks; print(ClusterLocks().holder({R!r}).owner)"
    assert _python(seen, env).stdout.strip() == "b/run2/deploy"


def test_an_audit_entry_written_in_one_process_is_read_in_another(state_db: str) -> None:
    write = (
        "from gennaker.web.audit import AuditLog; from gennaker.web.models import AuditEntry; "
        "from gennaker.cloud.model import utcnow; "
        "AuditLog().start(AuditEntry(id='x1', at=utcnow(), user='alice', action='resize', application='hello', "
        "account='local', region='local', cluster='hello-prod', server_group='hello-prod-v001', instance_id=None, "
        "parameters={}, reason='', status='SUCCEEDED', http_status=202, message='', operation_ids=[], "
        "finished_at=None))"
    )
    done = _python(write, {STATE_DB_ENV: state_db})
    assert done.returncode == 0, done.stderr
    assert AuditLog().users(["x1"]) == {"x1": "alice"}


# ------------------------------------------------------------------ where the database is found

_HIDE_AND_FIND = (
    "from airflow import settings\n"
    "from airflow.sdk.execution_time.supervisor import block_orm_access\n"
    "block_orm_access()  # what Airflow does in every task and trigger process\n"
    "from gennaker.db.engine import state_db_url\n"
    "try:\n"
    "    print(state_db_url())\n"
    "except Exception as error:\n"
    "    print(type(error).__name__, error)\n"
)


def test_a_task_process_finds_airflows_database_though_airflow_hides_it(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "airflow.db")
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}
    found = _python(_HIDE_AND_FIND, env)
    assert found.stdout.strip().splitlines()[-1] == url, found.stderr


def test_gennaker_state_db_and_the_gennaker_section_come_before_airflows_database(tmp_path: Path) -> None:
    airflow_db = sqlite_url(tmp_path / "airflow.db")
    own = sqlite_url(tmp_path / "gennaker.db")
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db}
    assert _python(_HIDE_AND_FIND, {**env, "AIRFLOW__GENNAKER__STATE_DB": own}).stdout.strip().endswith(own)
    assert _python(_HIDE_AND_FIND, {**env, STATE_DB_ENV: own}).stdout.strip().endswith(own)


def test_a_task_process_finds_the_database_of_airflows_configuration_file(tmp_path: Path) -> None:
    # As `make demo` runs Airflow: the database only in airflow.cfg (Airflow writes its default there).
    found = _python(_HIDE_AND_FIND, {"AIRFLOW_HOME": str(tmp_path)})
    assert found.stdout.strip().splitlines()[-1] == sqlite_url(tmp_path / "airflow.db"), found.stderr


def test_a_process_that_cannot_find_the_database_names_gennaker_state_db(tmp_path: Path) -> None:
    # Airflow's database URL comes from a command: gennaker will not run it, and says what to set instead.
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": f"echo sqlite:///{tmp_path}/a.db"}
    found = _python(_HIDE_AND_FIND, env)
    last = found.stdout.strip().splitlines()[-1]
    assert last.startswith("SharedStateUnavailable") and STATE_DB_ENV in last, found.stderr


# ------------------------------------------------------------------ PostgreSQL, when one is at hand


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("GENNAKER_TEST_POSTGRES_URL", "")
    if not url:
        pytest.skip("set GENNAKER_TEST_POSTGRES_URL (and install a PostgreSQL driver) to test on PostgreSQL")
    return url


def test_the_lock_rules_hold_on_postgresql(postgres_url: str) -> None:
    migrate(postgres_url)
    migrate(postgres_url)
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM gennaker_locks"))
    engine.dispose()
    env = {STATE_DB_ENV: postgres_url}
    take = f"from gennaker.cloud.locks import ClusterLocks; print(ClusterLocks().acquire({R!r}, 'a/run1/deploy'))"
    assert _python(take, env).stdout.strip() == "None"
    os.environ[STATE_DB_ENV], saved = postgres_url, os.environ.get(STATE_DB_ENV, "")
    try:
        locks = ClusterLocks()
        holder = locks.acquire(R, "b/run2/deploy")
        assert holder is not None and holder.owner == "a/run1/deploy"
        assert locks.acquire(R, "a/run1/deploy", lease=timedelta(seconds=0)) is None  # the owner re-enters
        assert locks.acquire(R, "b/run2/deploy") is None  # its lease ran out: handed over
        assert locks.release(R, "b/run2/deploy")
    finally:
        os.environ[STATE_DB_ENV] = saved


# ------------------------------------------------------------------ the audit trail of earlier versions

_OLD_AUDIT = """CREATE TABLE web_actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, at TEXT NOT NULL,
    user TEXT NOT NULL, action TEXT NOT NULL, application TEXT NOT NULL, account TEXT NOT NULL,
    cluster TEXT, server_group TEXT, status TEXT NOT NULL, worker TEXT NOT NULL, body TEXT NOT NULL)"""


def test_db_migrate_copies_the_audit_trail_of_earlier_versions_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    from gennaker.cloud.model import utcnow
    from gennaker.web.models import AuditEntry

    old = tmp_path / "home" / "local" / "state.db"
    old.parent.mkdir(parents=True)
    with sqlite3.connect(old) as conn:
        conn.execute(_OLD_AUDIT)
        for n, user in enumerate(["alice", "bob"]):
            entry = AuditEntry(
                id=f"old{n}", at=utcnow(), user=user, action="resize", application="hello", account="local",
                region="local", cluster="hello-prod", server_group="hello-prod-v001", instance_id=None,
                parameters={}, reason="", status="SUCCEEDED", http_status=202, message="", operation_ids=[],
                finished_at=None,
            )  # fmt: skip
            conn.execute(
                "INSERT INTO web_actions (id, at, user, action, application, account, cluster, server_group, status, "
                "worker, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.id, "2026-01-01T00:00:00.000000Z", user, "resize", "hello", "local", "hello-prod",
                 "hello-prod-v001", "SUCCEEDED", "host:1", entry.model_dump_json()),
            )  # fmt: skip
    monkeypatch.setenv("GENNAKER_HOME", str(tmp_path / "home"))
    url = sqlite_url(tmp_path / "airflow.db")
    monkeypatch.setenv(STATE_DB_ENV, url)

    assert main(["db", "migrate"]) == 0
    assert "copied 2 audit trail entries" in capsys.readouterr().out
    assert main(["db", "migrate"]) == 0  # again: nothing more
    assert "copied" not in capsys.readouterr().out
    audit = AuditLog()
    assert [e.id for e in audit.list("hello")[0]] == ["old1", "old0"]  # newest first, as before
    assert audit.users(["old0", "old1"]) == {"old0": "alice", "old1": "bob"}
    dispose(url)
