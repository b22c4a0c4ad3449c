"""The Airflow plugin (entry point ``airflow.plugins``). Light to import: no Airflow models, no cloud SDKs.

It makes gennaker known to Airflow (``airflow plugins`` lists it with its version) and
mounts the Clusters API (``gennaker.web``) in Airflow's API server at ``/gennaker``.

Every Airflow process loads plugins (scheduler, DAG processor, triggerer, each task), but
only the API server reads ``fastapi_apps``. The app (FastAPI plus Airflow's API server
security code, seconds to import) is therefore built when that attribute is first read,
not when this module is imported.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from gennaker import __version__

CLUSTERS_API_PREFIX = "/gennaker"
"""Where the Clusters API is mounted: ``/gennaker/api/...``, ``/gennaker/openapi.json``, ``/gennaker/docs``."""


class _ClustersApi:
    """``fastapi_apps``, built on first read (by the API server)."""

    def __get__(self, instance: Any, owner: type | None = None) -> list[dict[str, Any]]:
        from gennaker.web.app import get_app

        return [{"app": get_app(), "url_prefix": CLUSTERS_API_PREFIX, "name": "gennaker Clusters API"}]


class GennakerPlugin(AirflowPlugin):
    """gennaker's Airflow plugin."""

    name = "gennaker"
    version = __version__

    # The Clusters API (gennaker.web): GET/POST /gennaker/api/..., contract in docs/clusters-api.md.
    fastapi_apps = _ClustersApi()

    # The Clusters page (react_apps) goes here: a React app in the Airflow UI that calls the
    # Clusters API above with the UI's session cookie (see docs/clusters-api.md, "From a page").
