"""The base classes of every stage: the gate (:mod:`gennaker.operators.gate`) and the cloud stages'.

:class:`CloudStageOperator` talks to one account (an Airflow connection) through its
provider: it turns the provider's errors into task failures that say what to do, keys
every mutating call with an :class:`~gennaker.cloud.provider.IdempotencyKey` of the task,
and waits for health or for operations in the worker for a few seconds, else deferred to
the triggerer (no worker slot held). :class:`ClusterStageOperator` adds the target: one
server group of a cluster, by name or ``newest`` / ``previous`` / ``oldest``
(:mod:`gennaker.strategies.targets`).

Failures that a retry cannot fix (a traffic guard, a server group or image that does not
exist, a request the cloud refuses) fail the task at once (``AirflowFailException``
subclasses); only an unreachable cloud and a health wait that ran out of time may retry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from gennaker.errors import (
    CloudError,
    GennakerError,
    InvalidName,
    NotFound,
    ProviderUnavailable,
    TrafficGuardViolation,
)
from gennaker.hooks.cluster import provider_for
from gennaker.operators.gate import OUTCOME_KEY, PIPELINE_HALTED, StageMixin, utc_in
from gennaker.strategies.rollback import DEFAULT_WAIT
from gennaker.strategies.targets import DYNAMIC_TARGETS, NEWEST, live_groups, pick_target

# The cloud model, naming and provider modules are imported when a stage runs, not when a DAG file
# that uses these operators is parsed (pydantic models cost tens of milliseconds per parse).
if TYPE_CHECKING:
    from gennaker.cloud.model import Operation, ServerGroup
    from gennaker.cloud.provider import CloudProvider, IdempotencyKey

# Where a deferring stage keeps its result for the resume, besides the defer kwargs (which Airflow 3.3's
# dag.test() drops; XComs pushed before a deferral survive it).
PENDING_KEY = "gennaker.pending"

# How often the triggerer polls a deferred wait (a wait lasts DEFAULT_WAIT when the stage has no timeout).
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


class CloudStageFailed(AirflowFailException, GennakerError):
    """A cloud stage failed in a way a retry cannot fix (the message says what to do)."""


class TrafficGuardBlocked(CloudStageFailed):
    """The change would leave a guarded cluster without a serving server group."""


class ServerGroupNotFound(CloudStageFailed):
    """The target server group (or cluster) does not exist."""


class ImageNotFound(CloudStageFailed):
    """findImage found no image of the package with the given tags."""


class ServerGroupUnhealthy(AirflowException, GennakerError):
    """A server group did not become healthy in time (a retry waits again)."""


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


__all__ = [
    "DEFAULT_WAIT",
    "OUTCOME_KEY",
    "PENDING_KEY",
    "PIPELINE_HALTED",
    "CloudStageFailed",
    "CloudStageOperator",
    "ClusterStageOperator",
    "ImageNotFound",
    "ServerGroupNotFound",
    "ServerGroupUnhealthy",
    "StageMixin",
    "TrafficGuardBlocked",
    "inline_wait_seconds",
    "utc_in",
]
