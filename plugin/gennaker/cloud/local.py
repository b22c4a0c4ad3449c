"""The ``local`` provider: the embedded default, no account needed, and it really runs the application.

- images are content-addressed app bundles in ``$GENNAKER_HOME/local/images`` (:mod:`local_images`);
- a server group's instances are processes on 127.0.0.1 kept by one detached supervisor
  per group (:mod:`local_supervisor`);
- a load balancer is one detached HTTP proxy per load balancer (:mod:`local_proxy`),
  which routes to the Up instances of the enabled groups, with weights, drains on
  disable, enforces firewalls and records per-group metrics;
- everything is recorded in one SQLite file (:mod:`state`) that Airflow's workers, the
  triggerer and the API server share.

Operations: baking runs in the calling process (a second or two with the pip cache;
a retry after a crash bakes again, which finds or finishes the same image). Create,
enable, disable, load balancer and firewall changes are state changes the supervisor
and proxies pick up within half a second: their operations end at once. Resize and
destroy end when the supervisor has done them; :meth:`LocalProvider.operation` checks.
Waiting for health is the caller's (a deferred trigger polls :meth:`instances`).

Traffic guards: clusters named in ``guarded_clusters`` (the connection's extra
``traffic_guards``) never lose their last enabled server group with an Up instance.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from gennaker.cloud import local_images, local_proxy, local_supervisor
from gennaker.cloud.errors import InvalidRequest, NotFound, TrafficGuardViolation
from gennaker.cloud.model import (
    BakeRequest,
    Capacity,
    Firewall,
    Health,
    Image,
    Instance,
    LoadBalancer,
    MetricSeries,
    Operation,
    OperationKind,
    OperationStatus,
    ServerGroup,
    ServerGroupSpec,
    utcnow,
)
from gennaker.cloud.naming import cluster_name, parse_server_group_name
from gennaker.cloud.provider import CloudProvider, IdempotencyKey
from gennaker.cloud.state import StateStore, gennaker_home

# Series the local metric source offers (per second, from the load balancers' proxies).
LOCAL_METRICS = ("requests", "errors", "error_rate", "latency_mean", "latency_p50", "latency_p90", "latency_p99")


class LocalProvider(CloudProvider):
    """Server groups as supervised processes on 127.0.0.1, load balancers as local proxies."""

    kind: ClassVar[str] = "local"

    def __init__(
        self,
        account: str = "local",
        region: str = "local",
        *,
        home: str | os.PathLike[str] | None = None,
        store: StateStore | None = None,
        guarded_clusters: Iterable[str] = (),
    ) -> None:
        super().__init__(account, region)
        self.home = Path(home) if home is not None else gennaker_home()
        self.store = store or StateStore(self.home / "local" / "state.db")
        self.guarded_clusters = frozenset(guarded_clusters)

    # ----------------------------------------------------------------------- images

    def bake(self, request: BakeRequest, key: IdempotencyKey) -> Operation:
        op, _created = self.store.claim_operation(key, OperationKind.BAKE, request=request.to_dict())
        if op.done:
            return op
        try:
            image = local_images.bake(self.store, request, home=self.home)
        except Exception as error:
            return self._finish(op, OperationStatus.FAILED, f"bake failed: {error}")
        return self._finish(op, OperationStatus.SUCCEEDED, f"baked {image.id}", {"image_id": image.id})

    def find_images(
        self,
        *,
        package: str | None = None,
        application: str | None = None,
        tags: Mapping[str, str] | None = None,
        region: str | None = None,
    ) -> list[Image]:
        return self.store.find_images(
            account=self.account, region=region or self.region, package=package, application=application, tags=tags
        )

    def get_image(self, image_id: str, *, region: str | None = None) -> Image:
        return self.store.get_image(image_id)

    # ----------------------------------------------------------------------- server groups

    def create_server_group(self, spec: ServerGroupSpec, key: IdempotencyKey) -> Operation:
        op, _created = self.store.claim_operation(key, OperationKind.CREATE_SERVER_GROUP, request=spec.to_dict())
        if op.done:
            return op
        region = spec.region or self.region
        self.store.get_image(spec.image_id)  # NotFound with a clear message before anything is made
        cluster = cluster_name(spec.application, spec.stack, spec.detail)
        name = self.store.allocate_server_group_name(
            account=self.account, region=region, cluster=cluster, reserved_by=key
        )
        try:
            self.store.get_server_group(self.account, region, name)
        except NotFound:
            self.store.put_server_group(
                ServerGroup(
                    name=name,
                    account=self.account,
                    region=region,
                    image_id=spec.image_id,
                    capacity=spec.capacity,
                    enabled=spec.enabled,
                    load_balancers=spec.load_balancers,
                    firewalls=spec.firewalls,
                    health_check=spec.health_check,
                    environment=spec.environment,
                    created_by=spec.created_by,
                    tags=spec.tags,
                )
            )
            self.store.record_event("serverGroup.created", name, f"created {name} from {spec.image_id}")
        self._run_group(region, name)
        return self._finish(op, OperationStatus.SUCCEEDED, f"created {name}", {"server_group": name})

    def get_server_group(self, name: str, *, region: str | None = None) -> ServerGroup:
        return self.store.get_server_group(self.account, region or self.region, name)

    def list_server_groups(
        self, application: str, *, cluster: str | None = None, region: str | None = None
    ) -> list[ServerGroup]:
        return self.store.list_server_groups(
            account=self.account, region=region or self.region, application=application, cluster=cluster
        )

    def resize_server_group(
        self, name: str, capacity: Capacity, key: IdempotencyKey, *, region: str | None = None
    ) -> Operation:
        region = region or self.region
        op, _created = self.store.claim_operation(
            key, OperationKind.RESIZE_SERVER_GROUP, request={"server_group": name, "capacity": capacity.to_dict()}
        )
        if op.done:
            return op
        group = self.get_server_group(name, region=region)
        if capacity.desired == 0:
            self._guard(group, f"resizing {name} to 0")
        self.store.update_server_group(self.account, region, name, lambda g: g.replace(capacity=capacity))
        self._run_group(region, name)
        return self._progress(self.store.get_operation(op.id))

    def enable_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        return self._set_enabled(name, True, key, region or self.region)

    def disable_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        return self._set_enabled(name, False, key, region or self.region)

    def _set_enabled(self, name: str, enabled: bool, key: IdempotencyKey, region: str) -> Operation:
        kind = OperationKind.ENABLE_SERVER_GROUP if enabled else OperationKind.DISABLE_SERVER_GROUP
        op, _created = self.store.claim_operation(key, kind, request={"server_group": name})
        if op.done:
            return op
        group = self.get_server_group(name, region=region)
        if not enabled:
            self._guard(group, f"disabling {name}")
        who = None if enabled else f"{key.dag_id}.{key.task_id}"
        self.store.update_server_group(
            self.account,
            region,
            name,
            lambda g: g.replace(enabled=enabled, disabled_by=who, disabled_at=None if enabled else utcnow()),
        )
        verb = "enabled" if enabled else "disabled"
        self.store.record_event(f"serverGroup.{verb}", name, f"{verb} {name}", key=str(key))
        self._run_group(region, name)
        return self._finish(op, OperationStatus.SUCCEEDED, f"{verb} {name}")

    def destroy_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        region = region or self.region
        op, _created = self.store.claim_operation(
            key, OperationKind.DESTROY_SERVER_GROUP, request={"server_group": name}
        )
        if op.done:
            return op
        try:
            group = self.get_server_group(name, region=region)
        except NotFound:
            return self._finish(op, OperationStatus.SUCCEEDED, f"{name} is already gone")
        if group.enabled:
            self._guard(group, f"destroying {name}")
        tag = local_supervisor.DESTROYING_TAG
        self.store.update_server_group(
            self.account, region, name, lambda g: g.replace(enabled=False, tags={**g.tags, tag: "true"})
        )
        self.store.record_event("serverGroup.destroying", name, f"destroying {name}", key=str(key))
        self._run_group(region, name)
        return self._progress(self.store.get_operation(op.id))

    def instances(self, server_group: str, *, region: str | None = None) -> list[Instance]:
        region = region or self.region
        group = self.get_server_group(server_group, region=region)
        self._run_group(region, group.name)
        return list(self.store.list_instances(account=self.account, region=region, server_group=server_group))

    def terminate_instance(
        self,
        server_group: str,
        instance_id: str,
        key: IdempotencyKey,
        *,
        decrement: bool = False,
        region: str | None = None,
    ) -> Operation:
        region = region or self.region
        op, _created = self.store.claim_operation(
            key, OperationKind.TERMINATE_INSTANCE, request={"server_group": server_group, "instance": instance_id}
        )
        if op.done:
            return op
        group = self.get_server_group(server_group, region=region)
        if decrement:
            new = group.capacity.desired - 1
            if new < 0:
                raise InvalidRequest(f"{server_group} has no instance to remove")
            if new == 0:
                self._guard(group, f"terminating the last instance of {server_group}")
            capacity = Capacity(min=min(group.capacity.min, new), max=group.capacity.max, desired=new)
            self.store.update_server_group(self.account, region, server_group, lambda g: g.replace(capacity=capacity))
        self.store.delete_instance(instance_id)
        self.store.record_event("instance.terminated", instance_id, f"terminated {instance_id}", key=str(key))
        self._run_group(region, server_group)
        return self._finish(op, OperationStatus.SUCCEEDED, f"terminated {instance_id}")

    # ----------------------------------------------------------------------- load balancers, firewalls

    def upsert_load_balancer(self, load_balancer: LoadBalancer, key: IdempotencyKey) -> Operation:
        op, _created = self.store.claim_operation(
            key, OperationKind.UPSERT_LOAD_BALANCER, request=load_balancer.to_dict()
        )
        if op.done:
            return op
        self.store.put_load_balancer(load_balancer)
        local_proxy.ensure_running(
            self.store, self.home, load_balancer.account, load_balancer.region, load_balancer.name
        )
        ports = ", ".join(str(listener.port) for listener in load_balancer.listeners)
        return self._finish(op, OperationStatus.SUCCEEDED, f"{load_balancer.name} listens on 127.0.0.1:{ports}")

    def list_load_balancers(self, *, application: str | None = None, region: str | None = None) -> list[LoadBalancer]:
        return self.store.list_load_balancers(
            account=self.account, region=region or self.region, application=application
        )

    def delete_load_balancer(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        region = region or self.region
        op, _created = self.store.claim_operation(key, OperationKind.DELETE_LOAD_BALANCER, request={"name": name})
        if op.done:
            return op
        lb = self.store.get_load_balancer(self.account, region, name)
        serving = [
            g.name
            for g in self.store.list_server_groups(account=self.account, region=region)
            if g.enabled and local_proxy.serves(lb, g)
        ]
        if serving:
            raise InvalidRequest(f"{name} still serves {', '.join(serving)}; disable or destroy them first")
        self.store.delete_load_balancer(self.account, region, name)  # its proxy exits by itself
        return self._finish(op, OperationStatus.SUCCEEDED, f"deleted {name}")

    def upsert_firewall(self, firewall: Firewall, key: IdempotencyKey) -> Operation:
        op, _created = self.store.claim_operation(key, OperationKind.UPSERT_FIREWALL, request=firewall.to_dict())
        if op.done:
            return op
        self.store.put_firewall(firewall)
        return self._finish(op, OperationStatus.SUCCEEDED, f"{firewall.name}: {len(firewall.rules)} rule(s)")

    def list_firewalls(self, *, application: str | None = None, region: str | None = None) -> list[Firewall]:
        return self.store.list_firewalls(account=self.account, region=region or self.region, application=application)

    def delete_firewall(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        region = region or self.region
        op, _created = self.store.claim_operation(key, OperationKind.DELETE_FIREWALL, request={"name": name})
        if op.done:
            return op
        users = [
            g.name for g in self.store.list_server_groups(account=self.account, region=region) if name in g.firewalls
        ]
        if users:
            raise InvalidRequest(f"{name} is used by {', '.join(users)}; remove it from them first")
        self.store.delete_firewall(self.account, region, name)
        return self._finish(op, OperationStatus.SUCCEEDED, f"deleted {name}")

    # ----------------------------------------------------------------------- metrics, operations

    def metrics(
        self,
        server_group: str,
        names: Sequence[str],
        start: datetime,
        end: datetime,
        step: timedelta,
        *,
        region: str | None = None,
    ) -> dict[str, MetricSeries]:
        unknown = [n for n in names if n not in LOCAL_METRICS]
        if unknown:
            raise InvalidRequest(f"unknown local metric(s) {unknown}; the local source has {list(LOCAL_METRICS)}")
        buckets = local_proxy.read_metrics(self.store, self.account, region or self.region, server_group, start, end)
        seconds = max(step.total_seconds(), 1.0)
        count = max(int((end - start).total_seconds() // seconds), 0)
        slots: list[list[Any]] = [[] for _ in range(count)]
        for bucket in buckets:
            i = int((bucket.ts - start.timestamp()) // seconds)
            if 0 <= i < count:
                slots[i].append(bucket)
        return {
            name: MetricSeries(
                name=name,
                server_group=server_group,
                start=start,
                step_seconds=seconds,
                values=tuple(_aggregate(name, slot) for slot in slots),
            )
            for name in names
        }

    def operation(self, operation_id: str) -> Operation:
        return self._progress(self.store.get_operation(operation_id))

    # ----------------------------------------------------------------------- helpers

    def _progress(self, op: Operation) -> Operation:
        """Finish a resize or destroy that the supervisor has carried out."""
        if op.done:
            return op
        name = str(op.request.get("server_group"))
        if op.kind is OperationKind.DESTROY_SERVER_GROUP:
            try:
                self.get_server_group(name)
            except NotFound:
                return self._finish(op, OperationStatus.SUCCEEDED, f"destroyed {name}")
            self._run_group(self.region, name)
            return op
        if op.kind is OperationKind.RESIZE_SERVER_GROUP:
            group = self.get_server_group(name)
            running = len(group.instances)
            if running == group.capacity.desired:
                return self._finish(op, OperationStatus.SUCCEEDED, f"{name}: {running} instance(s)")
            self._run_group(self.region, name)
            return self.store.update_operation(
                op.id, message=f"{name}: {running} of {group.capacity.desired} instance(s)"
            )
        return op

    def _finish(
        self, op: Operation, status: OperationStatus, message: str, result: Mapping[str, Any] | None = None
    ) -> Operation:
        try:
            return self.store.update_operation(op.id, status=status, message=message, result=result)
        except InvalidRequest:  # a concurrent retry finished it first
            return self.store.get_operation(op.id)

    def _run_group(self, region: str, name: str) -> None:
        """Make sure the group's supervisor (and its load balancers' proxies) run."""
        local_supervisor.ensure_running(self.store, self.home, self.account, region, name)
        try:
            group = self.store.get_server_group(self.account, region, name)
        except NotFound:
            return
        for lb in group.load_balancers:
            try:
                local_proxy.ensure_running(self.store, self.home, self.account, region, lb)
            except NotFound:
                continue  # named but not created (yet): nothing to route

    def _guard(self, group: ServerGroup, action: str) -> None:
        """Refuse ``action`` if ``group`` is the last serving group of a guarded cluster."""
        cluster = parse_server_group_name(group.name).cluster
        if cluster not in self.guarded_clusters:
            return
        others = [
            g
            for g in self.store.list_server_groups(account=self.account, region=group.region, cluster=cluster)
            if g.name != group.name and g.enabled and any(i.health is Health.UP for i in g.instances)
        ]
        if not others:
            raise TrafficGuardViolation(
                f"{action} would leave the guarded cluster {cluster} without an enabled, healthy server group"
            )


def _aggregate(name: str, buckets: Sequence[Any]) -> float | None:
    requests = sum(b.requests for b in buckets)
    if name == "requests":
        return float(requests)
    if name == "errors":
        return float(sum(b.errors for b in buckets))
    if not requests:
        return None
    if name == "error_rate":
        return sum(b.errors for b in buckets) / requests
    if name == "latency_mean":
        return sum(b.latency_sum_ms for b in buckets) / requests
    quantile = {"latency_p50": 0.5, "latency_p90": 0.9, "latency_p99": 0.99}[name]
    merged = [sum(col) for col in zip(*(b.histogram for b in buckets), strict=False)]
    return local_proxy.histogram_quantile(merged, quantile, max(b.latency_max_ms for b in buckets))
