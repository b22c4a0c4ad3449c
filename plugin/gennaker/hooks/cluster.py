"""A stage's ``account`` is an Airflow connection id; :class:`ClusterHook` turns it into a cloud provider.

The connection's type picks the provider through the registry (:mod:`gennaker.cloud.registry`,
entry point group ``gennaker.providers``), and the provider class builds itself from the
connection (``from_connection``): what a ``gennaker_local`` connection may set is told in
:mod:`gennaker.cloud.local.account`. The account ``local`` works without any connection (the
embedded local provider). A connection of a type no installed provider serves is refused,
naming the connection and its type; one of a cloud gennaker plans (``aws``,
``google_cloud_platform``) says which extra brings it (``pip install 'gennaker[aws]'``).

Nothing here touches the network or a cloud SDK at import time; the provider is
built on first use and cached per hook instance.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from gennaker.cloud import registry
from gennaker.cloud.registry import AccountNotFound, AccountNotSupported

if TYPE_CHECKING:
    from gennaker.cloud.provider import CloudProvider

CONN_TYPE = registry.DEFAULT_CONNECTION_TYPE
DEFAULT_CONN_ID = "local"
DEFAULT_REGION = "local"


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

        try:
            conn = self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            if self.conn_id != DEFAULT_CONN_ID:
                raise AccountNotFound(
                    f"account {self.conn_id!r}: there is no Airflow connection {self.conn_id!r}"
                ) from None
            provider = registry.provider_class(CONN_TYPE, DEFAULT_CONN_ID)
            return provider.from_connection(DEFAULT_CONN_ID, None, self.region)
        provider = registry.provider_class(conn.conn_type or "", self.conn_id)
        return provider.from_connection(self.conn_id, conn, self.region)


HOOK_PREFIX = registry.HOOK_PREFIX


@functools.cache
def hook_class(connection_type: str) -> type[ClusterHook]:
    """:class:`ClusterHook` for ``gennaker_local``, else its subclass declaring ``connection_type``.

    Airflow takes a hook's ``conn_type`` over the provider info's, so every connection type
    other than ``gennaker_local`` gets a subclass of its own (``ClusterHook_<type>``, made by
    this module's ``__getattr__``; :func:`registry.hook_class_path` names it): Airflow's form,
    "Test" button and ``BaseHook.get_hook`` then work for a provider that a package adds.
    """
    if connection_type == CONN_TYPE:
        return ClusterHook
    label = getattr(registry.provider_class(connection_type, connection_type), "connection_label", "")
    return type(
        f"{HOOK_PREFIX}{connection_type}",
        (ClusterHook,),
        {
            "__module__": __name__,
            "__doc__": f"A gennaker account of a {connection_type} connection.",
            "conn_type": connection_type,
            "hook_name": label or connection_type,
            "default_conn_name": f"{connection_type}_default",
        },
    )


def __getattr__(name: str) -> Any:
    # ``gennaker.hooks.cluster.ClusterHook_<type>``: the hook a provider's connection type is registered with.
    if name.startswith(HOOK_PREFIX):
        try:
            return hook_class(name[len(HOOK_PREFIX) :])
        except AccountNotSupported as error:  # hasattr() and Airflow's import_string expect AttributeError
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}: {error.message}") from None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def provider_for(conn_id: str = DEFAULT_CONN_ID, region: str | None = None) -> CloudProvider:
    """The provider of an account: what stages and triggers call (tests replace it)."""
    return ClusterHook(conn_id=conn_id, region=region).get_provider()


__all__ = ["AccountNotFound", "AccountNotSupported", "ClusterHook", "hook_class", "provider_for"]
