"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from gennaker import __version__


def get_provider_info() -> dict[str, Any]:
    """Return gennaker's provider info (name, versions, connection types).

    The connection types are those of the registered cloud providers (:mod:`gennaker.cloud.registry`)
    that declare a connection form; a provider whose connection type another Airflow provider owns
    (``aws``: the amazon provider) declares none, and that provider's form is the one users fill in.
    Every type is served by :class:`~gennaker.hooks.cluster.ClusterHook` (a subclass per type
    other than ``gennaker_local``: :func:`~gennaker.cloud.registry.hook_class_path`). Form fields and field
    behaviour are declared here, as Airflow 3.2+ wants (a hook's ``get_connection_form_widgets`` /
    ``get_ui_field_behaviour`` are deprecated).
    """
    from gennaker.cloud import registry

    connection_types = [
        {
            "hook-class-name": registry.hook_class_path(name),
            "hook-name": str(getattr(cls, "connection_label", "") or name),
            "connection-type": name,
            **dict(cls.connection_form or {}),
        }
        for name, cls in registry.providers_with_forms()
    ]
    return {
        "package-name": "gennaker",
        "name": "gennaker",
        "description": "Continuous delivery on Apache Airflow: bake, deploy, canary and promote pipelines.",
        "versions": [__version__],
        "connection-types": connection_types,
    }
