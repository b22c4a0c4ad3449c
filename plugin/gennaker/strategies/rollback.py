"""A rollback as the ``rollback`` stage and the Clusters page do it: the plan, its first calls and its last.

Grow the group to restore to the newest one's size if it is smaller, enable it, wait
until it is healthy (the stage defers, the page waits in a background thread), then
disable the newer enabled groups. Both callers share these functions, so a click does
what the stage does; they take the provider and a key function and import no Airflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gennaker.errors import InvalidRequest
from gennaker.strategies.capacity import capacity_words, count_words

if TYPE_CHECKING:
    from gennaker.cloud.model import Capacity, Operation, ServerGroup
    from gennaker.cloud.provider import CloudProvider, IdempotencyKey

# How long a health wait lasts when nothing sets it (the spec's HealthCheck.waitTimeout default).
DEFAULT_WAIT = timedelta(minutes=10)


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback does: grow ``restore`` to ``capacity`` if need be, enable it, then disable ``newer``."""

    restore: ServerGroup
    newest: ServerGroup
    capacity: Capacity
    newer: tuple[str, ...]
    """The enabled groups newer than ``restore``: disabled once it is healthy."""

    @property
    def grows(self) -> bool:
        """``restore`` is smaller than the newest group and grows to its size first."""
        return self.capacity != self.restore.capacity


def plan_rollback(restore: ServerGroup, groups: Sequence[ServerGroup], target: str) -> RollbackPlan:
    """The rollback to ``restore`` among a cluster's live groups (oldest first); InvalidRequest if it is the newest."""
    newest = groups[-1]
    if restore.name == newest.name:
        raise InvalidRequest(
            f"nothing to roll back to: {restore.name} is the newest server group of {restore.cluster} "
            f"(target {target!r}); roll back to an older one, e.g. target: previous",
            hint="",
        )
    index = next(i for i, g in enumerate(groups) if g.name == restore.name)
    newer = tuple(g.name for g in groups[index + 1 :] if g.enabled)
    capacity = newest.capacity if restore.capacity.desired < newest.capacity.desired else restore.capacity
    return RollbackPlan(restore=restore, newest=newest, capacity=capacity, newer=newer)


CallGuard = Callable[[str], AbstractContextManager[None]]
"""Wraps each provider call, given what it does in words (a stage turns errors into task failures)."""


def _plain(doing: str) -> AbstractContextManager[None]:
    return nullcontext()


def _quiet(message: str, *args: Any) -> None:
    return None


def start_rollback(
    provider: CloudProvider,
    plan: RollbackPlan,
    key: Callable[[str], IdempotencyKey],
    *,
    call: CallGuard = _plain,
    log: Callable[..., None] = _quiet,
) -> list[Operation]:
    """Grow (if need be) and enable the group to restore; its operations. ``key(purpose)`` keys each call."""
    restore = plan.restore
    operations: list[Operation] = []
    if plan.grows:
        with call(f"grow {restore.name} to {count_words(plan.capacity.desired)} for the rollback"):
            provider.limits.check_group(plan.capacity, restore.name)
        log(
            "resizing %s from %s to %s, the size of %s, to take over its traffic",
            restore.name,
            capacity_words(restore.capacity),
            capacity_words(plan.capacity),
            plan.newest.name,
        )
        with call(f"resize {restore.name} for the rollback"):
            operations.append(
                provider.resize_server_group(restore.name, plan.capacity, key("rollback-resize"), region=restore.region)
            )
    with call(f"enable {restore.name} for the rollback"):
        operations.append(provider.enable_server_group(restore.name, key("rollback-enable"), region=restore.region))
    log("enabled %s (rolling back from %s)", restore.name, plan.newest.name)
    return operations


def finish_rollback(
    provider: CloudProvider,
    restore: str,
    newer: Sequence[str],
    region: str,
    key: Callable[[str], IdempotencyKey],
    *,
    call: CallGuard = _plain,
    log: Callable[..., None] = _quiet,
) -> list[Operation]:
    """Once the restored group is healthy: disable the newer groups (traffic guards apply); their operations."""
    operations: list[Operation] = []
    for name in newer:
        with call(f"disable {name} after rolling back to {restore}"):
            operations.append(provider.disable_server_group(name, key(f"rollback-disable-{name}"), region=region))
        log("disabled %s (traffic now on %s)", name, restore)
    if not newer:
        log("no newer server group was enabled: traffic is on %s", restore)
    return operations


__all__ = ["DEFAULT_WAIT", "CallGuard", "RollbackPlan", "finish_rollback", "plan_rollback", "start_rollback"]
