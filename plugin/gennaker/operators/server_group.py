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

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from gennaker.errors import (
    CloudError,
    InvalidName,
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    TrafficGuardViolation,
)
from gennaker.hooks.cluster import provider_for
from gennaker.operators.base import StageMixin, utc_in

# The cloud model, naming and provider modules are imported when a stage runs, not when a DAG file
# that uses these operators is parsed (pydantic models cost tens of milliseconds per parse).
if TYPE_CHECKING:
    from gennaker.cloud.model import Capacity, Operation, ServerGroup
    from gennaker.cloud.provider import CloudProvider, IdempotencyKey

# Targets that name a server group by its place in the cluster (Spinnaker's dynamic targets).
NEWEST = "newest"
PREVIOUS = "previous"
OLDEST = "oldest"
DYNAMIC_TARGETS = (NEWEST, PREVIOUS, OLDEST)

# Where a deferring stage keeps its result for the resume, besides the defer kwargs (which Airflow 3.3's
# dag.test() drops; XComs pushed before a deferral survive it).
PENDING_KEY = "gennaker.pending"

# How long a health wait lasts when the stage has no timeout (the spec's HealthCheck.waitTimeout default).
DEFAULT_WAIT = timedelta(minutes=10)
POLL_INTERVAL = 2.0
# A wait that ends within this long is polled in the worker (every INLINE_POLL seconds) instead of deferred:
# a deferral costs a round trip through the triggerer and the scheduler (several seconds on Airflow 3.3).
INLINE_WAIT = 5.0
INLINE_POLL = 0.05


def inline_wait_seconds() -> float:
    """``$GENNAKER_INLINE_WAIT`` (seconds, 0 = always defer), else :data:`INLINE_WAIT`."""
    try:
        return max(0.0, float(os.environ.get("GENNAKER_INLINE_WAIT", INLINE_WAIT)))
    except ValueError:
        return INLINE_WAIT


# --------------------------------------------------------------------------- failures


class CloudStageFailed(AirflowFailException):
    """A cloud stage failed in a way a retry cannot fix (the message says what to do)."""


class TrafficGuardBlocked(CloudStageFailed):
    """The change would leave a guarded cluster without a serving server group."""


class ServerGroupNotFound(CloudStageFailed):
    """The target server group (or cluster) does not exist."""


class ImageNotFound(CloudStageFailed):
    """findImage found no image of the package with the given tags."""


class ServerGroupUnhealthy(AirflowException):
    """A server group did not become healthy in time (a retry waits again)."""


# --------------------------------------------------------------------------- capacity math


