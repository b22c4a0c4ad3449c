"""One read of an account: its server groups (with instances), load balancers, firewalls and images.

An :class:`AccountSnapshot` is what :class:`~gennaker.web.cache.SnapshotCache` keeps per
account. It never changes once read, so what is built from it (the rendered clusters of
an application, say) is memoized on it (:meth:`AccountSnapshot.memo`) and thrown away
with it.

An account is read through :meth:`CloudProvider.inventory`, which starts nothing: its
default lists server groups per application (the applications of the load balancers,
firewalls and pipelines); a provider that can read its whole account in bulk (the local
one reads its state store in two queries) does so instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from gennaker.cloud.model import Firewall, Image, LoadBalancer, ServerGroup, utcnow
from gennaker.cloud.provider import CloudProvider
from gennaker.errors import NotFound

T = TypeVar("T")


@dataclass(eq=False)
class AccountSnapshot:
    """Everything the Clusters API shows of one account, as read at ``read_at``."""

    account: str
    kind: str
    region: str
    read_at: datetime
    server_groups: tuple[ServerGroup, ...]
    load_balancers: tuple[LoadBalancer, ...]
    firewalls: tuple[Firewall, ...]
    images: Mapping[str, Image]
    _groups_by_app: dict[str, list[ServerGroup]] = field(init=False, repr=False)
    _memo: dict[Hashable, tuple[Callable[[AccountSnapshot], Any], Any]] = field(init=False, repr=False)
    _hits: set[Hashable] = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_app: dict[str, list[ServerGroup]] = {}
        for group in self.server_groups:
            by_app.setdefault(group.application, []).append(group)
        self._groups_by_app = by_app
        self._memo = {}
        self._hits = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lookups

    def applications(self) -> set[str]:
        """Applications with a server group, load balancer or firewall in the account."""
        return (
            set(self._groups_by_app)
            | {lb.application for lb in self.load_balancers}
            | {fw.application for fw in self.firewalls}
        )

    def server_groups_of(self, application: str) -> list[ServerGroup]:
        """The application's server groups, oldest first."""
        return list(self._groups_by_app.get(application, ()))

    def load_balancers_of(self, application: str) -> list[LoadBalancer]:
        """The application's load balancers, by name."""
        return [lb for lb in self.load_balancers if lb.application == application]

    def firewalls_of(self, application: str) -> list[Firewall]:
        """The application's firewalls, by name."""
        return [fw for fw in self.firewalls if fw.application == application]

    def server_group(self, region: str, name: str) -> ServerGroup:
        """One server group; :class:`NotFound` if the account had none of that name in that region."""
        for group in self._groups_by_app.get(_application_of(name), ()):
            if group.name == name and group.region == region:
                return group
        raise NotFound(
            f"server group {name} not found in account {self.account}, region {region}",
            hint="it may have been destroyed; list the application's clusters to see",
        )

    # ------------------------------------------------------------------ memo

    def memo(self, key: Hashable, build: Callable[[AccountSnapshot], T]) -> T:
        """``build(self)``, computed once per snapshot and key."""
        with self._lock:
            self._hits.add(key)
            found = self._memo.get(key)
        if found is not None:
            value: T = found[1]
            return value
        value = build(self)
        with self._lock:
            self._memo.setdefault(key, (build, value))
            stored: T = self._memo[key][1]
            return stored

    def warm_from(self, old: AccountSnapshot) -> None:
        """Build here what was asked of ``old`` while it was served (before this one replaces it)."""
        with old._lock:
            hot = [(key, old._memo[key][0]) for key in old._hits if key in old._memo]
        for key, build in hot:
            value = build(self)
            with self._lock:
                self._memo.setdefault(key, (build, value))


def _application_of(name: str) -> str:
    return name.split("-", 1)[0]


def warm(old: AccountSnapshot, new: AccountSnapshot) -> None:
    """:class:`~gennaker.web.cache.SnapshotCache`'s ``warm`` hook."""
    new.warm_from(old)


def read_account(account: str, provider: CloudProvider, applications: Iterable[str] = ()) -> AccountSnapshot:
    """Read an account. ``applications``: those known elsewhere (pipelines), for providers listed per application."""
    read_at = utcnow()
    inventory = provider.inventory(applications)
    return AccountSnapshot(
        account=account,
        kind=provider.kind,
        region=provider.region,
        read_at=read_at,
        server_groups=tuple(inventory.server_groups),
        load_balancers=tuple(inventory.load_balancers),
        firewalls=tuple(inventory.firewalls),
        images=inventory.images,
    )


__all__ = ["AccountSnapshot", "read_account", "warm"]
