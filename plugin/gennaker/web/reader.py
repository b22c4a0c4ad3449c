"""One read of an account: its server groups (with instances), load balancers, firewalls and images.

An :class:`AccountSnapshot` is what :class:`~gennaker.web.cache.SnapshotCache` keeps per
account. It never changes once read, so what is built from it (the rendered clusters of
an application, say) is memoized on it (:meth:`AccountSnapshot.memo`) and thrown away
with it.

Reading never starts anything: for the local provider the state store is read in bulk
(:mod:`gennaker.web.localstate`), not through :meth:`LocalProvider.instances`, which
would start a supervisor for a group that has none. Other providers are read through the
:class:`CloudProvider` interface: their server groups are listed per application (the
applications of their load balancers, firewalls and pipelines).
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
from gennaker.web.localstate import read_server_groups

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
    from gennaker.cloud.local.provider import LocalProvider

    read_at = utcnow()
    if isinstance(provider, LocalProvider):
        store = provider.store
        groups = [provider.observe(group) for group in read_server_groups(store, account)]  # stale rows: Unknown
        balancers = store.list_load_balancers(account=account)
        firewalls = store.list_firewalls(account=account)
        used = {group.image_id for group in groups}
        images = {image.id: image for image in store.find_images() if image.id in used}
    else:
        balancers = provider.list_load_balancers()
        firewalls = provider.list_firewalls()
        names = set(applications) | {lb.application for lb in balancers} | {fw.application for fw in firewalls}
        groups = [group for name in sorted(names) for group in provider.list_server_groups(name)]
        images = {}
        for image_id in sorted({group.image_id for group in groups}):
            try:
                images[image_id] = provider.get_image(image_id)
            except NotFound:
                continue  # deregistered: the group still shows its image id
    return AccountSnapshot(
        account=account,
        kind=provider.kind,
        region=provider.region,
        read_at=read_at,
        server_groups=tuple(groups),
        load_balancers=tuple(balancers),
        firewalls=tuple(firewalls),
        images=images,
    )


__all__ = ["AccountSnapshot", "read_account", "warm"]
