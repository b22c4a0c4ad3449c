"""The Clusters page over gennaker's shared tables: without them it says what to run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clusters_helpers import Api

from gennaker.db.engine import STATE_DB_ENV, dispose, sqlite_url


def test_without_the_tables_the_page_says_run_gennaker_db_migrate(
    api: Api, service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path / "airflow.db")  # a database nobody migrated
    monkeypatch.setenv(STATE_DB_ENV, url)
    monkeypatch.setattr(service, "_audit", None)  # the audit trail is opened again, in that database
    r = api.get("/applications/hello/audit")
    body = r.json()
    assert r.status_code == 503 and body["type"] == "SharedStateUnavailable", body
    assert "run `gennaker db migrate`" in body["hint"] and "are missing" in body["detail"]
    dispose(url)
