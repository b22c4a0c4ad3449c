"""The accounts the Clusters API shows: the embedded ``local`` one and every connection of a provider's type.

A provider's type is a connection type of the provider registry (:func:`registry.connection_types`:
``gennaker_local``, and whatever installed package adds one).

Connections are found where Airflow keeps them and where they can be listed: the
metadata database, and ``AIRFLOW_CONN_<ID>`` environment variables (JSON or URI form).
Connections of other secrets backends cannot be listed; such an account is still served
when asked for by name. Each account's provider is built by :func:`provider_for` (the
same call the stages make) and kept while its connection does not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gennaker.cloud import registry
from gennaker.cloud.provider import CloudProvider
from gennaker.errors import CloudError, NotFound
from gennaker.hooks import cluster as cluster_hooks
from gennaker.hooks.cluster import DEFAULT_CONN_ID

ENV_PREFIX = "AIRFLOW_CONN_"


@dataclass(frozen=True)
class Account:
    """An account and a fingerprint of its connection (a change rebuilds its provider)."""

    name: str
    fingerprint: str = ""


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _env_conn_type(value: str) -> str | None:
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        conn_type = data.get("conn_type") if isinstance(data, dict) else None
        return str(conn_type) if conn_type else None
    scheme = urlsplit(text).scheme
    return scheme.replace("-", "_") if scheme else None


def environment_accounts(environ: dict[str, str] | None = None) -> list[Account]:
    """Connections of a provider's type defined as ``AIRFLOW_CONN_<ID>`` variables."""
    env = os.environ if environ is None else environ
    types = set(registry.connection_types())
    found = []
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and _env_conn_type(value) in types:
            found.append(Account(key[len(ENV_PREFIX) :].lower(), _fingerprint("env", value)))
    return found


def database_accounts() -> list[Account]:
    """Connections of a provider's type in Airflow's metadata database."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        connections = session.scalars(
            select(Connection).where(Connection.conn_type.in_(registry.connection_types()))
        ).all()
        return [Account(str(c.conn_id), _fingerprint("db", c.host, c.extra)) for c in connections]


def discover_accounts() -> list[Account]:
    """``local`` first, then the connections by name (the database wins over the environment, as in Airflow)."""
    found: dict[str, Account] = {}
    for account in environment_accounts():
        found[account.name] = account
    for account in database_accounts():
        found[account.name] = account
    local = found.pop(DEFAULT_CONN_ID, Account(DEFAULT_CONN_ID))
    return [local, *(found[name] for name in sorted(found))]


class Accounts:
    """The known accounts (listed again every ``ttl`` seconds) and a provider per account."""

    def __init__(self, ttl: float = 5.0, discover: Callable[[], list[Account]] = discover_accounts) -> None:
        self.ttl = ttl
        self._discover = discover
        self._lock = threading.Lock()
        self._accounts: list[Account] | None = None
        self._at = 0.0
        self._providers: dict[str, tuple[str, CloudProvider]] = {}

    def all(self) -> list[Account]:
        """The accounts, ``local`` first."""
        with self._lock:
            if self._accounts is None or time.monotonic() - self._at >= self.ttl:
                self._accounts, self._at = self._discover(), time.monotonic()
            return list(self._accounts)

    def names(self) -> list[str]:
        """The accounts' names, ``local`` first."""
        return [account.name for account in self.all()]

    def get(self, name: str) -> Account:
        """A known account; :class:`NotFound` for any other name."""
        for account in self.all():
            if account.name == name:
                return account
        with self._lock:
            self._accounts = None  # created a moment ago? list again once
        for account in self.all():
            if account.name == name:
                return account
        raise NotFound(
            f"account {name!r} is not a gennaker account",
            hint=f"accounts are 'local' and the Airflow connections of type {' or '.join(registry.connection_types())}",
        )

    def provider(self, name: str) -> CloudProvider:
        """The account's provider (built as the stages build it, and kept while the connection is unchanged)."""
        account = self.get(name)
        with self._lock:
            held = self._providers.get(name)
            if held is not None and held[0] == account.fingerprint:
                return held[1]
        provider = cluster_hooks.provider_for(name)
        with self._lock:
            old = self._providers.get(name)
            self._providers[name] = (account.fingerprint, provider)
        if old is not None and old[1] is not provider:
            try:
                old[1].close()
            except CloudError:
                pass
        return provider

    def clear(self) -> None:
        """Forget accounts and providers (tests, a changed environment)."""
        with self._lock:
            providers = [p for _, p in self._providers.values()]
            self._providers.clear()
            self._accounts = None
        for provider in providers:
            try:
                provider.close()
            except CloudError:
                pass


__all__ = ["Account", "Accounts", "database_accounts", "discover_accounts", "environment_accounts"]
