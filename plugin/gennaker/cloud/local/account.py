"""How a ``gennaker_local`` Airflow connection becomes a :class:`~gennaker.cloud.local.provider.LocalProvider`.

=====================================  ==========================================================
connection                             provider
=====================================  ==========================================================
``local``, no connection configured    the embedded provider (``$GENNAKER_HOME``, region ``local``,
                                       no traffic guards)
type ``gennaker_local``                a provider for that account; the extra may set ``home``,
                                       ``region``, ``traffic_guards`` (clusters that never lose
                                       their last serving server group) and the capacity limits
                                       ``max_server_group_capacity`` (default 20) and
                                       ``max_account_instances`` (default 100)
=====================================  ==========================================================

:class:`LocalAccount` is what the provider registry reads (``from_connection``, the connection
form of Airflow's UI); :class:`LocalProvider` inherits it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from gennaker.cloud.limits import ACCOUNT_SETTING, GROUP_SETTING, Limits, local_limits
from gennaker.cloud.registry import AccountNotSupported
from gennaker.errors import InvalidRequest

if TYPE_CHECKING:
    from gennaker.cloud.provider import CloudProvider

CONN_TYPE = "gennaker_local"
DEFAULT_REGION = "local"
GUARDS_HINT = 'write it as ["hello-prod"] or as hello-prod, hello-staging'

CONNECTION_FORM: dict[str, Any] = {
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
"""The form of a ``gennaker_local`` connection; the fields land in its extra as ``home``, ``region``
and ``traffic_guards`` (comma-separated there; a JSON list works too)."""


class LocalAccount:
    """The registry's side of the local provider: its connection type, form, and how a connection builds it."""

    connection_label: ClassVar[str] = "gennaker local cloud"
    connection_form: ClassVar[Mapping[str, Any] | None] = CONNECTION_FORM

    @classmethod
    def from_connection(cls, conn_id: str, conn: Any, region: str | None) -> CloudProvider:
        """The provider of account ``conn_id``: its connection's extra, or the embedded defaults if ``conn`` is None."""
        build = cast(Any, cls)  # the class this is mixed into: LocalProvider(account, region, **settings)
        if conn is None:
            return cast("CloudProvider", build(conn_id, region or DEFAULT_REGION))
        extra = conn.extra_dejson
        home = _field(extra, "home")
        return cast(
            "CloudProvider",
            build(
                conn_id,
                region or _field(extra, "region") or DEFAULT_REGION,
                home=Path(str(home)).expanduser() if home else None,
                guarded_clusters=_clusters(_field(extra, "traffic_guards"), conn_id),
                limits=_limits(extra, conn_id),
            ),
        )


def _field(extra: dict[str, Any], name: str) -> Any:
    """An extra field as written in JSON (``home``) or as an older form saved it (``extra__gennaker_local__home``)."""
    value = extra.get(name)
    if value is None or value == "":
        value = extra.get(f"extra__{CONN_TYPE}__{name}")
    return None if value == "" else value


def _limits(extra: dict[str, Any], conn_id: str) -> Limits:
    """``max_server_group_capacity`` / ``max_account_instances`` of the extra, else ``GENNAKER_LOCAL_MAX_*``."""
    settings = {name: _field(extra, name) for name in (GROUP_SETTING, ACCOUNT_SETTING)}
    try:
        return local_limits({k: v for k, v in settings.items() if v is not None})
    except InvalidRequest as error:
        raise AccountNotSupported(
            f"connection {conn_id!r}: {error.message}", hint="write a whole number of instances, e.g. 20"
        ) from None


def _clusters(value: Any, conn_id: str) -> list[str]:
    """``traffic_guards`` as a JSON list, a JSON text of one, or comma-separated names (the UI form's field)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise AccountNotSupported(
                    f"connection {conn_id!r}: traffic_guards {text!r} is not a JSON list of cluster names",
                    hint=GUARDS_HINT,
                ) from None
        else:
            return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, Iterable) and not isinstance(value, (dict, bytes)):
        names = [str(v).strip() for v in value]
        return [n for n in names if n]
    raise AccountNotSupported(
        f"connection {conn_id!r}: traffic_guards must be a list of cluster names, not {type(value).__name__}",
        hint=GUARDS_HINT,
    )
