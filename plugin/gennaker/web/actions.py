"""The Clusters page's actions, done the way the pipeline stages do them, and followed to their end.

Each action calls what the matching stage calls (through ``gennaker.strategies``):
the provider's resize / enable / disable / destroy / terminate with an idempotency key,
``new_capacity`` for a resize, and for a rollback the stage's own ``plan_rollback``,
``start_rollback`` and ``finish_rollback``. Traffic guards are the provider's, so they
refuse a click exactly as they refuse a stage (HTTP 409).

Keys are ``IdempotencyKey("ui", <action id>, <action>, <purpose>)``, the purposes those of
the stages (``resize``, ``enable``, ``rollback-enable``, ``rollback-disable-<group>``...):
the cluster history reads them back to name the user.

An action answers at once (HTTP 202) with its audit entry and operations. What is left runs
in a background thread of the API server worker, as the stage's deferred trigger would:
following the operations until they end, and for a rollback waiting (up to its timeout)
until the restored group is healthy before disabling the newer ones. If it is not healthy
in time, nothing is disabled, as in the stage. Every end is written to the audit trail and
expires the account's cached snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gennaker.cloud.model import Operation, utcnow
from gennaker.cloud.naming import parse_server_group_name
from gennaker.cloud.provider import CloudProvider, IdempotencyKey
from gennaker.errors import (
    AlreadyExists,
    CloudError,
    InvalidRequest,
    NotFound,
    OperationFailed,
    ProviderUnavailable,
    QuotaExceeded,
    SharedStateUnavailable,
    TrafficGuardViolation,
)
from gennaker.strategies.capacity import new_capacity
from gennaker.strategies.rollback import DEFAULT_WAIT, RollbackPlan, plan_rollback, start_rollback
from gennaker.strategies.targets import DYNAMIC_TARGETS, live_groups, pick_target
from gennaker.web import models as m
from gennaker.web import views
from gennaker.web.actionlock import ActionLocks, ClusterLocked
from gennaker.web.audit import FINAL, UI_DAG_ID, AuditLog, new_action_id
from gennaker.web.refusals import refused_entry

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
LEASE_MARGIN = 60.0


def status_for(error: CloudError) -> int:
    """The HTTP status of a provider's error."""
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, (TrafficGuardViolation, AlreadyExists, QuotaExceeded)):
        return 409
    if isinstance(error, InvalidRequest):
        return 400
    if isinstance(error, (ProviderUnavailable, SharedStateUnavailable)):
        return 503
    if isinstance(error, OperationFailed):
        return 502
    return 500


@dataclass(frozen=True)
class Target:
    """What an action is about."""

    application: str
    account: str
    region: str | None = None
    cluster: str | None = None
    server_group: str | None = None
    instance_id: str | None = None


def group_of(application: str, name: str) -> str:
    """The cluster of a server group name of ``application``; NotFound if it is not one."""
    try:
        names = parse_server_group_name(name)
    except InvalidRequest:
        names = None
    if names is None or names.sequence is None or names.app != application:
        raise NotFound(f"{name} is not a server group of application {application}", hint="")
    return names.cluster


def cluster_of(application: str, cluster: str) -> str:
    """``cluster`` if it is a cluster name of ``application``; NotFound otherwise."""
    try:
        names = parse_server_group_name(cluster)
    except InvalidRequest:
        names = None
    if names is None or names.sequence is not None or names.app != application:
        raise NotFound(f"{cluster} is not a cluster of application {application}", hint="")
    return cluster


