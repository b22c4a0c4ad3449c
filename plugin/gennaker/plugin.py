"""The Airflow plugin (entry point ``airflow.plugins``). Light to import: no Airflow models, no cloud SDKs.

Today it makes gennaker known to Airflow (``airflow plugins`` lists it with its
version); the Clusters page (fastapi_apps, react_apps) and the operator extra links
join it as they are built.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from gennaker import __version__


class GennakerPlugin(AirflowPlugin):
    """gennaker's Airflow plugin."""

    name = "gennaker"
    version = __version__
