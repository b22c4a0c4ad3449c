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
a retry after a crash bakes again, which finds or finishes the same image; a transient
:class:`ProviderUnavailable` is raised and leaves the operation running for that retry).
Create, load balancer and firewall changes are state changes the supervisor and proxies
pick up within half a second: their operations end at once. Enable and disable end
:data:`LB_SETTLE_SECONDS` after the change, by when every proxy has re-read its routing
table (every :data:`local_proxy.REFRESH_SECONDS`): once a disable has SUCCEEDED no new
request goes to the group. Resize ends when the group has ``desired`` instances and no
process beyond them. Destroy disables the group first (and waits as disable does), then tags
it ``gennaker:destroying``: its supervisor stops the processes and exits, and the operation
ends once it has, deleting the group's record (its name is released). :meth:`LocalProvider.operation`
checks. Waiting for health is the caller's (a deferred trigger polls :meth:`instances`).
Every read of server groups and instances is corrected by :func:`local_watchdog.observe`:
an instance whose process has ended reads Down, and a silent supervisor's instances Unknown.

Requests are checked before anything is recorded: an unknown image, instance or load
balancer, a listener port taken by another program, a traffic guard. Such a call raises
and leaves no operation behind, so a retry with the same key after the cause is fixed
does the work.

Traffic guards: clusters named in ``guarded_clusters`` (the connection's extra
``traffic_guards``) never lose their last enabled server group with an Up instance:
disabling, destroying, resizing to 0 or terminating the last instance of an enabled
group raises :class:`TrafficGuardViolation` unless another enabled group of the cluster
has an Up instance.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from gennaker.cloud.limits import Limits, desired_total, local_limits
from gennaker.cloud.local import images as local_images
from gennaker.cloud.local import processes
from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local import watchdog as local_watchdog
from gennaker.cloud.local.account import LocalAccount
from gennaker.cloud.local.state import StateStore
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
from gennaker.errors import (
    CloudError,
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    TrafficGuardViolation,
)
from gennaker.paths import gennaker_home
from gennaker.redact import redact_url

log = logging.getLogger(__name__)

# Series the local metric source offers (per second, from the load balancers' proxies).
LOCAL_METRICS = ("requests", "errors", "error_rate", "latency_mean", "latency_p50", "latency_p90", "latency_p99")

LB_SETTLE_SECONDS = 4 * local_proxy.REFRESH_SECONDS
"""How long after an enable or disable every running proxy has re-read its routing table."""
LISTEN_TIMEOUT = 10.0
"""How long an upsert waits for a running proxy to open a new listener."""

DESTROYING_TAG = local_supervisor.DESTROYING_TAG


