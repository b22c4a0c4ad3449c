"""``deploy``, ``promote`` and the automatic rollback of ``rollback.onFailure``.

=====================  ======================================================================
stage                  what it does
=====================  ======================================================================
deploy                 create the cluster's next server group from an image, wait until it
                       is healthy, then carry out the strategy (:mod:`gennaker.strategies`):
                       redblack, highlander, rollingRedBlack or none; ``traffic: false``
                       stops after the health wait (deployed dark, out of service)
promote                make a dark-deployed (or canaried) group the live one: enable it,
                       wait until healthy, disable the older groups (maxRemaining and
                       scale-down as redblack)
<stage>.rollback_on_   added by the factory after a deploy or promote with
failure (teardown)     ``rollback.onFailure: true``: when that stage or any stage after it
                       failed, the previous server group takes the traffic back (grown to
                       the new one's size if it was scaled down) and the new one is disabled
                       or destroyed (``rollback.action``)
=====================  ======================================================================

**One at a time per cluster.** Each of them holds the cluster's lock
(:mod:`gennaker.cloud.locks`) from its first change to its last; another deploy, promote
or rollback of the same cluster, from any pipeline, waits for it (deferred) and its log
says for whom.

**Phases.** The work is a sequence of phases kept in the stage's result (``phase``).
Every wait (instances healthy, operations, delays, pauses, the lock) first polls in the
worker for a few seconds (:func:`~gennaker.operators.server_group.inline_wait_seconds`)
and is otherwise deferred to the triggerer; the resumed task carries on at the phase it
stopped at. A retried or restarted task starts again from the top and every cloud call
repeats with the same idempotency key, so it finds the server group its first try made
and the changes it already did, instead of making them again.

**Failure before the switch.** Until the older groups are disabled, a failure (health
never reached, a call refused) rolls the deploy back if the strategy's
``rollbackOnFailure`` holds (the default): the new group is disabled (or destroyed, per
``rollback.action``) and the load balancers' weights are cleared, so the older groups
carry all traffic as before. The stage then fails saying so.

Outputs (XCom ``return_value``; ``stages.<id>.serverGroup`` in expressions):
``serverGroup``, ``previousServerGroup`` (the newest group that was enabled before, or
None), ``previous`` (every group enabled before), ``cluster``, ``account``, ``region``,
``imageId``, ``capacity``, ``strategy``, ``traffic``, ``disabled``, ``destroyed``,
``scaledDown``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.exceptions import TaskDeferred

from gennaker.operators.base import utc_in
from gennaker.operators.server_group import (
    CloudStageFailed,
    CloudStageOperator,
    ServerGroupNotFound,
    inline_wait_seconds,
)
from gennaker.strategies import Older, Policy, plan_cleanup, rolling_weights
from gennaker.web.links import ServerGroupLink

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


def _plural(n: int, word: str) -> str:
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

    # ------------------------------------------------------------------ shared phases: switch and clean up

    def phase_enable(self, context: Any, result: dict[str, Any]) -> None:
        name = result["serverGroup"]
        with self.cloud_call(f"enable {name}"):
            op = self.get_provider().enable_server_group(name, self.key(context, "enable"), region=result["region"])
        others = [n for n in self.enabled_older(result) if n != name]
        also = f" alongside {', '.join(others)}" if others else ""
        self.log.info("enabled %s: it takes traffic%s", name, also)
        self.goto(result, "enabled_healthy")
        self.wait_ops(context, result, [op])

    def phase_enabled_healthy(self, context: Any, result: dict[str, Any]) -> None:
        group = self.group(result["serverGroup"], result["region"])
        self.goto(result, "delay_disable")
        self.wait_health(context, result, group, [])

    def phase_delay_disable(self, context: Any, result: dict[str, Any]) -> None:
        self.goto(result, "disable")
        seconds = float(self.policy.delay_before_disable.total_seconds())
        self.delay(context, result, seconds, "before disabling the older server groups (delayBeforeDisable)")

    def enabled_older(self, result: Mapping[str, Any]) -> list[str]:
        return [g.name for g in self.older(result) if g.enabled]

    def older(self, result: Mapping[str, Any]) -> list[ServerGroup]:
        """The cluster's groups other than the new one that are older than it (oldest first)."""
        groups = self.groups(result["region"])
        names = [g.name for g in groups]
        new = result["serverGroup"]
        if new in names:
            return groups[: names.index(new)]
        return groups

    def phase_disable(self, context: Any, result: dict[str, Any]) -> None:
        new = result["serverGroup"]
        older = [g for g in self.groups(result["region"]) if g.name != new]
        plan = plan_cleanup(self.policy, [Older(g.name, g.enabled, g.capacity.desired) for g in older])
        result["cleanup"] = {"destroy": list(plan.destroy), "scaleDown": list(plan.scale_down)}
        provider = self.get_provider()
        ops = []
        for name in plan.disable:
            with self.cloud_call(f"disable {name}"):
                ops.append(
                    provider.disable_server_group(name, self.key(context, f"disable-{name}"), region=result["region"])
                )
        still = [g.name for g in older if g.enabled and g.name not in plan.disable]
        for name in plan.disable:
            serving = [new, *still]
            share = "100% " if len(serving) == 1 else ""
            self.log.info("disabled %s (traffic now %son %s)", name, share, ", ".join(serving))
        if not plan.disable:
            self.log.info("no older server group was enabled: traffic is on %s", new)
        result["disabled"] = list(plan.disable)
        result["switched"] = True
        self.goto(result, "after_disable")
        self.wait_ops(context, result, ops)

    def phase_after_disable(self, context: Any, result: dict[str, Any]) -> None:
        if result.get("weighted"):
            group = self.group(result["serverGroup"], result["region"])
            ops = self.set_weights(context, group, None, "weights-clear")
            result.pop("weighted", None)
            self.log.info("cleared the load balancers' weights: %s takes all the traffic", group.name)
            self.goto(result, "destroy_older")
            self.wait_ops(context, result, ops)
            return
        self.goto(result, "destroy_older")

    def phase_destroy_older(self, context: Any, result: dict[str, Any]) -> None:
        names = list((result.get("cleanup") or {}).get("destroy") or [])
        provider = self.get_provider()
        ops = []
        for name in names:
            with self.cloud_call(f"destroy {name}"):
                ops.append(
                    provider.destroy_server_group(name, self.key(context, f"destroy-{name}"), region=result["region"])
                )
            self.log.info("destroying %s (%s)", name, self.why_destroy())
        result["destroyed"] = names
        self.goto(result, "delay_scale_down")
        self.wait_ops(context, result, ops)

    def why_destroy(self) -> str:
        if self.policy.kind == "highlander":
            return "highlander: only the new server group remains"
        return f"maxRemaining {self.policy.max_remaining}: older groups beyond that are destroyed"

    def phase_delay_scale_down(self, context: Any, result: dict[str, Any]) -> None:
        self.goto(result, "scale_down")
        if (result.get("cleanup") or {}).get("scaleDown"):
            seconds = float(self.policy.delay_before_scale_down.total_seconds())
            self.delay(context, result, seconds, "before scaling the disabled groups down (delayBeforeScaleDown)")

    def phase_scale_down(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.cloud.model import Capacity

        names = list((result.get("cleanup") or {}).get("scaleDown") or [])
        provider = self.get_provider()
        ops = []
        for name in names:
            group = self.group(name, result["region"])
            if group.enabled:
                self.log.info("not scaling %s down: it is enabled again", name)
                continue
            capacity = Capacity(min=0, max=group.capacity.max, desired=0)
            with self.cloud_call(f"scale {name} down"):
                ops.append(
                    provider.resize_server_group(
                        name, capacity, self.key(context, f"scale-down-{name}"), region=result["region"]
                    )
                )
            self.log.info("scaled %s down to 0 instances (disabled; a rollback scales it back up)", name)
        result["scaledDown"] = names
        self.goto(result, DONE)
        self.wait_ops(context, result, ops)

    @property
    def policy(self) -> Policy:
        return Policy()

    def wait_seconds(self) -> float:
        return float(getattr(self, "health_timeout", None) or super().wait_seconds())

    # ------------------------------------------------------------------ undo

    def undo_new(self, context: Any, result: dict[str, Any], why: str) -> str:
        """Take the new group out of service (or destroy it) and clear weights; what was done, in words."""
        name = result.get("serverGroup")
        if not name:
            return "nothing to roll back (no server group was made)"
        provider = self.get_provider()
        region = result["region"]
        done = []
        if result.get("weighted"):
            try:
                group = self.group(name, region)
                self.set_weights(context, group, None, "rollback-weights")
                done.append("cleared the load balancers' weights")
            except Exception as error:  # keep going: taking the group out matters more
                self.log.error("could not clear the load balancers' weights: %s", error)
        action = self.rollback_action
        try:
            with self.cloud_call(f"{action} {name}"):
                if action == "destroy":
                    provider.destroy_server_group(name, self.key(context, "rollback-destroy"), region=region)
                else:
                    provider.disable_server_group(name, self.key(context, "rollback-disable"), region=region)
            done.append(f"{action}d {name}" if action == "disable" else f"destroying {name}")
        except Exception as error:
            self.log.error("rollback could not %s %s: %s", action, name, error)
            done.append(f"could NOT {action} {name} ({error})")
        serving = [n for n in result.get("previous") or [] if n != name]
        where = f"traffic stays on {', '.join(serving)}" if serving else "no older server group was serving"
        text = f"rolled back ({why}): {'; '.join(done)}; {where}"
        self.log.warning("%s", text)
        context["ti"].xcom_push(key=ROLLED_BACK_KEY, value={"serverGroup": name, "action": action})
        return text


# --------------------------------------------------------------------------- deploy


class DeployOperator(DeliveryOperator):
    """Create the cluster's next server group from an image and carry out the strategy."""

    gennaker_stage_type = "deploy"
    template_fields: Sequence[str] = ("account", "region", "image_name", "environment", "tags")
    operator_extra_links = (ServerGroupLink(),)  # the server group on the Clusters page
    after_lock = "create"

    def __init__(
        self,
        *,
        capacity: Mapping[str, int],
        image_stage: str | None = None,
        image_name: str | None = None,
        load_balancers: Sequence[str] = (),
        firewalls: Sequence[str] = (),
        health_check: Mapping[str, Any] | None = None,
        health_timeout: float | None = None,
        traffic: bool = True,
        strategy: Mapping[str, Any] | None = None,
        environment: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (image_stage is None) == (image_name is None):
            raise ValueError("give exactly one of image_stage or image_name")
        self.capacity = dict(capacity)
        self.image_stage = image_stage
        self.image_name = image_name
        self.load_balancer_names = list(load_balancers)
        self.firewalls = list(firewalls)
        self.health_check = dict(health_check or {})
        self.health_timeout = health_timeout
        self.traffic = traffic
        self.strategy = dict(strategy or {"type": "redblack"})
        self.environment = dict(environment or {})
        self.tags = dict(tags or {})
        Policy.from_spec(self.strategy)  # refuse a bad strategy when the DAG is built, not when it runs

    @property
    def policy(self) -> Policy:
        return Policy.from_spec(self.strategy)

    def resolve_image(self, context: Any, region: str) -> str:
        if self.image_name:
            return str(self.image_name)
        assert self.image_stage is not None
        found = context["ti"].xcom_pull(task_ids=self.image_stage)
        if not isinstance(found, Mapping) or not found.get("imageId"):
            raise CloudStageFailed(
                f"stage {self.stage_id!r}: stage {self.image_stage!r} gave no image (its output has no imageId); "
                f"did it run?"
            )
        per_region = found.get("images") or {}
        return str(per_region.get(region) or found["imageId"])

    def phase_create(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.cloud.model import Capacity, ServerGroupSpec

        region = result["region"]
        image_id = self.resolve_image(context, region)
        before = self.groups(region)
        enabled_before = [g.name for g in before if g.enabled]
        policy = self.policy
        # Out of service until healthy, unless nothing is to move (strategy none with traffic).
        in_service = self.traffic and not policy.switches
        tags = {**self.tags, STRATEGY_TAG: policy.kind}
        if enabled_before:
            tags[PREVIOUS_TAG] = enabled_before[-1]
        spec = ServerGroupSpec(
            application=self.application,
            stack=self.stack,
            detail=self.detail,
            account=self.account,
            region=region,
            image_id=image_id,
            capacity=Capacity(**self.capacity),
            enabled=in_service,
            load_balancers=tuple(self.load_balancer_names),
            firewalls=tuple(self.firewalls),
            health_check=self.health_check,
            environment={str(k): str(v) for k, v in self.environment.items()},
            tags={str(k): str(v) for k, v in tags.items()},
        )
        with self.cloud_call(f"create the next server group of {self.cluster}"):
            provider = self.get_provider()
            provider.limits.check_group(spec.capacity, f"the next server group of {self.cluster}")
            op = provider.create_server_group(spec, self.key(context, "deploy"))
        name = op.result.get("server_group")
        if not name:
            raise CloudStageFailed(f"creating the next server group of {self.cluster} gave no name: {op.message}")
        first_tags = (op.request.get("tags") or {}) if isinstance(op.request, Mapping) else {}
        previous = first_tags.get(PREVIOUS_TAG) if op.request else tags.get(PREVIOUS_TAG)
        result.update(
            serverGroup=name,
            previousServerGroup=previous,
            previous=[n for n in enabled_before if n != name],
            imageId=str((op.request or {}).get("image_id") or image_id),
            capacity=dict(self.capacity),
            strategy=policy.kind,
            traffic=self.traffic,
            disabled=[],
            destroyed=[],
            scaledDown=[],
        )
        self.log.info(
            "creating %s from image %s with %s (%s, %s); %s",
            name,
            result["imageId"],
            _plural(self.capacity["desired"], "instance"),
            f"strategy {policy.kind}",
            "in service once healthy" if self.traffic and policy.switches else ("in service" if in_service else "dark"),
            f"previous: {previous}" if previous else "the first server group of the cluster",
        )
        group = self.group(name, region)
        self.goto(result, "healthy")
        # Kept at once (not only when a wait defers): a rollback.onFailure teardown finds the new group even if
        # this stage fails later without having deferred.
        self._keep(context, {"result": result})
        self.wait_health(context, result, group, [op])

    def phase_healthy(self, context: Any, result: dict[str, Any]) -> None:
        name = result["serverGroup"]
        policy = self.policy
        if not self.traffic:
            self.log.info(
                "deployed %s dark: healthy and out of service; a canary or promote stage takes it from here", name
            )
            self.goto(result, DONE)
        elif not policy.switches:
            self.log.info("deployed %s (strategy none): it serves alongside the older groups", name)
            self.goto(result, DONE)
        elif policy.kind == "rollingRedBlack":
            result["step"] = 0
            self.goto(result, "step")
        else:
            self.goto(result, "enable")

    # ------------------------------------------------------------------ rollingRedBlack

    def phase_step(self, context: Any, result: dict[str, Any]) -> None:
        steps = list(self.policy.target_percentages)
        i = int(result.get("step") or 0)
        percent = steps[i]
        name = result["serverGroup"]
        if percent == 100:
            if result.get("weighted"):
                self.log.info("last step: moving all traffic to %s", name)
                self.goto(result, "delay_disable")
            else:
                self.goto(result, "enable")  # a single step of 100: as redblack
            return
        group = self.group(name, result["region"])
        older = self.enabled_older(result)
        weights = rolling_weights(name, older, percent)
        ops = self.set_weights(context, group, weights, f"weights-{percent}")
        result["weighted"] = True
        if i == 0:
            with self.cloud_call(f"enable {name}"):
                ops.append(
                    self.get_provider().enable_server_group(name, self.key(context, "enable"), region=group.region)
                )
        shares = ", ".join(f"{w}% on {n}" for n, w in weights.items())
        self.log.info("step %d of %d: traffic %s", i + 1, len(steps), shares)
        result["step"] = i + 1
        self.goto(result, "step_healthy")
        self.wait_ops(context, result, ops)

    def phase_step_healthy(self, context: Any, result: dict[str, Any]) -> None:
        group = self.group(result["serverGroup"], result["region"])
        self.goto(result, "step_pause")
        self.wait_health(context, result, group, [])

    def phase_step_pause(self, context: Any, result: dict[str, Any]) -> None:
        self.goto(result, "step")
        seconds = float(self.policy.pause_between.total_seconds())
        self.delay(context, result, seconds, "before the next step (pauseBetween)")

    # ------------------------------------------------------------------ failure

    def on_failure_undo(self, context: Any, result: dict[str, Any], error: BaseException) -> None:
        if result.get("switched") or not result.get("serverGroup"):
            return
        if not self.policy.rollback_on_failure:
            self.log.warning(
                "the deploy failed before the switch and rollbackOnFailure is off: %s stays as it is",
                result["serverGroup"],
            )
            return
        summary = self.undo_new(context, result, f"{type(error).__name__}: {error}")
        error.args = (f"{error}; {summary}", *error.args[1:])


# --------------------------------------------------------------------------- promote


class PromoteOperator(DeliveryOperator):
    """Make a dark-deployed (or canaried) server group the live one."""

    gennaker_stage_type = "promote"
    template_fields: Sequence[str] = ("account", "region", "server_group")
    operator_extra_links = (ServerGroupLink(),)  # the server group on the Clusters page
    after_lock = "promote"

    def __init__(
        self,
        *,
        server_group: str | None = None,
        source_stage: str | None = None,
        max_remaining: int | None = None,
        delay_before_disable: float = 0.0,
        scale_down_old: bool = False,
        delay_before_scale_down: float = 0.0,
        health_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (server_group is None) == (source_stage is None):
            raise ValueError("give exactly one of server_group or source_stage")
        self.server_group = server_group
        self.source_stage = source_stage
        self.health_timeout = health_timeout
        self._policy = Policy(
            kind="redblack",
            max_remaining=max_remaining,
            delay_before_disable=timedelta(seconds=delay_before_disable),
            scale_down_old=scale_down_old,
            delay_before_scale_down=timedelta(seconds=delay_before_scale_down),
        )

    @property
    def policy(self) -> Policy:
        return self._policy

    def target(self, context: Any) -> str:
        if self.server_group:
            return str(self.server_group)
        found = context["ti"].xcom_pull(task_ids=self.source_stage)
        name = found.get("serverGroup") if isinstance(found, Mapping) else None
        if not name:
            raise ServerGroupNotFound(
                f"stage {self.stage_id!r}: stage {self.source_stage!r} gave no server group to promote "
                f"(its output has no serverGroup); did it run?"
            )
        return str(name)

    def phase_promote(self, context: Any, result: dict[str, Any]) -> None:
        name = self.target(context)
        group = self.group(name, result["region"])
        if group.cluster != self.cluster:
            raise CloudStageFailed(f"stage {self.stage_id!r}: {name} is not in cluster {self.cluster}")
        before = [g for g in self.groups(result["region"]) if g.name != name]
        enabled_before = [g.name for g in before if g.enabled]
        result.update(
            serverGroup=name,
            previousServerGroup=enabled_before[-1] if enabled_before else None,
            previous=enabled_before,
            imageId=group.image_id,
            capacity=group.capacity.to_dict(),
            strategy="redblack",
            traffic=True,
            disabled=[],
            destroyed=[],
            scaledDown=[],
        )
        now = (
            f"{', '.join(enabled_before)} serve{'s' if len(enabled_before) == 1 else ''} now"
            if enabled_before
            else "nothing serves now"
        )
        self.log.info("promoting %s (%s)", name, now)
        self.goto(result, "enable")

    def on_failure_undo(self, context: Any, result: dict[str, Any], error: BaseException) -> None:
        if result.get("switched") or not result.get("serverGroup"):
            return
        if result.get("phase") in ("lock", "promote"):
            return  # nothing was changed yet
        summary = self.undo_new(context, result, f"{type(error).__name__}: {error}")
        error.args = (f"{error}; {summary}", *error.args[1:])


# --------------------------------------------------------------------------- automatic rollback


class AutoRollbackOperator(DeliveryOperator):
    """A deploy's or promote's ``rollback.onFailure``: a teardown that rolls back if a stage failed."""

    gennaker_stage_type = "rollback"
    after_lock = "restore"
    first_phase = "check"

    def __init__(self, *, source_stage: str, watched_task_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_stage = source_stage
        self.watched_task_ids = list(watched_task_ids)

    def execute(self, context: Any) -> Any:
        # Not gated like a stage: it must run whatever happened before it (when, halts and skips included).
        return self.run_stage(context)

    def phase_check(self, context: Any, result: dict[str, Any]) -> None:
        ti = context["ti"]
        found = ti.get_task_states(dag_id=ti.dag_id, task_ids=self.watched_task_ids, run_ids=[ti.run_id])
        states = found.get(ti.run_id, {}) if isinstance(found, dict) else {}
        failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
        failed = [t for t in failed if states.get(t) == "failed"] or failed
        result["failedStages"] = failed
        if not failed:
            self.log.info("no stage failed: nothing to roll back")
            result["rolledBack"] = False
            self.goto(result, DONE)
            return
        source = ti.xcom_pull(task_ids=self.source_stage) or ti.xcom_pull(
            task_ids=self.source_stage, key="gennaker.pending"
        )
        if not isinstance(source, Mapping) or not source.get("serverGroup"):
            self.log.info(
                "stage(s) %s failed, but stage %r made no server group: nothing to roll back",
                ", ".join(failed),
                self.source_stage,
            )
            result["rolledBack"] = False
            self.goto(result, DONE)
            return
        result["serverGroup"] = source["serverGroup"]
        result["previousServerGroup"] = source.get("previousServerGroup")
        self.log.info(
            "stage(s) %s failed: rolling %s back from %s to %s",
            ", ".join(failed),
            result["cluster"],
            source["serverGroup"],
            source.get("previousServerGroup") or "(no previous server group)",
        )
        self.goto(result, "lock")

    def phase_restore(self, context: Any, result: dict[str, Any]) -> None:
        new_name = result["serverGroup"]
        previous = result.get("previousServerGroup")
        region = result["region"]
        try:
            new = self.group(new_name, region)
        except ServerGroupNotFound:
            self.log.info("%s is gone already: nothing to roll back", new_name)
            result["rolledBack"] = False
            self.goto(result, DONE)
            return
        if not previous:
            self.log.warning(
                "%s was the first server group of %s: there is no previous one to take the traffic back; "
                "leaving it as it is",
                new_name,
                result["cluster"],
            )
            result["rolledBack"] = False
            self.goto(result, DONE)
            return
        try:
            restore = self.group(previous, region)
        except ServerGroupNotFound:
            raise CloudStageFailed(
                f"cannot roll back to {previous}: it no longer exists ({new_name} keeps serving)"
            ) from None
        provider = self.get_provider()
        ops = []
        if restore.capacity.desired < new.capacity.desired:
            from gennaker.cloud.model import Capacity

            wanted = Capacity(
                min=min(restore.capacity.min, new.capacity.desired),
                max=max(restore.capacity.max, new.capacity.desired),
                desired=new.capacity.desired,
            )
            self.log.info("resizing %s back to %s to take the traffic", previous, _plural(wanted.desired, "instance"))
            with self.cloud_call(f"resize {previous} for the rollback"):
                ops.append(
                    provider.resize_server_group(previous, wanted, self.key(context, "restore-resize"), region=region)
                )
        with self.cloud_call(f"enable {previous}"):
            ops.append(provider.enable_server_group(previous, self.key(context, "restore-enable"), region=region))
        self.log.info("enabled %s (rolling back from %s)", previous, new_name)
        self.goto(result, "retire")
        self.wait_health(context, result, restore, ops, desired=max(restore.capacity.desired, new.capacity.desired))

    def phase_retire(self, context: Any, result: dict[str, Any]) -> None:
        new_name = result["serverGroup"]
        region = result["region"]
        provider = self.get_provider()
        ops = []
        try:
            group = self.group(new_name, region)
        except ServerGroupNotFound:
            group = None
        if group is not None:
            ops += self.set_weights(context, group, None, "retire-weights")
            action = self.rollback_action
            with self.cloud_call(f"{action} {new_name}"):
                if action == "destroy":
                    ops.append(
                        provider.destroy_server_group(new_name, self.key(context, "retire-destroy"), region=region)
                    )
                else:
                    ops.append(
                        provider.disable_server_group(new_name, self.key(context, "retire-disable"), region=region)
                    )
            self.log.info(
                "%s %s (traffic now on %s)",
                "destroying" if action == "destroy" else "disabled",
                new_name,
                result.get("previousServerGroup"),
            )
        result["rolledBack"] = True
        self.goto(result, DONE)
        self.wait_ops(context, result, ops)


__all__ = [
    "AutoRollbackOperator",
    "ClusterBusy",
    "DeliveryOperator",
    "DeployOperator",
    "PromoteOperator",
]
