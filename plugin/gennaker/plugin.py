"""The Airflow plugin (entry point ``airflow.plugins``). Light to import: no Airflow models, no cloud SDKs.

It makes gennaker known to Airflow (``airflow plugins`` lists it with its version),
mounts the Clusters API (``gennaker.web``) in Airflow's API server at ``/gennaker``, adds
the Clusters page to the UI's navigation (``react_apps``: a React bundle built from
``gennaker/web/ui`` and served from ``/gennaker/static``), and registers the operator
extra link from a deploy or promote task to its server group on that page.

Every Airflow process loads plugins (scheduler, DAG processor, triggerer, each task), but
only the API server reads ``fastapi_apps``. The app (FastAPI plus Airflow's API server
security code, seconds to import) is therefore built when that attribute is first read,
not when this module is imported.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from gennaker import __version__
from gennaker.web.links import CLUSTERS_ROUTE, ServerGroupLink

CLUSTERS_API_PREFIX = "/gennaker"
"""Where the Clusters API is mounted: ``/gennaker/api/...`` and ``/gennaker/openapi.json`` (no docs pages)."""


class _ClustersApi:
    """``fastapi_apps``, built on first read (by the API server)."""

    def __get__(self, instance: Any, owner: type | None = None) -> list[dict[str, Any]]:
        from gennaker.web.app import get_app

        return [{"app": get_app(), "url_prefix": CLUSTERS_API_PREFIX, "name": "gennaker Clusters API"}]


STATIC = Path(__file__).parent / "web" / "static"
BUNDLE = "clusters.js"
_SOURCES = re.compile(rb"sources sha256:([0-9a-f]{64})")


@cache
def bundle_version() -> str:
    """The first 12 hex digits of the sources hash in the bundle's banner (the package version if it has none).

    Put in the bundle's URL, so a browser never runs a cached bundle of another build.
    """
    try:
        with (STATIC / BUNDLE).open("rb") as bundle:
            found = _SOURCES.search(bundle.read(400))
    except OSError:
        found = None
    return found.group(1)[:12].decode() if found else __version__


class _ClustersPage:
    """``react_apps``, built on first read (by the API server): the Clusters page in the UI's navigation.

    URLs are relative (no leading ``/``): the UI resolves them against its ``<base href>``, so they
    hold under an ``[api] base_url`` with a path.
    """

    def __get__(self, instance: Any, owner: type | None = None) -> list[dict[str, Any]]:
        return [
            {
                "name": "Clusters",
                "url_route": CLUSTERS_ROUTE,  # the page is at plugin/clusters
                "bundle_url": f"{CLUSTERS_API_PREFIX.lstrip('/')}/static/{BUNDLE}?v={bundle_version()}",
                "destination": "nav",
                "nav_top_level": True,
                "icon": f"{CLUSTERS_API_PREFIX.lstrip('/')}/static/clusters.svg",
                "icon_dark_mode": f"{CLUSTERS_API_PREFIX.lstrip('/')}/static/clusters-dark.svg",
            }
        ]


class GennakerPlugin(AirflowPlugin):
    """gennaker's Airflow plugin."""

    name = "gennaker"
    version = __version__

    # The Clusters API (gennaker.web): GET/POST /gennaker/api/..., contract in docs/clusters-api.md.
    fastapi_apps = _ClustersApi()

    # The Clusters page: a React app in the Airflow UI that calls the Clusters API above with the
    # UI's session cookie (docs/clusters-page.md; built by scripts/build-ui.sh).
    react_apps = _ClustersPage()

    # "Server group" on deploy and promote tasks: their server group on the Clusters page.
    operator_extra_links = [ServerGroupLink()]
