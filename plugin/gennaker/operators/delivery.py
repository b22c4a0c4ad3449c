"""The phase engine that deploy, promote, the automatic rollback and the canary share, and the cluster lock.

**One at a time per cluster.** A delivery stage holds the cluster's lock
(:mod:`gennaker.cloud.locks`) from its first change to its last; another deploy, promote
or rollback of the same cluster, from any pipeline, waits for it (deferred) and its log
says for whom.

**Phases.** The work is a sequence of phases kept in the stage's result (``phase``); the
handler of phase ``x`` is the method ``phase_x``. Every wait (instances healthy,
operations, delays, pauses, the lock) first polls in the worker for a few seconds
(:func:`~gennaker.operators.base.inline_wait_seconds`) and is otherwise deferred to the
triggerer; the resumed task carries on at the phase it stopped at. A retried or
restarted task starts again from the top and every cloud call repeats with the same
idempotency key, so it finds the server group its first try made and the changes it
already did, instead of making them again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.exceptions import TaskDeferred

from gennaker.operators.base import CloudStageFailed, CloudStageOperator, inline_wait_seconds, utc_in

if TYPE_CHECKING:
    from gennaker.cloud.model import LoadBalancer, Operation, ServerGroup

PREVIOUS_TAG = "gennaker:previous"
STRATEGY_TAG = "gennaker:strategy"
ROLLED_BACK_KEY = "gennaker.rolled_back"
DONE = "done"

# Keys of a result that only steer the phases; the stage's output leaves them out.
_INTERNAL = ("phase", "waiting", "step", "switched", "weighted", "lockOwner")


class ClusterBusy(CloudStageFailed):
    """The cluster stayed locked by another run longer than the stage may wait."""


def plural(n: int, word: str) -> str:
    """``1 instance``, ``2 instances``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


