"""Stages that act on a cluster's server groups, and ``findImage``.

=====================  ======================================================================
stage                  what it does
=====================  ======================================================================
enableServerGroup      put the target in service, wait (deferred) until its instances are Up
disableServerGroup     take the target out of service (its instances keep running)
resizeServerGroup      set its capacity, or scale it by a number or a percentage; wait until
                       the new size is reached and healthy
destroyServerGroup     disable and delete it and its instances; wait until it is gone
rollback               re-enable an older server group (``previous`` by default), grow it to
                       the current one's size if it is smaller, wait until healthy, then
                       disable the newer enabled ones
findImage              the newest (or oldest) image of a package with the given tags
=====================  ======================================================================

The target is a server group name, or ``newest`` / ``previous`` / ``oldest`` of the
cluster ``<application>-<stack>-<detail>`` by creation time (groups being destroyed do not
count). The application defaults to the pipeline's.

Every mutating call carries an :class:`~gennaker.cloud.provider.IdempotencyKey` of the
task and a purpose, so a retried task finds what its first try did and carries on instead
of acting twice. Waits for health or for slow operations are deferred to the triggerer
(no worker slot is held); a stage that finds the goal already reached does not defer.

Failures that a retry cannot fix (a traffic guard, a server group or image that does not
exist, a request the cloud refuses) fail the task at once (``AirflowFailException``
subclasses); only an unreachable cloud and a health wait that ran out of time may retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gennaker.errors import InvalidRequest

# The bases and the decisions shared with the Clusters page live in base and gennaker.strategies; their names
# are kept here too, where stages and tests have always imported them from.
from gennaker.operators.base import (
    DEFAULT_WAIT,
    PENDING_KEY,
    CloudStageFailed,
    CloudStageOperator,
    ClusterStageOperator,
    ImageNotFound,
    ServerGroupNotFound,
    ServerGroupUnhealthy,
    TrafficGuardBlocked,
    inline_wait_seconds,
)
from gennaker.strategies.capacity import capacity_words as _capacity_words
from gennaker.strategies.capacity import count_words as _count
from gennaker.strategies.capacity import new_capacity
from gennaker.strategies.rollback import RollbackPlan, finish_rollback, plan_rollback, start_rollback
from gennaker.strategies.targets import DYNAMIC_TARGETS, NEWEST, OLDEST, PREVIOUS, live_groups, pick_target
from gennaker.strategies.targets import serving as _serving


def _traffic_words(serving: Sequence[str], cluster: str) -> str:
    if serving:
        return f"traffic now on {', '.join(serving)}"
    return f"no server group of {cluster} is enabled now: the cluster takes no traffic"


# --------------------------------------------------------------------------- enable / disable


class EnableServerGroupOperator(ClusterStageOperator):
    """Put a server group in service and wait until its instances are Up."""

    gennaker_stage_type = "enableServerGroup"

    def run_stage(self, context: Any) -> Any:
        group, groups = self.resolve()
        provider = self.get_provider()
        with self.cloud_call(f"enable {group.name}"):
            op = provider.enable_server_group(group.name, self.key(context, "enable"), region=group.region)
        group = self.group_named(self.acted_on(op, group.name), groups)
        others = _serving(groups, besides=[group.name])
        alongside = f"alongside {', '.join(others)}" if others else "as the only enabled group of its cluster"
        self.log.info("enabled %s (it takes traffic %s once healthy)", group.name, alongside)
        result = self.outputs(group, enabled=True)
        self.wait_healthy(
            context,
            group,
            desired=group.capacity.desired,
            percent=100,
            operations=[op],
            method_name="enabled_healthy",
            kwargs={"result": result},
        )
        return result

    def enabled_healthy(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        result = self.pending(context, result)
        self.check_event(event, f"{result.get('serverGroup')} was enabled but is not healthy")
        return result


class DisableServerGroupOperator(ClusterStageOperator):
    """Take a server group out of service; its instances keep running (so a rollback is quick)."""

    gennaker_stage_type = "disableServerGroup"

    def run_stage(self, context: Any) -> Any:
        group, groups = self.resolve()
        provider = self.get_provider()
        with self.cloud_call(f"disable {group.name}"):
            op = provider.disable_server_group(group.name, self.key(context, "disable"), region=group.region)
        group = self.group_named(self.acted_on(op, group.name), groups)
        serving = _serving(groups, besides=[group.name])
        self.log.info("disabled %s (%s)", group.name, _traffic_words(serving, group.cluster))
        result = self.outputs(group, enabled=False, serving=serving)
        self.wait_operations(context, [op], group.region, method_name="disabled", kwargs={"result": result})
        return result

    def disabled(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        result = self.pending(context, result)
        self.check_event(event, f"disabling {result.get('serverGroup')} did not finish")
        return result


# --------------------------------------------------------------------------- resize


class ResizeServerGroupOperator(ClusterStageOperator):
    """Set a server group's capacity, or scale it by a number or a percentage, and wait until healthy."""

    gennaker_stage_type = "resizeServerGroup"

    def __init__(
        self,
        *,
        capacity: Mapping[str, int] | None = None,
        scale_by: int | None = None,
        scale_percent: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.capacity = dict(capacity) if capacity is not None else None
        self.scale_by = scale_by
        self.scale_percent = scale_percent

    def run_stage(self, context: Any) -> Any:
        group, groups = self.resolve()
        try:
            wanted = new_capacity(
                group.capacity, capacity=self.capacity, scale_by=self.scale_by, scale_percent=self.scale_percent
            )
        except ValueError as error:
            raise CloudStageFailed(f"stage {self.stage_id!r}: {error}") from error
        provider = self.get_provider()
        with self.cloud_call(f"resize {group.name} to {_count(wanted.desired)}"):
            provider.limits.check_group(wanted, group.name)  # a runaway scalePercent stops here, whatever the cloud
            op = provider.resize_server_group(group.name, wanted, self.key(context, "resize"), region=group.region)
        name = self.acted_on(op, group.name)
        if name != group.name:
            group = self.group_named(name, groups)
        first = op.request.get("capacity")  # a retry: the first try's capacity (it may have applied already)
        if isinstance(first, dict):
            wanted = type(wanted).from_dict(first)
        self.log.info("resizing %s from %s to %s", group.name, _capacity_words(group.capacity), _capacity_words(wanted))
        result = self.outputs(group, capacity=wanted.to_dict(), previousCapacity=group.capacity.to_dict())
        self.wait_healthy(
            context,
            group,
            desired=wanted.desired,
            percent=100,
            operations=[op],
            method_name="resized",
            kwargs={"result": result},
        )
        self.log.info("resized %s to %s", group.name, _count(wanted.desired))
        return result

    def resized(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        result = self.pending(context, result)
        desired = (result.get("capacity") or {}).get("desired")
        self.check_event(event, f"resizing {result.get('serverGroup')} to {desired} instance(s) did not finish")
        self.log.info("resized %s to %s", result.get("serverGroup"), _count(int(desired or 0)))
        return result


# --------------------------------------------------------------------------- destroy


class DestroyServerGroupOperator(ClusterStageOperator):
    """Disable and delete a server group and its instances; done when it is gone."""

    gennaker_stage_type = "destroyServerGroup"

    def run_stage(self, context: Any) -> Any:
        group, groups = self.resolve()
        provider = self.get_provider()
        with self.cloud_call(f"destroy {group.name}"):
            op = provider.destroy_server_group(group.name, self.key(context, "destroy"), region=group.region)
        name = self.acted_on(op, group.name)
        if name != group.name:
            try:
                group = self.group_named(name, groups)
            except ServerGroupNotFound:  # the earlier try's destroy is through
                group = group.replace(name=name, instances=(), enabled=False)
        serving = _serving(groups, besides=[name])
        state = "enabled" if group.enabled else "disabled"
        self.log.info(
            "destroying %s (was %s, %s; %s)",
            name,
            state,
            _count(len(group.instances)),
            _traffic_words(serving, group.cluster),
        )
        result = {
            "serverGroup": name,
            "cluster": group.cluster,
            "account": group.account,
            "region": group.region,
            "destroyed": True,
        }
        self.wait_operations(context, [op], group.region, method_name="destroyed", kwargs={"result": result})
        self.log.info("destroyed %s", name)
        return result

    def destroyed(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        result = self.pending(context, result)
        self.check_event(event, f"destroying {result.get('serverGroup')} did not finish")
        self.log.info("destroyed %s", result.get("serverGroup"))
        return result


# --------------------------------------------------------------------------- rollback


class RollbackOperator(ClusterStageOperator):
    """Roll a cluster back: re-enable an older server group, wait until healthy, then disable the newer ones.

    The older group (``previous`` unless ``target`` says otherwise) first grows to the
    newest group's capacity if it is smaller (it may have been scaled down after the
    deploy), so it can carry the traffic. If it does not become healthy in time, nothing
    is disabled: the newer groups keep serving and the stage fails.
    """

    gennaker_stage_type = "rollback"
    default_target: ClassVar[str] = PREVIOUS

    def __init__(self, *, target_healthy_percentage: int = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_healthy_percentage = target_healthy_percentage

    def run_stage(self, context: Any) -> Any:
        restore, groups = self.resolve()
        try:
            plan = plan_rollback(restore, groups, self.target)
        except InvalidRequest as error:
            raise CloudStageFailed(error.message) from error
        operations = start_rollback(
            self.get_provider(),
            plan,
            lambda purpose: self.key(context, purpose),
            call=self.cloud_call,
            log=self.log.info,
        )
        result = self.outputs(
            restore, capacity=plan.capacity.to_dict(), previous=plan.newest.name, disabled=list(plan.newer)
        )
        self.wait_healthy(
            context,
            restore,
            desired=plan.capacity.desired,
            percent=self.target_healthy_percentage,
            operations=operations,
            method_name="rollback_healthy",
            kwargs={"result": result},
        )
        return self.rollback_healthy(context, None, result)

    def rollback_healthy(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        result = self.pending(context, result)
        restore = str(result["serverGroup"])
        newer = list(result.get("disabled") or [])
        if event is not None:
            still = ", ".join(newer) or "the newer server groups"
            self.check_event(
                event,
                f"rollback stopped, nothing was disabled ({still} still take traffic; {restore} is enabled "
                f"but not healthy)",
            )
        provider = self.get_provider()
        region = str(result.get("region") or self.region or provider.region)
        operations = finish_rollback(
            provider,
            restore,
            newer,
            region,
            lambda purpose: self.key(context, purpose),
            call=self.cloud_call,
            log=self.log.info,
        )
        self.wait_operations(context, operations, region, method_name="rolled_back", kwargs={"result": result})
        return self.rolled_back(context, None, result)

    def rolled_back(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        result = self.pending(context, result)
        if event is not None:
            self.check_event(event, f"disabling {', '.join(result.get('disabled') or [])} did not finish")
        self.log.info(
            "rolled back %s from %s to %s", result.get("cluster"), result.get("previous"), result["serverGroup"]
        )
        return result


# --------------------------------------------------------------------------- findImage


class FindImageOperator(CloudStageOperator):
    """The newest (or oldest) image of a package with the given tags, in each region; fails if there is none."""

    gennaker_stage_type = "findImage"
    template_fields: Sequence[str] = ("account", "region", "package", "tags")

    def __init__(
        self,
        *,
        package: str,
        select: str = "newest",
        tags: Mapping[str, str] | None = None,
        regions: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.package = package
        self.select = select
        self.tags = dict(tags or {})
        self.regions = list(regions or [])

    def run_stage(self, context: Any) -> Any:
        provider = self.get_provider()
        regions = self.regions or [self.region or provider.region]
        tags = {str(k): str(v) for k, v in self.tags.items()}
        with_tags = f" with tags {', '.join(f'{k}={v}' for k, v in sorted(tags.items()))}" if tags else ""
        found: dict[str, Any] = {}
        missing: list[str] = []
        for region in regions:
            with self.cloud_call(f"look for images of {self.package}"):
                images = provider.find_images(package=self.package, tags=tags or None, region=region)
            if not images:
                missing.append(region)
                continue
            image = images[0] if self.select == "newest" else images[-1]
            found[region] = image
            self.log.info(
                "found %s %s (image %s) in %s, the %s of %d%s",
                image.package,
                image.version,
                image.id,
                region,
                self.select,
                len(images),
                with_tags,
            )
        if missing:
            raise ImageNotFound(
                f"no image of package {self.package!r}{with_tags} in account {self.account!r}, "
                f"region {', '.join(missing)}: bake one first (a bake stage), or check the package name and tags"
            )
        first = found[regions[0]]
        return {
            "imageId": first.id,
            "imageName": first.name,
            "package": first.package,
            "version": first.version,
            "region": regions[0],
            "images": {region: image.id for region, image in found.items()},
            "tags": dict(first.tags),
        }


__all__ = [
    "DEFAULT_WAIT",
    "DYNAMIC_TARGETS",
    "NEWEST",
    "OLDEST",
    "PENDING_KEY",
    "PREVIOUS",
    "CloudStageFailed",
    "CloudStageOperator",
    "ClusterStageOperator",
    "DestroyServerGroupOperator",
    "DisableServerGroupOperator",
    "EnableServerGroupOperator",
    "FindImageOperator",
    "ImageNotFound",
    "ResizeServerGroupOperator",
    "RollbackOperator",
    "RollbackPlan",
    "ServerGroupNotFound",
    "ServerGroupUnhealthy",
    "TrafficGuardBlocked",
    "finish_rollback",
    "inline_wait_seconds",
    "live_groups",
    "new_capacity",
    "pick_target",
    "plan_rollback",
    "start_rollback",
]
