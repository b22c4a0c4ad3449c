"""What every part of :class:`~gennaker.cloud.local.provider.LocalProvider` shares: its home, store and helpers.

:class:`LocalProviderBase` holds the account's home, state store, limits and traffic guards,
and the helpers of every call: claiming an operation by its key (checks first, nothing
recorded when they fail), finishing one, the capacity limits, the traffic guards, keeping a
group's supervisor and its load balancers' proxies running.

"Being destroyed" is ``ServerGroup.destroying`` for callers; in the state it is also the
``gennaker:destroying`` tag (:data:`DESTROYING_TAG`), which the supervisors read, those of
an earlier version included: :func:`is_destroying` reads either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from gennaker.cloud.limits import Limits, desired_total, local_limits
from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local import watchdog as local_watchdog
from gennaker.cloud.local.account import LocalAccount
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import (
    Capacity,
    Health,
    LoadBalancer,
    Operation,
    OperationKind,
    OperationStatus,
    ServerGroup,
)
from gennaker.cloud.naming import parse_server_group_name
from gennaker.cloud.provider import CloudProvider, IdempotencyKey
from gennaker.errors import CloudError, InvalidRequest, NotFound, TrafficGuardViolation
from gennaker.paths import gennaker_home

log = logging.getLogger(__name__)

DESTROYING_TAG = local_supervisor.DESTROYING_TAG


def is_destroying(group: ServerGroup) -> bool:
    """The group is being destroyed: the model's field, or the tag a record of an earlier version has alone."""
    return group.destroying or bool(group.tags.get(DESTROYING_TAG))


def with_destroying(group: ServerGroup) -> ServerGroup:
    """The group with ``destroying`` set when only the tag says so (a copy only then)."""
    return group.replace(destroying=True) if not group.destroying and group.tags.get(DESTROYING_TAG) else group


class LocalProviderBase(LocalAccount, CloudProvider):
    """The local provider's state and shared helpers; :class:`LocalProvider` is what callers use."""

    def __init__(
        self,
        account: str = "local",
        region: str = "local",
        *,
        home: str | os.PathLike[str] | None = None,
        store: StateStore | None = None,
        guarded_clusters: Iterable[str] = (),
        limits: Limits | None = None,
    ) -> None:
        super().__init__(account, region)
        self._limits = limits if limits is not None else local_limits()
        self.home = Path(home).expanduser().absolute() if home is not None else gennaker_home()
        self._own_store = store is None
        self.store = store or StateStore(self.home / "local" / "state.db")
        self.guarded_clusters = frozenset(guarded_clusters)

    @property
    def limits(self) -> Limits:
        """Capacity limits: the connection's extra, else ``GENNAKER_LOCAL_MAX_*``, else 20 per group, 100 in all."""
        return self._limits

    def close(self) -> None:
        if self._own_store:
            self.store.close()

    def observe(self, group: ServerGroup) -> ServerGroup:
        """The group's rows as they can be believed now (see :func:`local_watchdog.observe`).

        An instance whose process has ended reads Down; while the group's supervisor has not
        been heard from (its heartbeat is stale), the others read Unknown, saying why. A record
        of an earlier version that only has the ``gennaker:destroying`` tag reads ``destroying``.
        """
        return local_watchdog.observe(self.home, with_destroying(group))

    def _claim(
        self,
        key: IdempotencyKey,
        kind: OperationKind,
        request: Mapping[str, Any],
        check: Callable[[], None] | None = None,
    ) -> Operation:
        """The key's operation; ``check`` runs first unless the key's operation already ended.

        A ``check`` that raises leaves nothing recorded for a new key, so the same key
        can be used again once the cause is fixed.
        """
        if self.store.find_operation(key) is not None:
            op, _created = self.store.claim_operation(key, kind, request=request)  # IdempotencyConflict
            if op.done:
                return op
            if check is not None:
                check()  # an interrupted try: the request must still hold
            return op
        if check is not None:
            check()
        op, _created = self.store.claim_operation(key, kind, request=request)
        return op

    def _check_capacity(self, capacity: Capacity, what: str, replaces: str | None) -> None:
        """Refuse a capacity above the limits (``replaces``: the group whose own desired count it replaces)."""
        groups = map(with_destroying, self.store.list_server_groups(account=self.account))
        others = desired_total(groups, excluding=replaces)
        self.limits.check(capacity, what, account=self.account, others=others)

    def _created_by(self, key: IdempotencyKey) -> str | None:
        """The server group an interrupted create with ``key`` made already (it must not count twice)."""
        op = self.store.find_operation(key)
        return None if op is None else op.result.get("server_group")

    def _live_group(self, region: str, name: str, action: str) -> ServerGroup:
        group = self.get_server_group(name, region=region)
        if is_destroying(group):
            raise InvalidRequest(f"cannot {action} {name}: it is being destroyed", hint="deploy a new server group")
        return group

    def _update(self, op: Operation, message: str) -> Operation:
        if op.message == message:
            return op
        try:
            return self.store.update_operation(op.id, message=message)
        except InvalidRequest:  # a concurrent poll finished it
            return self.store.get_operation(op.id)

    def _finish(
        self, op: Operation, status: OperationStatus, message: str, result: Mapping[str, Any] | None = None
    ) -> Operation:
        try:
            return self.store.update_operation(op.id, status=status, message=message, result=result)
        except InvalidRequest:  # a concurrent retry finished it first
            return self.store.get_operation(op.id)

    def _run_group(self, region: str, name: str) -> None:
        """Make sure the group's supervisor (and its load balancers' proxies) run; none for a destroyed group."""
        try:
            group = self.store.get_server_group(self.account, region, name)
        except NotFound:
            return
        if is_destroying(group):
            return  # its supervisor stops the instances and exits; _destroy_progress finishes without one
        local_supervisor.ensure_running(self.store, self.home, self.account, region, name)
        for lb in self._load_balancers_of(group):
            try:
                local_proxy.ensure_running(self.store, self.home, lb.account, lb.region, lb.name)
            except CloudError as error:  # the group runs anyway; upsert_load_balancer reports this
                log.warning("load balancer %s of %s is not running: %s", lb.name, name, error)

    def _load_balancers_of(self, group: ServerGroup) -> list[LoadBalancer]:
        """The load balancers that serve the group: named by it, or serving its cluster."""
        return [
            lb
            for lb in self.store.list_load_balancers(account=group.account, region=group.region)
            if local_proxy.serves(lb, group)
        ]

    def _guard(self, group: ServerGroup, action: str) -> None:
        """Refuse ``action`` if ``group`` is the last enabled group with an Up instance of a guarded cluster."""
        cluster = parse_server_group_name(group.name).cluster
        if cluster not in self.guarded_clusters or not group.enabled:
            return
        groups = self.store.list_server_groups(account=self.account, region=group.region, cluster=cluster)
        others = [
            g.name
            for g in map(self.observe, groups)  # a silent supervisor's Up rows do not count
            if g.name != group.name
            and g.enabled
            and not is_destroying(g)
            and any(i.health is Health.UP for i in g.instances)
        ]
        if not others:
            raise TrafficGuardViolation(
                f"{action} would leave the guarded cluster {cluster} without an enabled server group with an Up "
                "instance",
                hint=f"deploy or enable another server group of {cluster} and wait until it is Up first, or remove "
                f"{cluster} from the account's traffic_guards",
            )


__all__ = ["DESTROYING_TAG", "LocalProviderBase", "is_destroying", "with_destroying"]
