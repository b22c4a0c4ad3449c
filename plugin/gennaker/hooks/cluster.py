"""A stage's ``account`` is an Airflow connection id; :class:`ClusterHook` turns it into a cloud provider.

=====================================  ==========================================================
connection                             provider
=====================================  ==========================================================
``local``, no connection configured    the embedded :class:`~gennaker.cloud.local.provider.LocalProvider`
                                       (``$GENNAKER_HOME``, region ``local``, no traffic guards)
type ``gennaker_local``                a :class:`LocalProvider` for that account; the extra may set
                                       ``home``, ``region``, ``traffic_guards`` (clusters that
                                       never lose their last serving server group) and the capacity
                                       limits ``max_server_group_capacity`` (default 20) and
                                       ``max_account_instances`` (default 100)
type ``aws`` / ``google_cloud_platform``  refused: those providers are not built yet
anything else                          refused, naming the connection and its type
=====================================  ==========================================================

Nothing here touches the network or a cloud SDK at import time; the provider is
built on first use and cached per hook instance.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from gennaker.cloud.limits import ACCOUNT_SETTING, GROUP_SETTING, Limits, local_limits
from gennaker.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from gennaker.cloud.provider import CloudProvider

CONN_TYPE = "gennaker_local"
DEFAULT_CONN_ID = "local"
DEFAULT_REGION = "local"

# Connection types of clouds gennaker will support, and which provider that will be.
_NOT_BUILT = {
    "aws": "AWS",
    "google_cloud_platform": "Google Cloud",
    "gcp": "Google Cloud",
}


class AccountNotSupported(InvalidRequest):
    """The stage's account is a connection gennaker cannot use (yet)."""

    default_hint = "use a connection of type gennaker_local, or the embedded account 'local' (no connection needed)"


class AccountNotFound(NotFound):
    """The stage's account names no Airflow connection."""

    default_hint = (
        "create an Airflow connection of type gennaker_local with that id (or set AIRFLOW_CONN_<ID>), "
        "or use the embedded account 'local'"
    )


class ClusterHook(BaseHook):
    """A cloud account of gennaker: ``get_provider()`` is its :class:`CloudProvider`.

    :param conn_id: the Airflow connection id (a stage's ``account``); ``local`` works
        without any connection.
    :param region: the region the provider defaults to (the stage's ``region``); else the
        connection's extra ``region``, else ``local``.
    """

    conn_name_attr = "conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "gennaker local cloud"

    def __init__(self, conn_id: str = DEFAULT_CONN_ID, region: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.region = region
        self._provider: CloudProvider | None = None

    def get_conn(self) -> CloudProvider:
        """Airflow's generic accessor: the provider."""
        return self.get_provider()

    def get_provider(self) -> CloudProvider:
        """The provider of this account (built once per hook)."""
        if self._provider is None:
            self._provider = self._build()
        return self._provider

    def close(self) -> None:
        """Release the provider's clients, if it was built."""
        if self._provider is not None:
            self._provider.close()
            self._provider = None

    def test_connection(self) -> tuple[bool, str]:
        """What the UI's "Test" button shows: the account, its home and its guarded clusters."""
        try:
            provider = self.get_provider()
            provider.list_load_balancers()  # opens (and if need be creates) the account's state
        except Exception as error:
            return False, str(error)
        guards = sorted(getattr(provider, "guarded_clusters", ()))
        home = getattr(provider, "home", None)
        return True, (
            f"{self.conn_id}: {provider.kind} account, region {provider.region}"
            + (f", home {home}" if home else "")
            + (f", traffic guards on {', '.join(guards)}" if guards else "")
        )

    # ------------------------------------------------------------------ internals

    def _build(self) -> CloudProvider:
        from airflow.sdk.exceptions import AirflowNotFoundException

        from gennaker.cloud.local.provider import LocalProvider

        try:
            conn = self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            if self.conn_id != DEFAULT_CONN_ID:
                raise AccountNotFound(
                    f"account {self.conn_id!r}: there is no Airflow connection {self.conn_id!r}"
                ) from None
            return LocalProvider(DEFAULT_CONN_ID, self.region or DEFAULT_REGION)
        conn_type = conn.conn_type or ""
        if conn_type == CONN_TYPE:
            extra = conn.extra_dejson
            home = _field(extra, "home")
            return LocalProvider(
                self.conn_id,
                self.region or _field(extra, "region") or DEFAULT_REGION,
                home=Path(str(home)).expanduser() if home else None,
                guarded_clusters=_clusters(_field(extra, "traffic_guards"), self.conn_id),
                limits=_limits(extra, self.conn_id),
            )
        if conn_type in _NOT_BUILT:
            raise AccountNotSupported(
                f"account {self.conn_id!r} is a {_NOT_BUILT[conn_type]} connection (type {conn_type!r}): "
                f"gennaker's {_NOT_BUILT[conn_type]} provider is not built yet"
            )
        raise AccountNotSupported(
            f"account {self.conn_id!r} is a connection of type {conn_type!r}, which is not a cloud account "
            f"gennaker knows ({CONN_TYPE}; aws and google_cloud_platform are not built yet)"
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
                    hint='write it as ["hello-prod"] or as hello-prod, hello-staging',
                ) from None
        else:
            return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, Iterable) and not isinstance(value, (dict, bytes)):
        names = [str(v).strip() for v in value]
        return [n for n in names if n]
    raise AccountNotSupported(
        f"connection {conn_id!r}: traffic_guards must be a list of cluster names, not {type(value).__name__}",
        hint='write it as ["hello-prod"] or as hello-prod, hello-staging',
    )


def provider_for(conn_id: str = DEFAULT_CONN_ID, region: str | None = None) -> CloudProvider:
    """The provider of an account: what stages and triggers call (tests replace it)."""
    return ClusterHook(conn_id=conn_id, region=region).get_provider()