class DeliveryOperator(CloudStageOperator):
    """The phase engine that deploy, promote and the automatic rollback share, and the cluster lock."""

    template_fields: Sequence[str] = ("account", "region")
    first_phase: ClassVar[str] = "lock"
    after_lock: ClassVar[str] = ""

    def __init__(
        self,
        *,
        application: str,
        stack: str = "",
        detail: str = "",
        rollback_action: str = "disable",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.application = application
        self.stack = stack
        self.detail = detail
        self.rollback_action = rollback_action

    # ------------------------------------------------------------------ names

    @property
    def cluster(self) -> str:
        from gennaker.cloud.naming import cluster_name

        return cluster_name(self.application, self.stack, self.detail)

    def lock_owner(self, context: Any) -> str:
        """The lock owner: this task of this run (a retry is the same owner)."""
        ti = context["ti"]
        index = getattr(ti, "map_index", -1)
        return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}" + (f"/{index}" if index is not None and index >= 0 else "")

    def lock_resource(self, region: str) -> str:
        from gennaker.cloud.locks import cluster_resource

        return cluster_resource(self.account, region, self.cluster)

    # ------------------------------------------------------------------ the engine

    def run_stage(self, context: Any) -> Any:
        provider = self.get_provider()
        result: dict[str, Any] = {
            "phase": self.first_phase,
            "cluster": self.cluster,
            "account": self.account,
            "region": self.region or provider.region,
        }
        return self.drive(context, result)

    def resume(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        """Where every deferral of these stages comes back."""
        result = self.pending(context, result)
        waiting = result.pop("waiting", None)
        if event is not None and not isinstance(event, Mapping):
            event = {"status": "fired"}  # a DateTimeTrigger's event (a "delay") is the moment it fired
        return self.drive(context, result, (waiting, dict(event)) if event is not None else None)

    def on_event(self, context: Any, result: dict[str, Any], waiting: str | None, event: dict[str, Any]) -> None:
        status = event.get("status")
        if waiting == "lock":
            if status != "free":
                raise ClusterBusy(f"gave up waiting for the lock of {result['cluster']}: {event.get('message')}")
            return
        if waiting == "health":
            self.check_event(event, f"{event.get('server_group') or result.get('serverGroup')} is not healthy")
        elif waiting == "operations":
            self.check_event(event, "a cloud operation did not finish")
        # "delay": a DateTimeTrigger's event carries nothing to check

    def drive(
        self, context: Any, result: dict[str, Any], event: tuple[str | None, dict[str, Any]] | None = None
    ) -> Any:
        """Run phases until the stage is done or defers; on failure undo what needs undoing and free the lock.

        ``event``: what the wait that deferred was for, and the trigger's event (checked first).
        """
        try:
            if event is not None:
                self.on_event(context, result, *event)
            while result["phase"] != DONE:
                phase = result["phase"]
                handler = getattr(self, f"phase_{phase}", None)
                if handler is None:
                    raise CloudStageFailed(f"stage {self.stage_id!r}: unknown phase {phase!r} (a newer gennaker?)")
                handler(context, result)
            self.release(context, result)
            return self.stage_output(result)
        except TaskDeferred:
            raise
        except BaseException as error:
            try:
                self.on_failure_undo(context, result, error)
            finally:
                self.release(context, result)
            raise

    def goto(self, result: dict[str, Any], phase: str) -> None:
        result["phase"] = phase

    def stage_output(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in result.items() if k not in _INTERNAL}

    def on_failure_undo(self, context: Any, result: dict[str, Any], error: BaseException) -> None:
        """What a failure leaves to clean up (the deploy rolls back before the switch)."""

    # ------------------------------------------------------------------ waits

    def wait_health(
        self,
        context: Any,
        result: dict[str, Any],
        group: ServerGroup,
        ops: Sequence[Operation],
        desired: int | None = None,
    ) -> None:
        result["waiting"] = "health"
        self.wait_healthy(
            context,
            group,
            desired=group.capacity.desired if desired is None else desired,
            percent=100,
            operations=ops,
            method_name="resume",
            kwargs={"result": result},
        )
        result.pop("waiting", None)

    def wait_ops(self, context: Any, result: dict[str, Any], ops: Sequence[Operation]) -> None:
        if not ops:
            return
        result["waiting"] = "operations"
        self.wait_operations(context, ops, result["region"], method_name="resume", kwargs={"result": result})
        result.pop("waiting", None)

    def delay(self, context: Any, result: dict[str, Any], seconds: float, why: str) -> None:
        """Wait ``seconds`` (in the worker if short, else deferred); ``result['phase']`` is where to go on."""
        if seconds <= 0:
            return
        if seconds <= inline_wait_seconds():
            self.log.info("waiting %gs %s", seconds, why)
            time.sleep(seconds)
            return
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        moment = max(utc_in(timedelta(seconds=seconds)), self._not_before())
        self.log.info("waiting %gs %s (in the triggerer, no worker slot held)", seconds, why)
        result["waiting"] = "delay"
        self._keep(context, {"result": result})
        self.defer(trigger=DateTimeTrigger(moment=moment), method_name="resume", kwargs={"result": result})

    # ------------------------------------------------------------------ the lock

    def lease(self) -> timedelta:
        from gennaker.cloud.locks import DEFAULT_LEASE

        return self.execution_timeout or DEFAULT_LEASE

    def phase_lock(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.cloud.locks import ClusterLocks

        resource = self.lock_resource(result["region"])
        owner = self.lock_owner(context)
        locks = ClusterLocks()
        note = f"{self.gennaker_stage_type or 'stage'} stage"
        holder = locks.acquire(resource, owner, note=note, lease=self.lease())
        if holder is not None and self.finished_in_this_run(context, holder.owner):
            # A stage of this very run that ended without releasing (its process was killed): it is not coming back.
            self.log.warning("taking over the lock of %s from %s, which has ended", result["cluster"], holder.owner)
            locks.release(resource, holder.owner)
            holder = locks.acquire(resource, owner, note=note, lease=self.lease())
        if holder is None:
            result["lockOwner"] = owner
            self.log.info("holding the lock of cluster %s", result["cluster"])
            self.goto(result, self.after_lock)
            return
        self.log.info(
            "cluster %s is busy: waiting for %s to finish (another deploy, promote or rollback of it)",
            result["cluster"],
            holder.describe(),
        )
        from gennaker.triggers.locks import ClusterLockFreeTrigger

        result["waiting"] = "lock"
        self._keep(context, {"result": result})
        self.defer(
            trigger=ClusterLockFreeTrigger(
                resource=resource,
                owner=owner,
                path=str(locks.path),
                poll_interval=1.0,
                timeout=self.lease().total_seconds(),
                not_before=self._not_before(),
            ),
            method_name="resume",
            kwargs={"result": result},
        )

    def finished_in_this_run(self, context: Any, owner: str) -> bool:
        """Whether a lock owner is a task of this DAG run that has ended (and will not retry)."""
        ti = context["ti"]
        prefix = f"{ti.dag_id}/{ti.run_id}/"
        if not owner.startswith(prefix):
            return False
        task_id = owner[len(prefix) :].split("/", 1)[0]
        found = ti.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id])
        state = (found.get(ti.run_id, {}) if isinstance(found, dict) else {}).get(task_id)
        return state in ("success", "failed", "upstream_failed", "skipped", "removed")

    def release(self, context: Any, result: Mapping[str, Any]) -> None:
        owner = result.get("lockOwner")
        if not owner:
            return
        from gennaker.cloud.locks import ClusterLocks

        if ClusterLocks().release(self.lock_resource(result["region"]), str(owner)):
            self.log.info("released the lock of cluster %s", result["cluster"])

    # ------------------------------------------------------------------ cluster reads

    def groups(self, region: str) -> list[ServerGroup]:
        """The cluster's server groups, oldest first (those being destroyed left out)."""
        provider = self.get_provider()
        with self.cloud_call(f"list the server groups of {self.cluster}"):
            found = provider.list_server_groups(self.application, cluster=self.cluster, region=region)
        live = [g for g in found if g.cluster == self.cluster and not g.destroying]
        return sorted(live, key=lambda g: g.created)

    def group(self, name: str, region: str) -> ServerGroup:
        with self.cloud_call(f"find server group {name}"):
            return self.get_provider().get_server_group(name, region=region)

    def load_balancers(self, group: ServerGroup) -> list[LoadBalancer]:
        """The load balancers that send the group traffic: named by it, or serving its cluster."""
        provider = self.get_provider()
        with self.cloud_call(f"list the load balancers of {group.name}"):
            found = provider.list_load_balancers(application=None, region=group.region)
        return [lb for lb in found if lb.name in group.load_balancers or group.cluster in lb.clusters]

    def set_weights(
        self, context: Any, group: ServerGroup, weights: Mapping[str, int] | None, purpose: str
    ) -> list[Operation]:
        """Give the group's load balancers these weights for the cluster's groups (None: clear them)."""
        provider = self.get_provider()
        cluster_groups = {g.name for g in self.groups(group.region)} | {group.name}
        ops = []
        for lb in self.load_balancers(group):
            kept = {k: v for k, v in lb.weights.items() if k not in cluster_groups}
            new = {**kept, **dict(weights or {})}
            if new == lb.weights:
                continue
            with self.cloud_call(f"set the weights of load balancer {lb.name}"):
                ops.append(
                    provider.upsert_load_balancer(lb.replace(weights=new), self.key(context, f"{purpose}-{lb.name}"))
                )
        return ops

    def wait_seconds(self) -> float:
        return float(getattr(self, "health_timeout", None) or super().wait_seconds())


__all__ = ["DONE", "PREVIOUS_TAG", "ROLLED_BACK_KEY", "STRATEGY_TAG", "ClusterBusy", "DeliveryOperator"]