class LocalProvider(LocalAccount, CloudProvider):
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
        limits: Limits | None = None,
    ) -> None:
        super().__init__(account, region)
        self._limits = limits if limits is not None else local_limits()
        self.home = Path(home).expanduser().absolute() if home is not None else gennaker_home()
        self._own_store = store is None
        self.store = store or StateStore(self.home / "local" / "state.db")
        self.guarded_clusters = frozenset(guarded_clusters)

    @property
    def limits(self) -> Limits:
        """Capacity limits: the connection's extra, else ``GENNAKER_LOCAL_MAX_*``, else 20 per group, 100 in all."""
        return self._limits

    def close(self) -> None:
        if self._own_store:
            self.store.close()

    # ----------------------------------------------------------------------- images

    def bake(self, request: BakeRequest, key: IdempotencyKey) -> Operation:
        # The recorded request (state.db, the Clusters API) keeps the artifact URL without its credentials.
        recorded = {**request.to_dict(), "artifact": request.artifact and redact_url(request.artifact)}
        op = self._claim(key, OperationKind.BAKE, recorded)
        if op.done:
            return op
        try:
            image = local_images.bake(self.store, request, home=self.home)
        except ProviderUnavailable:
            raise  # transient (a lock, a download): the operation stays RUNNING and a retry bakes again
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
        region = spec.region or self.region
        cluster = cluster_name(spec.application, spec.stack, spec.detail)

        def check() -> None:
            self.store.get_image(spec.image_id)  # NotFound before anything is recorded
            self._check_capacity(spec.capacity, f"the next server group of {cluster}", self._created_by(key))

        op = self._claim(key, OperationKind.CREATE_SERVER_GROUP, spec.to_dict(), check)
        if op.done:
            return op
        image = self.store.get_image(spec.image_id)
        name = self.store.allocate_server_group_name(
            account=self.account, region=region, cluster=cluster, reserved_by=key
        )
        op = self.store.update_operation(op.id, result={"server_group": name})
        try:
            self.store.get_server_group(self.account, region, name)
        except NotFound:
            image_path = (image.manifest.get("health_check") or {}).get("path")
            health_check = {**({"path": image_path} if image_path else {}), **spec.health_check}
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
                    health_check=health_check,
                    environment=spec.environment,
                    created_by=spec.created_by or key.created_by(),
                    tags=spec.tags,
                )
            )
            self.store.record_event(
                "serverGroup.created", name, f"created {name} from {spec.image_id}", account=self.account, key=key
            )
        self._run_group(region, name)
        return self._finish(op, OperationStatus.SUCCEEDED, f"created {name}", {"server_group": name})

    def get_server_group(self, name: str, *, region: str | None = None) -> ServerGroup:
        return self.observe(self.store.get_server_group(self.account, region or self.region, name))

    def list_server_groups(
        self, application: str, *, cluster: str | None = None, region: str | None = None
    ) -> list[ServerGroup]:
        groups = self.store.list_server_groups(
            account=self.account, region=region or self.region, application=application, cluster=cluster
        )
        return [self.observe(group) for group in groups]

    def observe(self, group: ServerGroup) -> ServerGroup:
        """The group's rows as they can be believed now (see :func:`local_watchdog.observe`).

        An instance whose process has ended reads Down; while the group's supervisor has not
        been heard from (its heartbeat is stale), the others read Unknown, saying why.
        """
        return local_watchdog.observe(self.home, group)

    def resize_server_group(
        self, name: str, capacity: Capacity, key: IdempotencyKey, *, region: str | None = None
    ) -> Operation:
        region = region or self.region

        def check() -> None:
            group = self._live_group(region, name, "resize")
            self._check_capacity(capacity, name, group.name)
            if capacity.desired == 0:
                self._guard(group, f"resizing {name} to 0")

        request = {"server_group": name, "region": region, "capacity": capacity.to_dict()}
        op = self._claim(key, OperationKind.RESIZE_SERVER_GROUP, request, check)
        if op.done:
            return op
        self.store.update_server_group(self.account, region, name, lambda g: g.replace(capacity=capacity))
        self.store.record_event(
            "serverGroup.resized",
            name,
            f"resized {name} to {capacity.desired} (min {capacity.min}, max {capacity.max})",
            account=self.account,
            key=key,
        )
        self._run_group(region, name)
        return self._progress(self.store.get_operation(op.id))

    def enable_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        return self._set_enabled(name, True, key, region or self.region)

    def disable_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        return self._set_enabled(name, False, key, region or self.region)

    def _set_enabled(self, name: str, enabled: bool, key: IdempotencyKey, region: str) -> Operation:
        kind = OperationKind.ENABLE_SERVER_GROUP if enabled else OperationKind.DISABLE_SERVER_GROUP
        verb = "enabled" if enabled else "disabled"

        def check() -> None:
            group = self._live_group(region, name, "enable" if enabled else "disable")
            if not enabled:
                self._guard(group, f"disabling {name}")

        op = self._claim(key, kind, {"server_group": name, "region": region}, check)
        if op.done:
            return op
        group = self.get_server_group(name, region=region)
        if group.enabled == enabled:
            return self._finish(op, OperationStatus.SUCCEEDED, f"{name} was already {verb}")
        who = None if enabled else f"{key.dag_id}.{key.task_id}"
        self.store.update_server_group(
            self.account,
            region,
            name,
            lambda g: g.replace(enabled=enabled, disabled_by=who, disabled_at=None if enabled else utcnow()),
        )
        self.store.record_event(f"serverGroup.{verb}", name, f"{verb} {name}", account=self.account, key=key)
        self._run_group(region, name)
        balancers = [lb.name for lb in self._load_balancers_of(group)]
        if not balancers:
            return self._finish(op, OperationStatus.SUCCEEDED, f"{verb} {name}")
        # Done once every proxy has re-read its routing table (requests in flight finish where they are).
        op = self.store.update_operation(
            op.id,
            message=f"{verb} {name}; waiting for {', '.join(balancers)} to follow",
            result={"settle_until": time.time() + LB_SETTLE_SECONDS},
        )
        return self._progress(op)

    def destroy_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        region = region or self.region

        def check() -> None:
            try:
                group = self.get_server_group(name, region=region)
            except NotFound:
                return  # the goal is reached: the operation succeeds
            if not group.tags.get(DESTROYING_TAG):
                self._guard(group, f"destroying {name}")

        op = self._claim(key, OperationKind.DESTROY_SERVER_GROUP, {"server_group": name, "region": region}, check)
        if op.done:
            return op
        try:
            group = self.get_server_group(name, region=region)
        except NotFound:
            return self._finish(op, OperationStatus.SUCCEEDED, f"{name} is already gone")
        if group.enabled:  # disable first: the proxies stop sending it new requests before its processes stop
            self.store.update_server_group(
                self.account,
                region,
                name,
                lambda g: g.replace(enabled=False, disabled_by=f"{key.dag_id}.{key.task_id}", disabled_at=utcnow()),
            )
            self.store.record_event(
                "serverGroup.disabled", name, f"disabled {name} to destroy it", account=self.account, key=key
            )
            if self._load_balancers_of(group):
                op = self.store.update_operation(
                    op.id,
                    message=f"destroying {name}: disabled; waiting for its load balancers to follow",
                    result={"settle_until": time.time() + LB_SETTLE_SECONDS},
                )
        return self._progress(self.store.get_operation(op.id))

    def instances(self, server_group: str, *, region: str | None = None) -> list[Instance]:
        region = region or self.region
        group = self.get_server_group(server_group, region=region)
        self._run_group(region, group.name)
        return list(self.get_server_group(server_group, region=region).instances)

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

        def check() -> None:
            group = self._live_group(region, server_group, "terminate an instance of")
            if instance_id not in {instance.id for instance in group.instances}:
                raise NotFound(
                    f"instance {instance_id} is not an instance of {server_group}",
                    hint=f"list the instances of {server_group}; it may have been terminated or replaced already",
                )
            if decrement and group.capacity.desired <= 1:
                self._guard(group, f"terminating the last instance of {server_group}")

        request = {"server_group": server_group, "region": region, "instance": instance_id, "decrement": decrement}
        op = self._claim(key, OperationKind.TERMINATE_INSTANCE, request, check)
        if op.done:
            return op
        with self.store.transaction():  # one write: a supervisor pass never sees the lower desired alone
            group = self.get_server_group(server_group, region=region)
            if decrement and instance_id in {instance.id for instance in group.instances}:
                new = max(group.capacity.desired - 1, 0)
                capacity = Capacity(min=min(group.capacity.min, new), max=group.capacity.max, desired=new)
                self.store.update_server_group(
                    self.account, region, server_group, lambda g: g.replace(capacity=capacity)
                )
            self.store.delete_instance(instance_id)
        what = "and lowered desired by one" if decrement else "(it will be replaced)"
        self.store.record_event(
            "instance.terminated",
            instance_id,
            f"terminated {instance_id} of {server_group} {what}",
            account=self.account,
            key=key,
            data={"server_group": server_group, "decrement": decrement},
        )
        self._run_group(region, server_group)
        return self._finish(op, OperationStatus.SUCCEEDED, f"terminated {instance_id} {what}")

    # ----------------------------------------------------------------------- load balancers, firewalls

    def upsert_load_balancer(self, load_balancer: LoadBalancer, key: IdempotencyKey) -> Operation:
        account, region, name = load_balancer.account, load_balancer.region, load_balancer.name
        op = self._claim(
            key, OperationKind.UPSERT_LOAD_BALANCER, load_balancer.to_dict(), lambda: self._check_ports(load_balancer)
        )
        if op.done:
            return op
        try:
            previous: LoadBalancer | None = self.store.get_load_balancer(account, region, name)
        except NotFound:
            previous = None
        self.store.put_load_balancer(load_balancer)
        ports = [listener.port for listener in load_balancer.listeners]
        try:
            local_proxy.ensure_running(self.store, self.home, account, region, name)
            self._wait_listening(ports, name)
        except CloudError as error:
            # Put back what served before, so a failed change leaves the load balancer as it was.
            if previous is not None:
                self.store.put_load_balancer(previous)
            else:
                self.store.delete_load_balancer(account, region, name)
            if error.retryable:
                raise
            self._finish(op, OperationStatus.FAILED, f"{name}: {error}")
            raise
        shown = ", ".join(str(port) for port in ports) or "no port"
        return self._finish(op, OperationStatus.SUCCEEDED, f"{name} listens on 127.0.0.1:{shown}")

    def list_load_balancers(self, *, application: str | None = None, region: str | None = None) -> list[LoadBalancer]:
        return self.store.list_load_balancers(
            account=self.account, region=region or self.region, application=application
        )

    def delete_load_balancer(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        region = region or self.region

        def check() -> None:
            try:
                lb = self.store.get_load_balancer(self.account, region, name)
            except NotFound:
                return  # already gone: the operation succeeds
            serving = [
                g.name
                for g in self.store.list_server_groups(account=self.account, region=region)
                if g.enabled and local_proxy.serves(lb, g)
            ]
            if serving:
                raise InvalidRequest(
                    f"{name} still serves {', '.join(serving)}",
                    hint="disable or destroy them first, or take them off the load balancer",
                )

        op = self._claim(key, OperationKind.DELETE_LOAD_BALANCER, {"name": name, "region": region}, check)
        if op.done:
            return op
        if not self.store.delete_load_balancer(self.account, region, name):
            return self._finish(op, OperationStatus.SUCCEEDED, f"{name} is already gone")
        # The proxy exits by itself within a refresh; stopping it here frees its ports at once.
        local_proxy.stop(self.store, self.home, self.account, region, name, timeout=10.0)
        local_proxy.forget_metrics(self.store, self.account, region, name)  # after the proxy's last flush
        return self._finish(op, OperationStatus.SUCCEEDED, f"deleted {name}")

    def upsert_firewall(self, firewall: Firewall, key: IdempotencyKey) -> Operation:
        op = self._claim(key, OperationKind.UPSERT_FIREWALL, firewall.to_dict())
        if op.done:
            return op
        self.store.put_firewall(firewall)
        return self._finish(op, OperationStatus.SUCCEEDED, f"{firewall.name}: {len(firewall.rules)} rule(s)")

    def list_firewalls(self, *, application: str | None = None, region: str | None = None) -> list[Firewall]:
        return self.store.list_firewalls(account=self.account, region=region or self.region, application=application)

    def delete_firewall(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        region = region or self.region

        def check() -> None:
            users = [
                g.name
                for g in self.store.list_server_groups(account=self.account, region=region)
                if name in g.firewalls
            ]
            if users:
                raise InvalidRequest(f"{name} is used by {', '.join(users)}", hint="remove it from them first")

        op = self._claim(key, OperationKind.DELETE_FIREWALL, {"name": name, "region": region}, check)
        if op.done:
            return op
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
        seconds = max(step.total_seconds(), 1.0)  # the proxies record whole seconds
        count = max(math.ceil((end - start).total_seconds() / seconds), 0)  # [start, end): a last partial step too
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

    def _claim(
        self,
        key: IdempotencyKey,
        kind: OperationKind,
        request: Mapping[str, Any],
        check: Callable[[], None] | None = None,
    ) -> Operation:
        """The key's operation; ``check`` runs first unless the key's operation already ended.

        A ``check`` that raises leaves nothing recorded for a new key, so the same key
        can be used again once the cause is fixed.
        """
        if self.store.find_operation(key) is not None:
            op, _created = self.store.claim_operation(key, kind, request=request)  # IdempotencyConflict
            if op.done:
                return op
            if check is not None:
                check()  # an interrupted try: the request must still hold
            return op
        if check is not None:
            check()
        op, _created = self.store.claim_operation(key, kind, request=request)
        return op

    def _check_capacity(self, capacity: Capacity, what: str, replaces: str | None) -> None:
        """Refuse a capacity above the limits (``replaces``: the group whose own desired count it replaces)."""
        others = desired_total(self.store.list_server_groups(account=self.account), excluding=replaces)
        self.limits.check(capacity, what, account=self.account, others=others)

    def _created_by(self, key: IdempotencyKey) -> str | None:
        """The server group an interrupted create with ``key`` made already (it must not count twice)."""
        op = self.store.find_operation(key)
        return None if op is None else op.result.get("server_group")

    def _live_group(self, region: str, name: str, action: str) -> ServerGroup:
        group = self.get_server_group(name, region=region)
        if group.tags.get(DESTROYING_TAG):
            raise InvalidRequest(f"cannot {action} {name}: it is being destroyed", hint="deploy a new server group")
        return group

    def _progress(self, op: Operation) -> Operation:
        """Finish an operation whose work is done (resize, destroy, enable, disable)."""
        if op.done:
            return op
        name = str(op.request.get("server_group"))
        region = str(op.request.get("region") or self.region)
        if op.kind is OperationKind.DESTROY_SERVER_GROUP:
            return self._destroy_progress(op, region, name)
        if op.kind is OperationKind.RESIZE_SERVER_GROUP:
            try:
                group = self.get_server_group(name, region=region)
            except NotFound:
                return self._finish(op, OperationStatus.FAILED, f"{name} was destroyed while it was being resized")
            desired = group.capacity.desired
            rows = {instance.id for instance in group.instances}
            running = local_supervisor.instance_pids(self.home, self.account, region, name)
            extra = sorted(set(running) - rows)
            if len(rows) == desired and not extra:
                up = sum(instance.health is Health.UP for instance in group.instances)
                return self._finish(op, OperationStatus.SUCCEEDED, f"{name}: {desired} instance(s), {up} Up")
            self._run_group(region, name)
            stopping = f"; stopping {len(extra)}" if extra else ""
            return self._update(op, f"{name}: {len(rows)} of {desired} instance(s){stopping}")
        if op.kind in (OperationKind.ENABLE_SERVER_GROUP, OperationKind.DISABLE_SERVER_GROUP):
            settle_until = float(op.result.get("settle_until") or 0.0)
            if time.time() >= settle_until:
                verb = "enabled" if op.kind is OperationKind.ENABLE_SERVER_GROUP else "disabled"
                return self._finish(op, OperationStatus.SUCCEEDED, f"{verb} {name}")
        return op

    def _destroy_progress(self, op: Operation, region: str, name: str) -> Operation:
        try:
            group = self.get_server_group(name, region=region)
        except NotFound:
            return self._finish(op, OperationStatus.SUCCEEDED, f"destroyed {name}")
        if not group.tags.get(DESTROYING_TAG):
            if time.time() < float(op.result.get("settle_until") or 0.0):
                return op  # the proxies are still taking it out of their routing tables
            # Tagged, its supervisor stops the instances, deletes their rows and exits (and none is started again).
            self.store.update_server_group(
                self.account, region, name, lambda g: g.replace(enabled=False, tags={**g.tags, DESTROYING_TAG: "true"})
            )
            self.store.record_event("serverGroup.destroying", name, f"destroying {name}", account=self.account)
        if local_supervisor.supervisor_pid(self.home, self.account, region, name) is not None:
            return self._update(op, f"destroying {name}: its supervisor is stopping {len(group.instances)} instance(s)")
        if self._supervisor_exiting(region, name):
            return self._update(op, f"destroying {name}: its supervisor is exiting")
        # The supervisor has stopped the instances and exited (or was not running): finish here.
        local_supervisor.reconcile_once(self.store, self.home, self.account, region, name)
        self.store.delete_server_group(self.account, region, name)
        self.store.record_event("serverGroup.destroyed", name, f"destroyed {name}", account=self.account, key=op.key)
        return self._finish(op, OperationStatus.SUCCEEDED, f"destroyed {name}")

    def _supervisor_exiting(self, region: str, name: str) -> bool:
        """The group's last supervisor let go of its lock but its process has not ended yet."""
        paths = local_supervisor.SupervisorPaths.of(self.home, self.account, region, name)
        return local_supervisor.is_supervisor(processes.read_pid(paths.alive_file), paths)

    def _update(self, op: Operation, message: str) -> Operation:
        if op.message == message:
            return op
        try:
            return self.store.update_operation(op.id, message=message)
        except InvalidRequest:  # a concurrent poll finished it
            return self.store.get_operation(op.id)

    def _finish(
        self, op: Operation, status: OperationStatus, message: str, result: Mapping[str, Any] | None = None
    ) -> Operation:
        try:
            return self.store.update_operation(op.id, status=status, message=message, result=result)
        except InvalidRequest:  # a concurrent retry finished it first
            return self.store.get_operation(op.id)

    def _run_group(self, region: str, name: str) -> None:
        """Make sure the group's supervisor (and its load balancers' proxies) run; none for a destroyed group."""
        try:
            group = self.store.get_server_group(self.account, region, name)
        except NotFound:
            return
        if group.tags.get(DESTROYING_TAG):
            return  # its supervisor stops the instances and exits; _destroy_progress finishes without one
        local_supervisor.ensure_running(self.store, self.home, self.account, region, name)
        for lb in self._load_balancers_of(group):
            try:
                local_proxy.ensure_running(self.store, self.home, lb.account, lb.region, lb.name)
            except CloudError as error:  # the group runs anyway; upsert_load_balancer reports this
                log.warning("load balancer %s of %s is not running: %s", lb.name, name, error)

    def _load_balancers_of(self, group: ServerGroup) -> list[LoadBalancer]:
        """The load balancers that serve the group: named by it, or serving its cluster."""
        return [
            lb
            for lb in self.store.list_load_balancers(account=group.account, region=group.region)
            if local_proxy.serves(lb, group)
        ]

    def _check_ports(self, load_balancer: LoadBalancer) -> None:
        """Refuse listener ports that another load balancer has or another program holds."""
        account, region, name = load_balancer.account, load_balancer.region, load_balancer.name
        ports = [listener.port for listener in load_balancer.listeners]
        doubled = sorted({port for port in ports if ports.count(port) > 1})
        if doubled:
            raise InvalidRequest(f"load balancer {name} lists port(s) {doubled} more than once")
        for other in self.store.list_load_balancers():
            if (other.account, other.region, other.name) == (account, region, name):
                continue
            shared = sorted({listener.port for listener in other.listeners} & set(ports))
            if shared:
                raise InvalidRequest(
                    f"port(s) {shared} of load balancer {name} are listeners of load balancer {other.name}",
                    hint="every local load balancer needs ports of its own on 127.0.0.1; choose another port",
                )
        held: set[int] = set()  # ports this load balancer's own running proxy listens on
        if local_proxy.running_pid(self.home, account, region, name) is not None:
            try:
                held = {listener.port for listener in self.store.get_load_balancer(account, region, name).listeners}
            except NotFound:
                held = set()
        for port in ports:
            if port not in held and not processes.port_free(port):
                raise local_proxy.ListenerPortInUse(port)

    def _wait_listening(self, ports: Sequence[int], name: str) -> None:
        """Wait until every port accepts connections (a running proxy opens new listeners within a refresh)."""
        deadline = time.monotonic() + LISTEN_TIMEOUT
        waiting = list(ports)
        while waiting:
            waiting = [port for port in waiting if not processes.listening(port)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    f"load balancer {name} is not listening on 127.0.0.1 port(s) {waiting} after {LISTEN_TIMEOUT:g}s",
                    hint=f"see {local_proxy.log_file(self.home, name)}",
                )
            time.sleep(0.05)

    def _guard(self, group: ServerGroup, action: str) -> None:
        """Refuse ``action`` if ``group`` is the last enabled group with an Up instance of a guarded cluster."""
        cluster = parse_server_group_name(group.name).cluster
        if cluster not in self.guarded_clusters or not group.enabled:
            return
        groups = self.store.list_server_groups(account=self.account, region=group.region, cluster=cluster)
        others = [
            g.name
            for g in map(self.observe, groups)  # a silent supervisor's Up rows do not count
            if g.name != group.name
            and g.enabled
            and not g.tags.get(DESTROYING_TAG)
            and any(i.health is Health.UP for i in g.instances)
        ]
        if not others:
            raise TrafficGuardViolation(
                f"{action} would leave the guarded cluster {cluster} without an enabled server group with an Up "
                "instance",
                hint=f"deploy or enable another server group of {cluster} and wait until it is Up first, or remove "
                f"{cluster} from the account's traffic_guards",
            )


def stop_everything(home: Path | None = None) -> list[str]:
    """Stop every supervisor (and so its instances) and load-balancer proxy of a home; what was stopped.

    The state is kept: the next call that needs a server group or load balancer starts its
    processes again (reconcile on use), as after a machine restart.
    """
    from gennaker.paths import gennaker_home

    home = home or gennaker_home()
    stopped: list[str] = []
    for alive in sorted((home / "local" / "run").glob("*/*/*.alive")):
        account, region, group = alive.parent.parent.name, alive.parent.name, alive.name.removesuffix(".alive")
        if local_supervisor.stop(home, account, region, group, timeout=15):
            stopped.append(f"server group {group} ({account}/{region})")
    state = home / "local" / "state.db"
    if state.exists():
        store = StateStore(state)
        try:
            for lb in store.list_load_balancers():
                if local_proxy.stop(store, home, lb.account, lb.region, lb.name, timeout=10):
                    stopped.append(f"load balancer {lb.name} ({lb.account}/{lb.region})")
        finally:
            store.close()
    return stopped


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
