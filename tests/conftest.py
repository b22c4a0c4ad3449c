"""Shared test setup: Airflow gets a throwaway home, never ~/airflow.

Set in ``pytest_configure`` (before any test module imports Airflow, which reads
AIRFLOW_HOME once at import time).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_home: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _home
    _home = tempfile.mkdtemp(prefix="gennaker-airflow-home-")
    os.environ["AIRFLOW_HOME"] = _home
    # The local provider's processes inherit only named variables: let the tests' leftover mark through.
    os.environ["GENNAKER_LOCAL_PASS_ENV"] = "GENNAKER_TEST_MARK"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _home is not None:
        shutil.rmtree(_home, ignore_errors=True)


@pytest.fixture(scope="session")
def _state_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with gennaker's shared tables, migrated once; each test gets a copy."""
    from gennaker.db.engine import dispose, sqlite_url
    from gennaker.db.migrate import migrate

    path = tmp_path_factory.mktemp("state-db") / "template.db"
    migrate(sqlite_url(path))
    dispose(sqlite_url(path))
    return path


@pytest.fixture(autouse=True)
def state_db(_state_db_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gennaker's shared database (locks, audit trail) of this test: a migrated SQLite file, via GENNAKER_STATE_DB.

    Autouse: a test must never reach the Airflow database of the machine it runs on. The
    integration suite's Airflow processes get GENNAKER_STATE_DB unset (they use their Airflow's database).
    """
    from gennaker.db.engine import dispose, sqlite_url

    path = tmp_path_factory.mktemp("state-db") / "gennaker.db"
    shutil.copyfile(_state_db_template, path)
    url = sqlite_url(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENNAKER_STATE_DB", url)
        yield url
    dispose(url)  # one engine per test's file: close its pooled connections
