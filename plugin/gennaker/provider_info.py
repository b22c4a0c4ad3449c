"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from gennaker import __version__


def get_provider_info() -> dict[str, Any]:
    """Return gennaker's provider info (name, versions, connection types).

    Connection form fields and field behaviour are declared here, as Airflow 3.2+ wants
    (a hook's ``get_connection_form_widgets`` / ``get_ui_field_behaviour`` are deprecated).
    The form's fields land in the connection's extra as ``home``, ``region`` and
    ``traffic_guards`` (comma-separated there; a JSON list works too).
    """
    return {
        "package-name": "gennaker",
        "name": "gennaker",
        "description": "Continuous delivery on Apache Airflow: bake, deploy, canary and promote pipelines.",
        "versions": [__version__],
        "connection-types": [
            {
                "hook-class-name": "gennaker.hooks.cluster.ClusterHook",
                "hook-name": "gennaker local cloud",
                "connection-type": "gennaker_local",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "login", "password", "port"],
                    "relabeling": {},
                    "placeholders": {
                        "extra": '{"home": "/srv/gennaker", "region": "local", "traffic_guards": ["hello-prod"]}',
                    },
                },
                "conn-fields": {
                    "home": {
                        "label": "Home folder",
                        "description": "where the account keeps images, state and logs "
                        "(default: $GENNAKER_HOME, else $AIRFLOW_HOME/gennaker)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "region": {
                        "label": "Region",
                        "description": "the region stages use when they name none (default: local)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "traffic_guards": {
                        "label": "Traffic guards",
                        "description": "clusters that never lose their last enabled, healthy server group, "
                        "comma-separated (e.g. hello-prod, hello-staging)",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
    }