class ActionRunner:
    """Runs actions, records them in the audit trail, and follows what they started in the background.

    ``changed(account)`` is called whenever an action may have changed an account (the
    cache expires it); ``spawn`` starts the background work (a daemon thread by default).
    """

    def __init__(
        self,
        audit: Callable[[], AuditLog],
        changed: Callable[[str], None],
        *,
        poll_interval: float = POLL_INTERVAL,
        follow_timeout: float = DEFAULT_WAIT.total_seconds(),
        spawn: Callable[[Callable[[], None]], None] | None = None,
        locks: ActionLocks | None = None,
    ) -> None:
        self.audit = audit
        self.locks = locks or ActionLocks()
        self.changed = changed
        self.poll_interval = poll_interval
        self.follow_timeout = follow_timeout
        self._spawn = spawn or _thread

    def finish(self, action_id: str, **changes: Any) -> m.AuditEntry:
        """Record how an action went on or ended; once it has ended, give its cluster's lock back."""
        try:
            return self.audit().finish(action_id, **changes)
        finally:
            if changes.get("status") in FINAL:
                self.locks.release(action_id)

    # ------------------------------------------------------------------ the actions

    def resize(
        self, user: str, provider: CloudProvider, target: Target, capacity: m.CapacityView, reason: str
    ) -> m.ActionResponse:
        """Set a server group's capacity (the resizeServerGroup stage with a fixed ``capacity``)."""
        wanted = {"min": capacity.min, "max": capacity.max, "desired": capacity.desired}
        name = str(target.server_group)

        def run(key: Callable[[str], IdempotencyKey]) -> list[Operation]:
            current = provider.get_server_group(name, region=target.region)
            size = new_capacity(current.capacity, capacity=wanted)
            return [provider.resize_server_group(name, size, key("resize"), region=target.region)]

        return self._act(user, "resize", provider, target, {"capacity": wanted}, reason, run)

    def enable(self, user: str, provider: CloudProvider, target: Target, reason: str) -> m.ActionResponse:
        """Put a server group in service (the enableServerGroup stage's call)."""
        name = str(target.server_group)
        return self._act(
            user,
            "enable",
            provider,
            target,
            {},
            reason,
            lambda key: [provider.enable_server_group(name, key("enable"), region=target.region)],
        )

    def disable(self, user: str, provider: CloudProvider, target: Target, reason: str) -> m.ActionResponse:
        """Take a server group out of service (the disableServerGroup stage's call; traffic guards apply)."""
        name = str(target.server_group)
        return self._act(
            user,
            "disable",
            provider,
            target,
            {},
            reason,
            lambda key: [provider.disable_server_group(name, key("disable"), region=target.region)],
        )

    def destroy(self, user: str, provider: CloudProvider, target: Target, reason: str) -> m.ActionResponse:
        """Disable and delete a server group (the destroyServerGroup stage's call; traffic guards apply)."""
        name = str(target.server_group)
        return self._act(
            user,
            "destroy",
            provider,
            target,
            {},
            reason,
            lambda key: [provider.destroy_server_group(name, key("destroy"), region=target.region)],
        )

    def terminate(
        self, user: str, provider: CloudProvider, target: Target, decrement: bool, reason: str
    ) -> m.ActionResponse:
        """Terminate one instance; the group replaces it unless ``decrement`` (traffic guards apply)."""
        name, instance = str(target.server_group), str(target.instance_id)
        return self._act(
            user,
            "terminateInstance",
            provider,
            target,
            {"decrement": decrement},
            reason,
            lambda key: [
                provider.terminate_instance(name, instance, key("terminate"), decrement=decrement, region=target.region)
            ],
        )

    def rollback(
        self, user: str, provider: CloudProvider, target: Target, request: m.RollbackRequest
    ) -> m.ActionResponse:
        """The rollback stage on a cluster: re-enable an older group, wait until healthy, disable the newer ones."""
        cluster = str(target.cluster)
        region = target.region or provider.region
        target = Target(target.application, target.account, region, cluster)
        parameters = {
            "target": request.target,
            "targetHealthyPercentage": request.target_healthy_percentage,
            "timeoutSeconds": request.timeout_seconds,
        }
        plans: list[RollbackPlan] = []

        def run(key: Callable[[str], IdempotencyKey]) -> list[Operation]:
            groups = live_groups(
                provider.list_server_groups(target.application, cluster=cluster, region=region), cluster
            )
            if request.target in DYNAMIC_TARGETS:
                where = f"account {target.account!r}, region {region!r}"
                restore = pick_target(groups, request.target, cluster, where)
            else:
                named = [g for g in groups if g.name == request.target]
                if not named:
                    raise NotFound(f"{request.target} is not a live server group of {cluster}", hint="")
                restore = named[0]
            plan = plan_rollback(restore, groups, request.target)
            plans.append(plan)
            return start_rollback(provider, plan, key)

        def then(entry: m.AuditEntry, operations: list[Operation], key: Callable[[str], IdempotencyKey]) -> None:
            plan = plans[0]
            waiting = ", ".join(plan.newer) or "nothing (no newer group is enabled)"
            entry = self.finish(
                entry.id,
                server_group=plan.restore.name,
                message=f"enabled {plan.restore.name}; waiting until it is healthy before disabling {waiting}",
            )
            from gennaker.web.rollback_wait import RollbackWait

            waiter = RollbackWait(self, provider, entry, plan, region, request, key)
            if not waiter.step(operations, time.monotonic() + request.timeout_seconds, first=True):
                self._background(entry.id, waiter.run)

        return self._act(user, "rollback", provider, target, parameters, request.reason, run, then=then)

    # ------------------------------------------------------------------ recording and following

    def forbidden(
        self, user: str, action: m.ActionName, target: Target, parameters: dict[str, Any], reason: str
    ) -> None:
        """Record an attempt the caller was not allowed to make (without what they sent: see :mod:`.refusals`)."""
        self.refused(user, action, target, "FORBIDDEN", 403, f"{user} may not act on application {target.application}")

    def refused(
        self, user: str, action: m.ActionName, target: Target, status: m.AuditStatus, http_status: int, message: str
    ) -> None:
        """Record an attempt refused before it started: bounded target, no parameters, no reason."""
        fields = {k: getattr(target, k) for k in ("application", "account", "region", "cluster", "server_group")}
        entry = refused_entry(
            user,
            action,
            **fields,
            instance_id=target.instance_id,
            status=status,
            http_status=http_status,
            message=message,
        )
        self.audit().start(entry)

    def _entry(
        self,
        user: str,
        action: m.ActionName,
        target: Target,
        parameters: dict[str, Any],
        reason: str,
        *,
        status: m.AuditStatus = "RUNNING",
        http_status: int = 202,
    ) -> m.AuditEntry:
        cluster = target.cluster
        if cluster is None and target.server_group:
            cluster = _cluster_or_none(target.server_group)
        return m.AuditEntry(
            id=new_action_id(),
            at=utcnow(),
            user=user,
            action=action,
            application=target.application,
            account=target.account,
            region=target.region,
            cluster=cluster,
            server_group=target.server_group,
            instance_id=target.instance_id,
            parameters=parameters,
            reason=reason,
            status=status,
            http_status=http_status,
            message="",
            operation_ids=[],
            finished_at=None,
        )

    def _act(
        self,
        user: str,
        action: m.ActionName,
        provider: CloudProvider,
        target: Target,
        parameters: dict[str, Any],
        reason: str,
        run: Callable[[Callable[[str], IdempotencyKey]], list[Operation]],
        *,
        then: Callable[[m.AuditEntry, list[Operation], Callable[[str], IdempotencyKey]], None] | None = None,
    ) -> m.ActionResponse:
        audit = self.audit()
        entry = self._entry(user, action, target, parameters, reason)
        self._lock(entry, target, provider, parameters)
        try:
            entry = audit.start(entry)
        except BaseException:
            self.locks.release(entry.id)
            raise

        def key(purpose: str) -> IdempotencyKey:
            return IdempotencyKey(UI_DAG_ID, entry.id, action, purpose)

        try:
            operations = run(key)
        except CloudError as error:
            code = status_for(error)
            self.finish(
                entry.id,
                status="FAILED" if code >= 500 else "REFUSED",
                http_status=code,
                message=str(error),
            )
            raise
        except BaseException as error:  # a bug or a lost database: the entry must not stay RUNNING
            self.finish(entry.id, status="FAILED", http_status=500, message=f"internal error: {error!r}")
            raise
        finally:
            self.changed(target.account)
        try:
            entry = self.finish(entry.id, operation_ids=[op.id for op in operations], message=_words(operations))
            if then is not None:
                then(entry, operations, key)
            elif all(op.done for op in operations):
                self.conclude(entry.id, target.account, operations)
            else:
                self._background(entry.id, lambda: self.follow(provider, entry.id, target.account, operations))
        except BaseException:  # nothing follows the action up: its lock must not wait for the lease
            self.locks.release(entry.id)
            raise
        entry = audit.get(entry.id)
        return m.ActionResponse(action=entry, operations=[views.operation(op) for op in operations])

    def _background(self, action_id: str, work: Callable[[], None]) -> None:
        """Run the rest of an action in the background; its cluster's lock is given back when that ends, however."""

        def run() -> None:
            try:
                work()
            except Exception as error:  # a bug or a lost database: the entry must not stay RUNNING
                log.exception("action %s: following it failed", action_id)
                self.finish(action_id, status="FAILED", message=f"following the action failed: {error}")
            finally:
                self.locks.release(action_id)

        self._spawn(run)

    def _lock(self, entry: m.AuditEntry, target: Target, provider: CloudProvider, parameters: dict[str, Any]) -> None:
        """Take the cluster's lock for the action, or record the refusal and raise :class:`ClusterLocked` (409)."""
        if entry.cluster is None:
            return  # not a name of a cluster's group: the provider answers NotFound
        # The lease outlives the longest the action may run (a rollback's wait, then following its disables),
        # so only a worker that died mid-action leaves the lock to expire.
        seconds = self.follow_timeout + float(parameters.get("timeoutSeconds") or 0) + LEASE_MARGIN
        region = target.region or provider.region
        lease, note = timedelta(seconds=seconds), f"{entry.action} on the Clusters page"
        try:
            self.locks.take(entry.id, entry.user, target.account, region, entry.cluster, lease, note)
        except ClusterLocked as error:
            self.refused(entry.user, entry.action, target, "REFUSED", 409, error.detail)
            raise

    def conclude(self, action_id: str, account: str, operations: Sequence[Operation], message: str = "") -> None:
        """Record the end of an action whose operations have all ended."""
        failed = [op for op in operations if not op.succeeded]
        self.finish(
            action_id,
            status="FAILED" if failed else "SUCCEEDED",
            http_status=202,
            message=message if message and not failed else _words(operations),
        )
        self.changed(account)

    def follow(
        self,
        provider: CloudProvider,
        action_id: str,
        account: str,
        operations: Sequence[Operation],
        message: str = "",
        deadline: float | None = None,
    ) -> None:
        """Poll the operations until they end (or the follow timeout), then record the end."""
        ops = list(operations)
        deadline = deadline if deadline is not None else time.monotonic() + self.follow_timeout
        while True:
            try:
                ops = refresh(provider, ops)
            except CloudError as error:  # transient: ask again
                log.warning("action %s: checking its operations failed: %s", action_id, error)
            if all(op.done for op in ops):
                self.conclude(action_id, account, ops, message)
                return
            if time.monotonic() >= deadline:
                self.finish(action_id, status="FAILED", message=f"gave up waiting for the operations: {_words(ops)}")
                self.changed(account)
                return
            time.sleep(self.poll_interval)


def refresh(provider: CloudProvider, operations: Sequence[Operation]) -> list[Operation]:
    """The operations as they are now (those still running are polled)."""
    return [op if op.done else provider.operation(op.id) for op in operations]


def _words(operations: Sequence[Operation]) -> str:
    return "; ".join(op.message or f"{op.kind} {op.status.value.lower()}" for op in operations)


def _cluster_or_none(name: str) -> str | None:
    try:
        return parse_server_group_name(name).cluster
    except InvalidRequest:
        return None


def _thread(run: Callable[[], None]) -> None:
    threading.Thread(target=run, name="gennaker-action", daemon=True).start()


__all__ = ["ActionRunner", "Target", "cluster_of", "group_of", "refresh", "status_for"]
