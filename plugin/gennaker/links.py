"""The operator extra link from a deploy or promote task in Airflow's grid to its server group on the Clusters page.

Here, not in :mod:`gennaker.web` or :mod:`gennaker.operators`: the operators attach the link,
the plugin registers it, and the page answers its URL, and neither package imports the other.

Airflow 3.3 computes an operator's extra links in the worker when the task ends (the task
runner's ``finalize`` calls :meth:`ServerGroupLink.get_link` and stores the URL as an XCom
under :attr:`~ServerGroupLink.xcom_key`); the API server only reads that XCom back. The link
reads the task's output (``DeployOperator`` and ``PromoteOperator`` return
``{"serverGroup", "cluster", "account", "region", ...}``): a task that made no server group
(it failed before, or was skipped) gets no link.

The URL is the page's route in the Airflow UI, ``plugin/clusters``, with the query the page
honours (``application``, ``serverGroup``, ``sgAccount``, ``sgRegion``), written without a
leading ``/``: the UI's ``<base href>`` then resolves it under ``[api] base_url``'s path, and
the UI opens it in the same tab (same origin).

This module is imported by the plugin in every Airflow process: it imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from airflow.sdk.bases.operatorlink import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

CLUSTERS_ROUTE = "clusters"
"""The page's ``url_route`` (``react_apps``): Airflow's UI serves it at ``plugin/clusters``."""


def clusters_page_url(output: Any) -> str:
    """The Clusters page showing the server group of a deploy or promote task's ``output`` ("" if it names none)."""
    if not isinstance(output, Mapping):
        return ""
    group = output.get("serverGroup")
    if not isinstance(group, str) or not group:
        return ""
    from gennaker.cloud.naming import parse_server_group_name
    from gennaker.errors import InvalidName

    try:
        application = parse_server_group_name(group).app
    except InvalidName:
        return ""
    query = {"application": application, "serverGroup": group}
    for key, param in (("account", "sgAccount"), ("region", "sgRegion")):
        value = output.get(key)
        if isinstance(value, str) and value:
            query[param] = value
    return f"plugin/{CLUSTERS_ROUTE}?{urlencode(query)}"


def run_page_url(dag_id: str, run_id: str) -> str:
    """A DAG run's page in the Airflow UI: under ``[api] base_url`` when set, else from the server's root."""
    from urllib.parse import quote

    base = ""
    try:
        from airflow.configuration import conf

        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    except Exception:  # no Airflow configuration (a unit test): a path from the root still works
        base = ""
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


class ServerGroupLink(BaseOperatorLink):
    """The link named "Server group": the task's server group on the Clusters page."""

    name = "Server group"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The Clusters page URL for the server group in the task's return value, or "" if it has none."""
        from airflow.sdk.execution_time.xcom import XCom

        return clusters_page_url(XCom.get_value(ti_key=ti_key, key="return_value"))


__all__ = ["CLUSTERS_ROUTE", "ServerGroupLink", "clusters_page_url", "run_page_url"]
