"""Capacity limits: how many instances one server group, and one account, may ask for.

A typo (``desired: 1000000000``), a runaway ``scalePercent`` or a rollback that grows a
group must end in a clear error, never in a provider starting processes until the machine
gives out. Every provider exposes its :class:`Limits` (``CloudProvider.limits``); stages
check a capacity against them before they call the provider, and the local provider
checks again itself (the Clusters page and any other caller go through it).

The local provider's limits come from, in order: the ``gennaker_local`` connection's
extra (``max_server_group_capacity``, ``max_account_instances``), the environment
(``GENNAKER_LOCAL_MAX_SERVER_GROUP_CAPACITY``, ``GENNAKER_LOCAL_MAX_ACCOUNT_INSTANCES``),
else :data:`LOCAL_MAX_SERVER_GROUP_CAPACITY` and :data:`LOCAL_MAX_ACCOUNT_INSTANCES`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gennaker.cloud.model import Capacity, ServerGroup
from gennaker.errors import (
    CapacityLimitExceeded,
    InvalidRequest,
)

SANE_MAX_CAPACITY = 10_000
"""No server group of any provider may ask for more (a spec's ``capacity.max`` above it is a spec error)."""
LOCAL_MAX_SERVER_GROUP_CAPACITY = 20
"""The local provider's default limit per server group (each instance is a process on this machine)."""
LOCAL_MAX_ACCOUNT_INSTANCES = 100
"""The local provider's default limit on the desired instances of all of an account's server groups."""

GROUP_SETTING = "max_server_group_capacity"
ACCOUNT_SETTING = "max_account_instances"
ENV_PREFIX = "GENNAKER_LOCAL_"


@dataclass(frozen=True)
class Limits:
    """A provider account's capacity limits; ``None`` is no limit of that kind.

    ``how_to_raise`` says where a limit is configured, for error hints: ``{setting}``
    in it becomes the setting's name, ``{SETTING}`` the same in upper case.
    """

    max_server_group_capacity: int | None = SANE_MAX_CAPACITY
    max_account_instances: int | None = None
    how_to_raise: str = "the provider account's quota ({setting})"

    def _where(self, setting: str) -> str:
        return self.how_to_raise.format(setting=setting, SETTING=setting.upper())

    def check_group(self, capacity: Capacity, name: str) -> None:
        """Refuse a server group capacity whose max (and so desired) exceeds the per-group limit."""
        limit = self.max_server_group_capacity
        largest = max(capacity.max, capacity.desired)
        if limit is not None and largest > limit:
            raise CapacityLimitExceeded(
                f"{name}: capacity max {capacity.max}, desired {capacity.desired} exceeds the limit of {limit} "
                f"instances per server group ({GROUP_SETTING})",
                hint=f"ask for at most {limit}, or raise the limit in {self._where(GROUP_SETTING)}",
            )

    def check_account(self, account: str, others: int, desired: int, name: str) -> None:
        """Refuse ``desired`` more instances when the account's other groups already ask for ``others``."""
        limit = self.max_account_instances
        if limit is not None and others + desired > limit:
            raise CapacityLimitExceeded(
                f"{name}: {desired} desired instance(s) would bring account {account} to {others + desired}, above "
                f"its limit of {limit} instances across its server groups ({ACCOUNT_SETTING})",
                hint=f"destroy or shrink other server groups of {account}, or raise the limit in "
                f"{self._where(ACCOUNT_SETTING)}",
            )

    def check(self, capacity: Capacity, name: str, *, account: str = "", others: int = 0) -> None:
        """Both checks: the group's own limit, then the account's total with ``others``."""
        self.check_group(capacity, name)
        self.check_account(account, others, capacity.desired, name)


def desired_total(groups: Iterable[ServerGroup], *, excluding: str | None = None) -> int:
    """The desired instances of ``groups`` (but ``excluding``), leaving out groups being destroyed."""
    return sum(g.capacity.desired for g in groups if g.name != excluding and not g.destroying)


def local_limits(extra: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Limits:
    """The local provider's limits from a connection's extra, else the environment, else the defaults."""
    env = os.environ if environ is None else environ
    extra = extra or {}
    how = "the gennaker_local connection's extra ({setting}) or the environment (" + ENV_PREFIX + "{SETTING})"
    return Limits(
        max_server_group_capacity=_setting(
            GROUP_SETTING, extra, env, LOCAL_MAX_SERVER_GROUP_CAPACITY, ceiling=SANE_MAX_CAPACITY
        ),
        max_account_instances=_setting(ACCOUNT_SETTING, extra, env, LOCAL_MAX_ACCOUNT_INSTANCES),
        how_to_raise=how,
    )


def _setting(name: str, extra: Mapping[str, Any], env: Mapping[str, str], default: int, *, ceiling: int = 0) -> int:
    """A positive whole number from the extra (``name``) or the environment (``GENNAKER_LOCAL_<NAME>``)."""
    env_name = f"{ENV_PREFIX}{name.upper()}"
    value: Any = extra.get(name)
    source = f"the connection's extra {name}"
    if value is None or value == "":
        value, source = env.get(env_name), env_name
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InvalidRequest(f"{source} must be a whole number of instances, not {value!r}") from None
    if number < 1 or (ceiling and number > ceiling):
        upper = f" and at most {ceiling}" if ceiling else ""
        raise InvalidRequest(f"{source} must be at least 1{upper}, not {number}")
    return number


__all__ = [
    "ACCOUNT_SETTING",
    "GROUP_SETTING",
    "LOCAL_MAX_ACCOUNT_INSTANCES",
    "LOCAL_MAX_SERVER_GROUP_CAPACITY",
    "SANE_MAX_CAPACITY",
    "CapacityLimitExceeded",
    "Limits",
    "desired_total",
    "local_limits",
]
