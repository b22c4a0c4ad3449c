"""What each route of the Clusters API does: permission checks, cached reads, rendering, actions.

One :class:`ClustersService` per API server worker holds the accounts and their
providers, the snapshot cache, the map of applications to pipelines, the audit trail and
the action runner. Routes (:mod:`gennaker.web.app`) only parse the request and call it.

Settings (Airflow configuration, section ``[gennaker]``, or ``AIRFLOW__GENNAKER__*``):

- ``clusters_cache_ttl`` (seconds, default 5): how long an account's snapshot is fresh;
- ``clusters_cache_max_stale`` (seconds, default 60): how long a stale one is still served
  while it is read again in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gennaker.cloud.model import Operation, OperationStatus
from gennaker.cloud.provider import CloudProvider
from gennaker.errors import (
    CloudError,
    Forbidden,
    NotFound,
    NotSupported,
    Unsupported,
)
from gennaker.web import models as m
from gennaker.web import views
from gennaker.web.accounts import Accounts
from gennaker.web.actions import ActionRunner, Target, cluster_of, group_of, status_for
from gennaker.web.audit import AuditLog
from gennaker.web.auth import EDIT, READ, Authorizer, PipelineIndex, user_name
from gennaker.web.cache import DEFAULT_MAX_STALE, DEFAULT_TTL, SnapshotCache
from gennaker.web.reader import AccountSnapshot, read_account, warm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """The Clusters API's knobs (see the module docstring)."""

    ttl: float = DEFAULT_TTL
    max_stale: float = DEFAULT_MAX_STALE

    @classmethod
    def from_airflow(cls) -> Settings:
        """From Airflow's configuration, section ``[gennaker]``."""
        from airflow.configuration import conf

        return cls(
            ttl=conf.getfloat("gennaker", "clusters_cache_ttl", fallback=DEFAULT_TTL),
            max_stale=conf.getfloat("gennaker", "clusters_cache_max_stale", fallback=DEFAULT_MAX_STALE),
        )


