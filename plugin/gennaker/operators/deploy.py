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
worker for a few seconds (:func:`~gennaker.operators.base.inline_wait_seconds`)
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

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from gennaker.links import ServerGroupLink
from gennaker.operators.auto_rollback import AutoRollbackOperator
from gennaker.operators.base import CloudStageFailed, ServerGroupNotFound
from gennaker.operators.delivery import (
    DONE,
    PREVIOUS_TAG,
    ROLLED_BACK_KEY,
    STRATEGY_TAG,
    ClusterBusy,
    DeliveryOperator,
    plural,
)
from gennaker.operators.deploy_steps import StrategyStepsOperator
from gennaker.strategies import Policy

# --------------------------------------------------------------------------- deploy


class DeployOperator(StrategyStepsOperator):
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
            plural(self.capacity["desired"], "instance"),
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


class PromoteOperator(StrategyStepsOperator):
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


__all__ = [
    "DONE",
    "PREVIOUS_TAG",
    "ROLLED_BACK_KEY",
    "STRATEGY_TAG",
    "AutoRollbackOperator",
    "ClusterBusy",
    "DeliveryOperator",
    "DeployOperator",
    "PromoteOperator",
]
