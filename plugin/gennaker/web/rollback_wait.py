"""The part of a Clusters page rollback that waits: the restored group healthy, then the newer ones disabled.

It runs in the request while the restored group is healthy already, else in a background
thread of the API server worker (:meth:`gennaker.web.actions.ActionRunner._background`),
as the rollback stage's deferred trigger would; every end goes into the audit trail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gennaker.cloud.model import Operation
from gennaker.cloud.provider import CloudProvider, IdempotencyKey
from gennaker.errors import CloudError
from gennaker.strategies.rollback import RollbackPlan, finish_rollback
from gennaker.web import models as m
from gennaker.web.actions import refresh, status_for

if TYPE_CHECKING:
    from gennaker.web.actions import ActionRunner

log = logging.getLogger(__name__)


class RollbackWait:
    """The part of a rollback that waits: the restored group healthy, then the newer ones disabled."""

    def __init__(
        self,
        runner: ActionRunner,
        provider: CloudProvider,
        entry: m.AuditEntry,
        plan: RollbackPlan,
        region: str,
        request: m.RollbackRequest,
        key: Callable[[str], IdempotencyKey],
    ) -> None:
        self.runner = runner
        self.provider = provider
        self.entry = entry
        self.plan = plan
        self.region = region
        self.request = request
        self.key = key
        self.operations: list[Operation] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.request.timeout_seconds
        try:
            while not self.step(self.operations, deadline):
                time.sleep(self.runner.poll_interval)
        except Exception as error:  # a bug or a lost database: say so in the audit trail, not only in the log
            log.exception("rollback %s failed", self.entry.id)
            self._stop(f"rollback stopped: {error}")

    def step(self, operations: list[Operation], deadline: float, *, first: bool = False) -> bool:
        """One look at the restored group; True once the rollback has ended (one way or another)."""
        from gennaker.triggers.server_group import measure_health

        plan, restore = self.plan, self.plan.restore
        try:
            self.operations = refresh(self.provider, operations)
            failed = [op for op in self.operations if op.done and not op.succeeded]
            if failed:
                self._stop("; ".join(f"{op.kind} failed: {op.message}" for op in failed))
                return True
            pending = [op for op in self.operations if not op.done]
            instances = self.provider.instances(restore.name, region=restore.region)
        except CloudError as error:
            if first:
                return False
            log.warning("rollback %s: checking %s failed: %s", self.entry.id, restore.name, error)
            return time.monotonic() >= deadline and self._stop(f"checking {restore.name} failed: {error}")
        health = measure_health(
            restore.name,
            instances,
            plan.capacity.desired,
            self.request.target_healthy_percentage,
            pending[0] if pending else None,
        )
        if not health.healthy:
            if time.monotonic() >= deadline:
                return self._stop(health.message)
            return False
        self._finish(health.message)
        return True

    def _stop(self, why: str) -> bool:
        still = ", ".join(self.plan.newer) or "the newer server groups"
        self.runner.finish(
            self.entry.id,
            status="FAILED",
            message=f"rollback stopped, nothing was disabled ({still} still take traffic; {self.plan.restore.name} "
            f"is enabled but not healthy): {why}",
        )
        self.runner.changed(self.entry.account)
        return True

    def _finish(self, healthy: str) -> None:
        plan = self.plan
        try:
            disables = finish_rollback(self.provider, plan.restore.name, plan.newer, self.region, self.key)
        except CloudError as error:
            self.runner.finish(
                self.entry.id,
                status="FAILED" if status_for(error) >= 500 else "REFUSED",
                http_status=status_for(error),
                message=f"{healthy}; but disabling the newer groups was refused: {error}",
            )
            self.runner.changed(self.entry.account)
            return
        ids = [op.id for op in self.operations] + [op.id for op in disables]
        self.runner.finish(self.entry.id, operation_ids=ids, message=f"{healthy}; disabling {', '.join(plan.newer)}")
        done = f"rolled back {plan.restore.cluster} from {plan.newest.name} to {plan.restore.name}"
        everything = [*self.operations, *disables]
        if all(op.done for op in everything):
            self.runner.conclude(self.entry.id, self.entry.account, everything, done)
        else:
            self.runner.follow(self.provider, self.entry.id, self.entry.account, everything, done)


__all__ = ["RollbackWait"]