class ClustersService:
    """The Clusters API's logic, independent of HTTP."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        accounts: Accounts | None = None,
        pipelines: PipelineIndex | None = None,
        audit: Callable[[], AuditLog] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.accounts = accounts or Accounts(ttl=self.settings.ttl)
        self.pipelines = pipelines or PipelineIndex(ttl=self.settings.ttl)
        self.authorizer = Authorizer(self.pipelines)
        self.cache: SnapshotCache[AccountSnapshot] = SnapshotCache(
            self._read, ttl=self.settings.ttl, max_stale=self.settings.max_stale, warm=warm
        )
        self._open_audit = audit or AuditLog
        self._audit: AuditLog | None = None
        self.runner = ActionRunner(self.audit, self.cache.invalidate)

    def audit(self) -> AuditLog:
        """The audit trail (opened on first use, in gennaker's shared database: see :mod:`gennaker.db`)."""
        if self._audit is None:
            self._audit = self._open_audit()
        return self._audit

    def _read(self, account: str) -> AccountSnapshot:
        return read_account(account, self.accounts.provider(account), self.pipelines.get().keys())

    # ------------------------------------------------------------------ permissions

    def permissions(self, user: Any, application: str) -> m.Permissions:
        """What ``user`` may do with the application."""
        read = self.authorizer.allowed(user, application, READ)
        edit = read and self.authorizer.allowed(user, application, EDIT)
        return m.Permissions(read=read, edit=edit)

    def require_read(self, user: Any, application: str) -> m.Permissions:
        """The caller's permissions; :class:`Forbidden` if they may not read the application."""
        permissions = self.permissions(user, application)
        if not permissions.read:
            raise Forbidden(f"{user_name(user)} may not read application {application}")
        return permissions

    # ------------------------------------------------------------------ snapshots

    def _snapshots(self) -> tuple[list[AccountSnapshot], list[m.AccountError]]:
        snapshots, errors = [], []
        for name in self.accounts.names():
            try:
                snapshots.append(self.cache.get(name))
            except CloudError as error:
                errors.append(m.AccountError(account=name, status=status_for(error), detail=str(error)))
            except Exception as error:  # one broken account must not hide the others
                log.exception("reading account %s failed", name)
                # The error's text may name server paths: only its kind goes to the caller (the log has the rest).
                detail = f"reading the account failed ({type(error).__name__}); the API server's log has the details"
                errors.append(m.AccountError(account=name, status=500, detail=detail))
        return snapshots, errors

    def _snapshot(self, account: str) -> AccountSnapshot:
        self.accounts.get(account)  # NotFound for an account that is not gennaker's
        return self.cache.get(account)

    @staticmethod
    def _oldest(snapshots: Iterable[AccountSnapshot]) -> datetime | None:
        return min((s.read_at for s in snapshots), default=None)

    # ------------------------------------------------------------------ reads

    def applications(self, user: Any) -> bytes:
        """``GET /api/applications``."""
        snapshots, errors = self._snapshots()
        pipelines = self.pipelines.get()
        summaries = [s.memo("applications", _summaries) for s in snapshots]
        names = set(pipelines).union(*(set(summary) for summary in summaries))
        shown = []
        for name in sorted(names):
            permissions = self.permissions(user, name)
            if not permissions.read:
                continue
            parts = [
                (s.account, summary[name]) for s, summary in zip(snapshots, summaries, strict=True) if name in summary
            ]
            shown.append(
                m.ApplicationView(
                    name=name,
                    accounts=[account for account, _ in parts],
                    cluster_count=sum(part.clusters for _, part in parts),
                    server_group_count=sum(part.server_groups for _, part in parts),
                    instance_counts=views.add_counts(part.instances for _, part in parts),
                    pipelines=[
                        m.PipelineRef(dag_id=p.dag_id, url=views.dag_url(p.dag_id)) for p in pipelines.get(name, ())
                    ],
                    permissions=permissions,
                )
            )
        return m.ApplicationsResponse(
            applications=shown, snapshot_at=self._oldest(snapshots), account_errors=errors
        ).to_json()

    def clusters(self, user: Any, application: str) -> bytes:
        """``GET /api/applications/{application}/clusters``: every account's clusters of the application."""
        permissions = self.require_read(user, application)
        snapshots, errors = self._snapshots()
        clusters = [
            cluster
            for snapshot in snapshots
            for cluster in snapshot.memo(("clusters", application), lambda s: views.clusters(s, application))
        ]
        return m.ClustersResponse(
            application=application,
            permissions=permissions,
            clusters=clusters,
            snapshot_at=self._oldest(snapshots),
            account_errors=errors,
        ).to_json()

    def cluster(self, user: Any, application: str, account: str, cluster: str) -> bytes:
        """``GET /api/applications/{application}/clusters/{account}/{cluster}``."""
        permissions = self.require_read(user, application)
        cluster_of(application, cluster)
        snapshot = self._snapshot(account)
        for view in snapshot.memo(("clusters", application), lambda s: views.clusters(s, application)):
            if view.name == cluster:
                return m.ClusterResponse(
                    application=application, permissions=permissions, cluster=view, snapshot_at=snapshot.read_at
                ).to_json()
        raise NotFound(f"cluster {cluster} has no server groups in account {account}", hint="")

    def server_group(self, user: Any, application: str, account: str, region: str, name: str) -> bytes:
        """``GET /api/applications/{application}/serverGroups/{account}/{region}/{name}``."""
        permissions = self.require_read(user, application)
        group_of(application, name)
        snapshot = self._snapshot(account)
        group = snapshot.server_group(region, name)
        return m.ServerGroupResponse(
            application=application,
            permissions=permissions,
            server_group=views.server_group(group, snapshot.images),
            instances=[views.instance(i) for i in group.instances],
            health_check=dict(group.health_check),
            tags=dict(group.tags),
            load_balancers=[
                views.load_balancer(lb, snapshot.server_groups)
                for lb in snapshot.load_balancers
                if views.serves(lb, group)
            ],
            firewalls=[
                views.firewall(fw, snapshot.server_groups)
                for fw in snapshot.firewalls
                if fw.name in group.firewalls and fw.account == group.account
            ],
            snapshot_at=snapshot.read_at,
        ).to_json()

    def load_balancers(self, user: Any, application: str) -> bytes:
        """``GET /api/applications/{application}/loadBalancers``."""
        self.require_read(user, application)
        snapshots, errors = self._snapshots()
        found = [
            lb
            for snapshot in snapshots
            for lb in snapshot.memo(
                ("loadBalancers", application),
                lambda s: [views.load_balancer(lb, s.server_groups) for lb in s.load_balancers_of(application)],
            )
        ]
        return m.LoadBalancersResponse(
            application=application, load_balancers=found, snapshot_at=self._oldest(snapshots), account_errors=errors
        ).to_json()

    def firewalls(self, user: Any, application: str) -> bytes:
        """``GET /api/applications/{application}/firewalls``."""
        self.require_read(user, application)
        snapshots, errors = self._snapshots()
        found = [
            fw
            for snapshot in snapshots
            for fw in snapshot.memo(
                ("firewalls", application),
                lambda s: [views.firewall(fw, s.server_groups) for fw in s.firewalls_of(application)],
            )
        ]
        return m.FirewallsResponse(
            application=application, firewalls=found, snapshot_at=self._oldest(snapshots), account_errors=errors
        ).to_json()

    def history(
        self, user: Any, application: str, account: str, cluster: str, *, before: int | None, limit: int
    ) -> m.HistoryResponse:
        """``GET .../clusters/{account}/{cluster}/history``: the provider's :meth:`~CloudProvider.history`.

        A provider that keeps no history (:class:`NotSupported`) answers :class:`Unsupported` (501).
        """
        self.require_read(user, application)
        cluster_of(application, cluster)
        provider = self.accounts.provider(account)
        try:
            events = provider.history(cluster, before=before, limit=limit)
        except NotSupported as error:
            raise Unsupported(error.message) from None
        keys = [views.source(e.key, {}) for e in events]
        users = self.audit().users(k.run_id for k in keys if k is not None and k.kind == "ui")
        entries = []
        for event, key in zip(events, keys, strict=True):
            op = event.operation
            entries.append(
                m.HistoryEntry(
                    id=event.id,
                    at=event.at,
                    event=event.kind,
                    server_group=event.server_group,
                    instance_id=event.instance_id,
                    message=event.message,
                    source=None if key is None else key.model_copy(update={"user": users.get(key.run_id)}),
                    operation=None if op is None else views.operation(op),
                )
            )
        return m.HistoryResponse(
            application=application,
            account=account,
            cluster=cluster,
            entries=entries,
            next_before=events[-1].id if len(events) >= limit else None,
        )

    def audit_entries(
        self,
        user: Any,
        application: str,
        *,
        cluster: str | None,
        server_group: str | None,
        before: int | None,
        limit: int,
    ) -> m.AuditResponse:
        """``GET /api/applications/{application}/audit``: the actions of the Clusters page, newest first."""
        self.require_read(user, application)
        entries, more = self.audit().list(
            application, cluster=cluster, server_group=server_group, before=before, limit=limit
        )
        return m.AuditResponse(application=application, entries=[self._settled(e) for e in entries], next_before=more)

    def _settled(self, entry: m.AuditEntry) -> m.AuditEntry:
        """A single-operation action still RUNNING (its follower gone) whose operations have all ended."""
        if entry.status not in ("RUNNING", "INTERRUPTED") or entry.action == "rollback" or not entry.operation_ids:
            return entry
        try:
            ops = [self._recorded_operation(entry.account, op_id) for op_id in entry.operation_ids]
        except CloudError:
            return entry
        if not all(op.done for op in ops):
            return entry
        failed = [op for op in ops if op.status is not OperationStatus.SUCCEEDED]
        return entry.model_copy(
            update={"status": "FAILED" if failed else "SUCCEEDED", "message": "; ".join(op.message for op in ops)}
        )

    def _recorded_operation(self, account: str, operation_id: str) -> Operation:
        """An operation as recorded, without advancing it (the local provider's ``operation`` would)."""
        return self.accounts.provider(account).recorded_operation(operation_id)

    def operation(self, user: Any, application: str, account: str, operation_id: str) -> m.OperationView:
        """``GET .../operations/{account}/{operationId}``: poll an operation of the application's server groups.

        The operation is first read as recorded, and must be of the application in the URL
        before anything advances it (the local provider's ``operation`` moves it on); only a
        caller who may act on the application advances it, a reader sees it as recorded.
        """
        permissions = self.require_read(user, application)
        self.accounts.get(account)  # NotFound for an account that is not gennaker's
        not_found = NotFound(f"operation {operation_id} not found for application {application}", hint="")
        try:
            recorded = self._recorded_operation(account, operation_id)
        except NotFound:
            raise not_found from None
        group = recorded.request.get("server_group") or recorded.result.get("server_group")
        try:
            group_of(application, str(group or ""))
        except NotFound:
            raise not_found from None
        if recorded.done or not permissions.edit:
            return views.operation(recorded)
        return views.operation(self.accounts.provider(account).operation(operation_id))

    # ------------------------------------------------------------------ actions

    def act(
        self, user: Any, action: m.ActionName, target: Target, parameters: dict[str, Any], reason: str
    ) -> CloudProvider:
        """Check that the caller may act (recording a refusal) and that the target exists; the account's provider."""
        if not self.authorizer.allowed(user, target.application, EDIT):
            self.runner.forbidden(user_name(user), action, target, parameters, reason)
            raise Forbidden(f"{user_name(user)} may not act on application {target.application}")
        if target.server_group is not None:
            group_of(target.application, target.server_group)
        if target.cluster is not None:
            cluster_of(target.application, target.cluster)
        return self.accounts.provider(target.account)

    def resize(self, user: Any, target: Target, body: m.ResizeRequest) -> m.ActionResponse:
        """``POST .../resize``."""
        provider = self.act(user, "resize", target, {"capacity": body.capacity.model_dump()}, body.reason)
        return self.runner.resize(user_name(user), provider, target, body.capacity, body.reason)

    def enable(self, user: Any, target: Target, body: m.ActionRequest) -> m.ActionResponse:
        """``POST .../enable``."""
        provider = self.act(user, "enable", target, {}, body.reason)
        return self.runner.enable(user_name(user), provider, target, body.reason)

    def disable(self, user: Any, target: Target, body: m.ActionRequest) -> m.ActionResponse:
        """``POST .../disable``."""
        provider = self.act(user, "disable", target, {}, body.reason)
        return self.runner.disable(user_name(user), provider, target, body.reason)

    def destroy(self, user: Any, target: Target, body: m.ActionRequest) -> m.ActionResponse:
        """``POST .../destroy``."""
        provider = self.act(user, "destroy", target, {}, body.reason)
        return self.runner.destroy(user_name(user), provider, target, body.reason)

    def terminate(self, user: Any, target: Target, body: m.TerminateRequest) -> m.ActionResponse:
        """``POST .../instances/{instanceId}/terminate``."""
        provider = self.act(user, "terminateInstance", target, {"decrement": body.decrement}, body.reason)
        return self.runner.terminate(user_name(user), provider, target, body.decrement, body.reason)

    def rollback(self, user: Any, target: Target, body: m.RollbackRequest) -> m.ActionResponse:
        """``POST .../clusters/{account}/{cluster}/rollback``."""
        parameters = {"target": body.target, "targetHealthyPercentage": body.target_healthy_percentage}
        provider = self.act(user, "rollback", target, parameters, body.reason)
        return self.runner.rollback(user_name(user), provider, target, body)

    def close(self) -> None:
        """Forget cached state and close the providers."""
        self.cache.clear()
        self.pipelines.clear()
        self.accounts.clear()


@dataclass(frozen=True)
class _Summary:
    clusters: int
    server_groups: int
    instances: m.InstanceCounts


def _summaries(snapshot: AccountSnapshot) -> dict[str, _Summary]:
    """Per application of the snapshot: clusters, server groups, instance counts."""
    found = {}
    for application in snapshot.applications():
        groups = snapshot.server_groups_of(application)
        found[application] = _Summary(
            clusters=len({g.cluster for g in groups}),
            server_groups=len(groups),
            instances=views.add_counts(views.counts(g.instances) for g in groups),
        )
    return found


__all__ = ["ClustersService", "Forbidden", "Settings", "Unsupported"]