def new_capacity(
    current: Capacity,
    *,
    capacity: Mapping[str, int] | None = None,
    scale_by: int | None = None,
    scale_percent: int | None = None,
) -> Capacity:
    """The capacity a resize asks for.

    - ``capacity``: exactly that;
    - ``scale_by``: desired plus that number (never below 0);
    - ``scale_percent``: desired grown or shrunk by that percentage, rounded up (so +10% of
      one instance adds one, and -50% of three leaves two); -100% is 0.

    When scaling, min and max widen just enough to hold the new desired count.
    """
    from gennaker.cloud.model import Capacity

    given = [x for x in (capacity, scale_by, scale_percent) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of capacity, scale_by or scale_percent")
    if capacity is not None:
        return Capacity(min=capacity["min"], max=capacity["max"], desired=capacity["desired"])
    if scale_by is not None:
        desired = max(0, current.desired + scale_by)
    else:
        assert scale_percent is not None
        desired = max(0, math.ceil(current.desired * (100 + scale_percent) / 100))
    return Capacity(min=min(current.min, desired), max=max(current.max, desired), desired=desired)


def _count(n: int) -> str:
    return f"{n} instance" + ("" if n == 1 else "s")


def _capacity_words(c: Capacity) -> str:
    return f"{_count(c.desired)} (min {c.min}, max {c.max})"


def _resume_grace() -> timedelta:
    """How long a deferred stage stays parked at least: past Airflow's exit report of the deferring try."""
    try:
        from airflow.sdk.configuration import conf

        seconds = conf.getint("workers", "min_heartbeat_interval", fallback=5)
    except Exception:
        seconds = 5
    return timedelta(seconds=seconds + 1)


# --------------------------------------------------------------------------- bases


class CloudStageOperator(StageMixin, BaseOperator):
    """A stage that talks to one account (an Airflow connection) of a cloud provider."""

    template_fields: Sequence[str] = ("account", "region")
    ui_color = "#e6f4ea"

    def __init__(
        self,
        *,
        account: str = "local",
        region: str | None = None,
        cloud: str = "local",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.account = account
        self.region = region
        self.cloud = cloud
        self._provider: CloudProvider | None = None

    # ------------------------------------------------------------------ the account

    def get_provider(self) -> CloudProvider:
        """The account's provider (built once per task try)."""
        if self._provider is None:
            try:
                provider = provider_for(self.account, self.region or None)
            except ProviderUnavailable:
                raise
            except CloudError as error:
                raise CloudStageFailed(f"stage {self.stage_id!r}: {error}") from error
            if provider.kind != self.cloud:
                raise CloudStageFailed(
                    f"stage {self.stage_id!r} says provider {self.cloud!r}, but account {self.account!r} is a "
                    f"{provider.kind!r} account: set the stage's provider to {provider.kind!r} or pick an account "
                    f"of the {self.cloud!r} provider"
                )
            self._provider = provider
        return self._provider

    def key(self, context: Any, purpose: str) -> IdempotencyKey:
        """The idempotency key of this task's call for ``purpose``."""
        from gennaker.cloud.provider import IdempotencyKey

        return IdempotencyKey.from_context(context, purpose)

    @contextmanager
    def cloud_call(self, doing: str) -> Iterator[None]:
        """Turn the provider's errors into task failures that say ``doing`` failed, and why."""
        try:
            yield
        except TrafficGuardViolation as error:
            raise TrafficGuardBlocked(f"cannot {doing}: the traffic guard refused: {error}") from error
        except NotFound as error:
            raise ServerGroupNotFound(f"cannot {doing}: {error}") from error
        except ProviderUnavailable:
            raise  # transient: Airflow may retry, and the idempotency keys make the retry safe
        except CloudError as error:
            raise CloudStageFailed(f"cannot {doing}: {error}") from error

    # ------------------------------------------------------------------ waiting

    def wait_seconds(self) -> float:
        timeout = self.execution_timeout
        return (timeout if timeout else DEFAULT_WAIT).total_seconds()

    def wait_healthy(
        self,
        context: Any,
        group: ServerGroup,
        *,
        desired: int,
        percent: int,
        operations: Sequence[Operation],
        method_name: str,
        kwargs: dict[str, Any],
    ) -> None:
        """Return if ``group`` is healthy now (and ``operations`` have ended); else defer to ``method_name``."""
        from gennaker.triggers.server_group import ServerGroupHealthyTrigger, measure_health

        provider = self.get_provider()
        deadline = time.monotonic() + inline_wait_seconds()
        said = ""
        while True:
            operations = self.refresh(operations)
            _raise_failed(operations)
            pending = [op for op in operations if not op.done]
            with self.cloud_call(f"check the health of {group.name}"):
                instances = provider.instances(group.name, region=group.region)
            health = measure_health(group.name, instances, desired, percent, pending[0] if pending else None)
            if health.healthy:
                self.log.info("%s", health.message)
                return
            if time.monotonic() >= deadline:
                break
            if health.message != said:
                said = health.message
                self.log.info("%s", said)
            time.sleep(INLINE_POLL)
        self.log.info("%s; waiting until healthy (in the triggerer, no worker slot held)", health.message)
        self._keep(context, kwargs)
        self.defer(
            trigger=ServerGroupHealthyTrigger(
                conn_id=self.account,
                region=group.region,
                server_group=group.name,
                target_healthy_percentage=percent,
                desired=desired,
                poll_interval=POLL_INTERVAL,
                timeout=self.wait_seconds(),
                operation_ids=[op.id for op in pending],
                not_before=self._not_before(),
            ),
            method_name=method_name,
            kwargs=kwargs,
        )

    def wait_operations(
        self,
        context: Any,
        operations: Sequence[Operation],
        region: str,
        *,
        method_name: str,
        kwargs: dict[str, Any],
    ) -> None:
        """Return if every operation has ended well; defer to ``method_name`` while any runs."""
        from gennaker.triggers.server_group import ServerGroupOperationTrigger

        deadline = time.monotonic() + inline_wait_seconds()
        while True:
            operations = self.refresh(operations)
            _raise_failed(operations)
            pending = [op for op in operations if not op.done]
            if not pending:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(INLINE_POLL)
        self.log.info(
            "%s; waiting until done (in the triggerer, no worker slot held)",
            "; ".join(f"{op.kind}: {op.message or 'running'}" for op in pending),
        )
        self._keep(context, kwargs)
        self.defer(
            trigger=ServerGroupOperationTrigger(
                conn_id=self.account,
                region=region,
                operation_ids=[op.id for op in pending],
                poll_interval=POLL_INTERVAL,
                timeout=self.wait_seconds(),
                not_before=self._not_before(),
            ),
            method_name=method_name,
            kwargs=kwargs,
        )

    def refresh(self, operations: Sequence[Operation]) -> list[Operation]:
        """The operations as they are now (those still running are asked again)."""
        if all(op.done for op in operations):
            return list(operations)
        provider = self.get_provider()
        with self.cloud_call("check on running operations"):
            return [op if op.done else provider.operation(op.id) for op in operations]

    def check_event(self, event: Mapping[str, Any] | None, doing: str) -> str:
        """The event's message if the wait ended well; else fail saying ``doing`` did not finish."""
        event = dict(event or {})
        status = event.get("status")
        message = str(event.get("message") or "no details")
        if status in ("healthy", "succeeded"):
            self.log.info("%s", message)
            return message
        if status == "timeout":
            raise ServerGroupUnhealthy(f"{doing}: {message}")
        raise CloudStageFailed(f"{doing}: {message}")

    def _not_before(self) -> datetime:
        return utc_in(_resume_grace())

    def _keep(self, context: Any, kwargs: dict[str, Any]) -> None:
        context["ti"].xcom_push(key=PENDING_KEY, value=kwargs.get("result"))

    def pending(self, context: Any, result: dict[str, Any] | None) -> dict[str, Any]:
        """The result a resumed stage carries on with: the defer kwargs', else the one kept in XCom."""
        if result is None:
            result = context["ti"].xcom_pull(task_ids=self.task_id, key=PENDING_KEY)
        if not isinstance(result, dict):
            raise CloudStageFailed(f"stage {self.stage_id!r} resumed without the state it deferred with")
        return dict(result)


def _raise_failed(operations: Sequence[Operation]) -> None:
    failed = [op for op in operations if op.done and not op.succeeded]
    if failed:
        raise CloudStageFailed("; ".join(f"{op.kind} failed: {op.message}" for op in failed))


class ClusterStageOperator(CloudStageOperator):
    """A stage that acts on one server group of a cluster, named or picked as newest / previous / oldest."""

    template_fields: Sequence[str] = ("account", "region", "target")
    default_target: ClassVar[str] = NEWEST

    def __init__(
        self,
        *,
        application: str,
        stack: str = "",
        detail: str = "",
        target: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.application = application
        self.stack = stack
        self.detail = detail
        self.target = target or self.default_target

    @property
    def cluster(self) -> str:
        """``<application>-<stack>-<detail>``."""
        from gennaker.cloud.naming import cluster_name

        return cluster_name(self.application, self.stack, self.detail)

    def cluster_groups(self, application: str, cluster: str) -> list[ServerGroup]:
        """The cluster's server groups, oldest first (those being destroyed left out)."""
        provider = self.get_provider()
        with self.cloud_call(f"list the server groups of {cluster}"):
            groups = provider.list_server_groups(application, cluster=cluster, region=self.region or None)
        return live_groups(groups, cluster)

    def resolve(self, target: str | None = None) -> tuple[ServerGroup, list[ServerGroup]]:
        """The target server group and its cluster's server groups (oldest first)."""
        target = (target or self.target or "").strip()
        if target in DYNAMIC_TARGETS:
            try:
                cluster = self.cluster
            except InvalidName as error:
                raise CloudStageFailed(f"stage {self.stage_id!r}: {error}") from error
            groups = self.cluster_groups(self.application, cluster)
            where = f"account {self.account!r}" + (f", region {self.region!r}" if self.region else "")
            try:
                return pick_target(groups, target, cluster, where), groups
            except NotFound as error:
                raise ServerGroupNotFound(error.message) from error
        from gennaker.cloud.naming import parse_server_group_name

        try:
            names = parse_server_group_name(target)
        except InvalidName:
            names = None
        if names is None or names.sequence is None:
            raise CloudStageFailed(
                f"stage {self.stage_id!r}: target {target!r} is neither newest, previous, oldest nor a server "
                f"group name such as {self._example()}"
            )
        provider = self.get_provider()
        with self.cloud_call(f"find server group {target}"):
            group = provider.get_server_group(target, region=self.region or None)
        groups = self.cluster_groups(names.app, names.cluster)
        if all(g.name != group.name for g in groups):
            groups = sorted([*groups, group], key=lambda g: g.created)
        return group, groups

    def _example(self) -> str:
        try:
            return f"{self.cluster}-v003"
        except InvalidName:
            return "hello-prod-v003"

    def acted_on(self, op: Operation, name: str) -> str:
        """The server group an operation is about: an earlier try's, if this key was used before."""
        first = op.request.get("server_group")
        if isinstance(first, str) and first and first != name:
            self.log.info(
                "an earlier try of this task already acted on %s (now the target would be %s); carrying on with %s",
                first,
                name,
                first,
            )
            return first
        return name

    def outputs(self, group: ServerGroup, **more: Any) -> dict[str, Any]:
        return {
            "serverGroup": group.name,
            "cluster": group.cluster,
            "account": group.account,
            "region": group.region,
            "capacity": group.capacity.to_dict(),
            **more,
        }

    def group_named(self, name: str, groups: Sequence[ServerGroup]) -> ServerGroup:
        for g in groups:
            if g.name == name:
                return g
        with self.cloud_call(f"find server group {name}"):
            return self.get_provider().get_server_group(name, region=self.region or None)


def _serving(groups: Sequence[ServerGroup], *, besides: Sequence[str]) -> list[str]:
    return [g.name for g in groups if g.enabled and g.name not in besides]


def _traffic_words(serving: Sequence[str], cluster: str) -> str:
    if serving:
        return f"traffic now on {', '.join(serving)}"
    return f"no server group of {cluster} is enabled now: the cluster takes no traffic"


# --------------------------------------------------------------------------- shared with the Clusters page
# The Clusters API (gennaker.web) acts through these too, so a click does what the stage does.


def live_groups(groups: Iterable[ServerGroup], cluster: str) -> list[ServerGroup]:
    """A cluster's server groups, oldest first by creation time (other clusters' and those being destroyed left out)."""
    live = [g for g in groups if g.cluster == cluster and not g.destroying]  # one being destroyed is no target
    return sorted(live, key=lambda g: g.created)  # stable: the provider's order breaks ties


def pick_target(groups: Sequence[ServerGroup], target: str, cluster: str, where: str) -> ServerGroup:
    """``newest``, ``previous`` or ``oldest`` of a cluster's live groups (oldest first); NotFound if there is none."""
    if not groups:
        raise NotFound(
            f"cluster {cluster} has no server groups in {where}, so there is no {target} one: "
            f"deploy one first, or check the stage's cluster and account",
            hint="",
        )
    if target == NEWEST:
        return groups[-1]
    if target == OLDEST:
        return groups[0]
    if len(groups) < 2:
        raise NotFound(f"cluster {cluster} has no previous server group: {groups[0].name} is its only one", hint="")
    return groups[-2]


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
        with call(f"grow {restore.name} to {_count(plan.capacity.desired)} for the rollback"):
            provider.limits.check_group(plan.capacity, restore.name)
        log(
            "resizing %s from %s to %s, the size of %s, to take over its traffic",
            restore.name,
            _capacity_words(restore.capacity),
            _capacity_words(plan.capacity),
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
    "CloudStageFailed",
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
    "live_groups",
    "new_capacity",
    "pick_target",
    "plan_rollback",
    "start_rollback",
]
