"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from gennaker import __version__


def get_provider_info() -> dict[str, Any]:
    """Return gennaker's provider info (name, versions, connection types as they arrive)."""
    return {
        "package-name": "gennaker",
        "name": "gennaker",
        "description": "Continuous delivery on Apache Airflow: bake, deploy, canary and promote pipelines.",
        "versions": [__version__],
        "connection-types": [],
    }
