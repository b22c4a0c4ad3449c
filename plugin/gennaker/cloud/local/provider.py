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
A group being destroyed reads ``destroying`` (the model's field; the tag stays for the supervisors).

Reads for the Clusters page: :meth:`LocalProvider.inventory` reads a whole account in bulk,
:meth:`LocalProvider.history` a cluster's events from the audit log, and
:meth:`LocalProvider.recorded_operation` an operation without moving it on
(:mod:`~gennaker.cloud.local.provider_reads`); none starts a process.

The class is assembled from :mod:`~gennaker.cloud.local.provider_base` (state, operations,
guards) and :mod:`~gennaker.cloud.local.provider_network` (load balancers, firewalls,
metrics); this module has images, server groups and the progress of long operations.

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

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import ClassVar

from gennaker.cloud.local import images as local_images
from gennaker.cloud.local import processes
from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local import supervisor as local_supervisor
from gennaker.cloud.local.provider_base import DESTROYING_TAG, is_destroying
from gennaker.cloud.local.provider_network import LISTEN_TIMEOUT, LOCAL_METRICS, LocalNetwork
from gennaker.cloud.local.provider_reads import read_cluster_events, read_server_groups
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import (
    BakeRequest,
    Capacity,
    ClusterEvent,
    Health,
    Image,
    Instance,
    Operation,
    OperationKind,
    OperationStatus,
    ServerGroup,
    ServerGroupSpec,
    utcnow,
)
from gennaker.cloud.naming import cluster_name
from gennaker.cloud.provider import IdempotencyKey, Inventory
from gennaker.errors import NotFound, ProviderUnavailable
from gennaker.redact import redact_url

LB_SETTLE_SECONDS = 4 * local_proxy.REFRESH_SECONDS
"""How long after an enable or disable every running proxy has re-read its routing table."""


class LocalProvider(LocalNetwork):
    """Server groups as supervised processes on 127.0.0.1, load balancers as local proxies."""

    kind: ClassVar[str] = "local"

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
            if not is_destroying(group):
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

    # ----------------------------------------------------------------------- operations, reads

    def operation(self, operation_id: str) -> Operation:
        return self._progress(self.store.get_operation(operation_id))

    def recorded_operation(self, operation_id: str) -> Operation:
        """The operation as recorded: unlike :meth:`operation`, nothing is finished or advanced."""
        return self.store.get_operation(operation_id)

    def history(self, cluster: str, *, before: int | None = None, limit: int = 200) -> list[ClusterEvent]:
        """The cluster's changes in this account (all regions), newest first, from the recorded events."""
        return read_cluster_events(self.store, self.account, cluster, before=before, limit=limit)

    def inventory(self, applications: Iterable[str] = ()) -> Inventory:
        """The whole account (all regions) in bulk, without starting a supervisor (unlike :meth:`instances`)."""
        store = self.store
        groups = [self.observe(group) for group in read_server_groups(store, self.account)]  # stale rows: Unknown
        used = {group.image_id for group in groups}
        return Inventory(
            server_groups=tuple(groups),
            load_balancers=tuple(store.list_load_balancers(account=self.account)),
            firewalls=tuple(store.list_firewalls(account=self.account)),
            images={image.id: image for image in store.find_images() if image.id in used},
        )

    # ----------------------------------------------------------------------- helpers

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
        if not is_destroying(group):
            if time.time() < float(op.result.get("settle_until") or 0.0):
                return op  # the proxies are still taking it out of their routing tables
            # Marked (the field, and the tag its supervisor reads: those of earlier versions too), its supervisor
            # stops the instances, deletes their rows and exits (and none is started again).
            self.store.update_server_group(
                self.account,
                region,
                name,
                lambda g: g.replace(enabled=False, destroying=True, tags={**g.tags, DESTROYING_TAG: "true"}),
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


__all__ = ["DESTROYING_TAG", "LB_SETTLE_SECONDS", "LISTEN_TIMEOUT", "LOCAL_METRICS", "LocalProvider", "stop_everything"]
