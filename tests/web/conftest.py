"""Airflow's real API server app, in this process, with the gennaker plugin and real simple-auth-manager users.

The session builds Airflow's FastAPI app (``airflow.api_fastapi.app.create_app``, the one
``airflow api-server`` serves) over a fresh metadata database in the session's
``AIRFLOW_HOME`` (``tests/conftest.py``), with the simple auth manager configured as
``scripts/airflow-env.sh`` does, plus a ``deployer`` of role ``user`` (who may edit DAGs).
Tokens come from ``POST /auth/token``; requests go through Starlette's TestClient, so they
pass Airflow's own middlewares (JWT cookie refresh, gzip) and its mount of the plugin.

The local provider's state lives in a session ``GENNAKER_HOME``; each test uses its own
application names, so tests do not see each other's server groups. ``guarded`` is a
``gennaker_local`` connection (an environment variable, as in the integration tests)
whose clusters ``hello-guarded`` and ``webguard-guarded`` are traffic-guarded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusters_helpers import USERS, Api
from fastapi.testclient import TestClient

GUARDED_ACCOUNT = "guarded"


def _configure(home: Path, gennaker_home: Path) -> dict[str, str | None]:
    settings = {
        # What airflow.api_fastapi.main (the api-server command) sets: connections come from the database.
        "_AIRFLOW_PROCESS_CONTEXT": "server",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{name}:{role}" for name, (role, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "gennaker-web-tests-" + "x" * 48,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "GENNAKER_HOME": str(gennaker_home),
        f"AIRFLOW_CONN_{GUARDED_ACCOUNT.upper()}": json.dumps(
            {"conn_type": "gennaker_local", "extra": {"traffic_guards": ["hello-guarded", "webguard-guarded"]}}
        ),
    }
    (home / "passwords.json").write_text(json.dumps({name: password for name, (_, password) in USERS.items()}))
    previous = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    return previous


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Airflow's API server app with the gennaker plugin mounted, and a client of it."""
    home = Path(os.environ["AIRFLOW_HOME"])
    gennaker_home = tmp_path_factory.mktemp("gennaker-home")
    previous = _configure(home, gennaker_home)
    try:
        from airflow.api_fastapi.app import create_app, purge_cached_app
        from airflow.utils.db import initdb

        from gennaker.web.app import get_app
        from gennaker.web.service import ClustersService, Settings

        initdb()
        gennaker_app = get_app()
        service = ClustersService(Settings(ttl=2.0, max_stale=30.0))
        service.runner.poll_interval = 0.1
        gennaker_app.state.service = service
        app = create_app()
        mounted = [r for r in app.routes if getattr(r, "path", "") == "/gennaker"]
        assert mounted and getattr(mounted[0], "app", None) is gennaker_app, "the plugin's app is not mounted"
        with TestClient(app) as client:
            yield Api(client, gennaker_home)
        service.close()
        purge_cached_app()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def service(api: Api) -> Any:
    """The Clusters API's service object (its cache is emptied before each test)."""
    from gennaker.web.app import get_app

    svc = get_app().state.service
    svc.cache.clear()
    svc.pipelines.clear()
    return svc
