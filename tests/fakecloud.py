"""An in-memory CloudProvider for stage and trigger tests: records every call, keeps the idempotency contract.

Import it as ``from fakecloud import FakeProvider`` (``tests/`` is on the path through its conftest).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from gennaker.cloud.limits import Limits, desired_total
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
)
from gennaker.cloud.naming import parse_server_group_name
from gennaker.cloud.provider import (
    CloudProvider,
    IdempotencyConflict,
    IdempotencyKey,
    InvalidRequest,
    NotFound,
    TrafficGuardViolation,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeProvider(CloudProvider):
    """Server groups and images in dicts; operations end at once unless their kind is in ``slow``."""

    kind: ClassVar[str] = "local"

    def __init__(
        self,
        account: str = "local",
        region: str = "local",
        *,
        guarded: Iterable[str] = (),
        limits: Limits | None = None,
    ) -> None:
        super().__init__(account, region)
        self._limits = limits or Limits()
        self.load_balancers: dict[str, LoadBalancer] = {}
        self.firewalls: dict[str, Firewall] = {}
        self.groups: dict[str, ServerGroup] = {}
        self.images: list[Image] = []
        self.ops: dict[str, Operation] = {}
        self.op_by_key: dict[str, str] = {}
        self.calls: list[tuple[str, str, str]] = []  # (method, server group, key) of every mutating call
        self.acted: list[tuple[str, str]] = []  # (method, server group) of calls that did something
        self.guarded = set(guarded)
        self.slow: set[OperationKind] = set()
        self.polls = 0
        self.closed = False
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    @property
    def limits(self) -> Limits:
        return self._limits

    # ----------------------------------------------------------------------- test helpers

    def add_group(
        self,
        name: str,
        *,
        enabled: bool = True,
        desired: int = 2,
        up: int | None = None,
        capacity: Capacity | None = None,
        tags: Mapping[str, str] | None = None,
        destroying: bool = False,
    ) -> ServerGroup:
        capacity = capacity or Capacity(min=min(1, desired), max=max(desired, 1), desired=desired)
        group = ServerGroup(
            name=name,
            account=self.account,
            region=self.region,
            image_id="img-1",
            capacity=capacity,
            enabled=enabled,
            created=T0 + timedelta(minutes=next(self._clock)),
            tags=dict(tags or {}),
            destroying=destroying,
        )
        self.groups[name] = group
        self.set_health(name, up=capacity.desired if up is None else up)
        return self.groups[name]

    def set_health(self, name: str, *, up: int, starting: int = 0, down: int = 0) -> None:
        health = [Health.UP] * up + [Health.STARTING] * starting + [Health.DOWN] * down
        instances = tuple(
            Instance(
                id=f"{name}-i{i}",
                server_group=name,
                host="127.0.0.1",
                port=9000 + i,
                health=h,
                health_reason="connection refused" if h is Health.DOWN else "",
            )
            for i, h in enumerate(health)
        )
        self.groups[name] = self.groups[name].replace(instances=instances)

    def add_image(self, package: str, version: str, *, region: str | None = None, **tags: str) -> Image:
        image = Image(
            id=f"img-{package}-{version}-{region or self.region}",
            name=f"{package}-{version}",
            package=package,
            version=version,
            base="python-3.11",
            region=region or self.region,
            account=self.account,
            inputs_hash=f"{package}-{version}",
            created=T0 + timedelta(minutes=next(self._clock)),
            tags=tags,
        )
        self.images.append(image)
        return image

    def finish(self, op_id: str, status: OperationStatus = OperationStatus.SUCCEEDED, message: str = "") -> None:
        self.ops[op_id] = self.ops[op_id].replace(status=status, message=message or self.ops[op_id].message)

    def keys(self, method: str | None = None) -> list[str]:
        return [key for m, _, key in self.calls if method is None or m == method]

    # ----------------------------------------------------------------------- plumbing

    def _claim(self, key: IdempotencyKey, kind: OperationKind, request: dict[str, Any]) -> tuple[Operation, bool]:
        text = str(key)
        if text in self.op_by_key:
            op = self.ops[self.op_by_key[text]]
            if op.kind is not kind:
                raise IdempotencyConflict(f"key {text} already names a {op.kind} operation")
            return op, False
        op = Operation(id=f"op-{next(self._ids)}", kind=kind, key=text, request=request)
        self.ops[op.id] = op
        self.op_by_key[text] = op.id
        return op, True

    def _done(self, op: Operation, message: str) -> Operation:
        status = OperationStatus.RUNNING if op.kind in self.slow else OperationStatus.SUCCEEDED
        self.ops[op.id] = op.replace(status=status, message=message)
        return self.ops[op.id]

    def _check_capacity(self, capacity: Capacity, what: str, replaces: str | None) -> None:
        others = desired_total(self.groups.values(), excluding=replaces)
        self.limits.check(capacity, what, account=self.account, others=others)

    def _guard(self, group: ServerGroup, action: str) -> None:
        cluster = parse_server_group_name(group.name).cluster
        if cluster not in self.guarded:
            return
        others = [
            g
            for g in self.groups.values()
            if g.cluster == cluster
            and g.name != group.name
            and g.enabled
            and any(i.health is Health.UP for i in g.instances)
        ]
        if not others:
            raise TrafficGuardViolation(
                f"{action} would leave the guarded cluster {cluster} without an enabled, healthy server group"
            )

    # ----------------------------------------------------------------------- images

    def bake(self, request: BakeRequest, key: IdempotencyKey) -> Operation:
        op, created = self._claim(key, OperationKind.BAKE, request.to_dict())
        if not created:
            return op
        region = request.region or self.region
        same = [i for i in self.images if i.region == region and i.inputs_hash == request.inputs_hash()]
        if same and not request.rebake:
            image = same[0]
        else:
            image = Image(
                id=f"img-{next(self._ids)}",
                name=f"{request.package}-{request.version}",
                package=request.package,
                version=request.version,
                application=request.application,
                base=request.base,
                region=region,
                account=self.account,
                inputs_hash=request.inputs_hash(),
                created=T0 + timedelta(minutes=next(self._clock)),
                tags=dict(request.tags),
            )
            self.images.append(image)
        self.ops[op.id] = op.replace(result={"image_id": image.id})
        return self._done(self.ops[op.id], f"baked {image.id}")

    def find_images(
        self,
        *,
        package: str | None = None,
        application: str | None = None,
        tags: Mapping[str, str] | None = None,
        region: str | None = None,
    ) -> list[Image]:
        region = region or self.region
        found = [
            i
            for i in self.images
            if i.region == region
            and (package is None or i.package == package)
            and (application is None or i.application == application)
            and all(i.tags.get(k) == v for k, v in (tags or {}).items())
        ]
        return sorted(found, key=lambda i: i.created, reverse=True)

    def get_image(self, image_id: str, *, region: str | None = None) -> Image:
        for image in self.images:
            if image.id == image_id:
                return image
        raise NotFound(f"no image {image_id}")

    # ----------------------------------------------------------------------- server groups

    def create_server_group(self, spec: ServerGroupSpec, key: IdempotencyKey) -> Operation:
        self.calls.append(("create", spec.cluster, str(key)))
        if str(key) not in self.op_by_key:  # checked before anything is recorded, as every provider does
            self.get_image(spec.image_id)
            self._check_capacity(spec.capacity, f"the next server group of {spec.cluster}", None)
        op, created = self._claim(key, OperationKind.CREATE_SERVER_GROUP, spec.to_dict())
        if not created:
            return op
        # The cluster's next sequence: above every group it has, including one being destroyed.
        sequence = max((g.sequence for g in self.groups.values() if g.cluster == spec.cluster), default=-1) + 1
        group = spec.server_group(sequence, T0 + timedelta(minutes=next(self._clock)))
        name = group.name
        self.acted.append(("create", name))
        self.groups[name] = group.replace(created_by=spec.created_by or key.created_by())
        self.set_health(name, up=spec.capacity.desired)
        self.ops[op.id] = op.replace(result={"server_group": name})
        return self._done(self.ops[op.id], f"created {name}")

    def get_server_group(self, name: str, *, region: str | None = None) -> ServerGroup:
        try:
            return self.groups[name]
        except KeyError:
            raise NotFound(f"server group {name} does not exist in {self.account}/{region or self.region}") from None

    def list_server_groups(
        self, application: str, *, cluster: str | None = None, region: str | None = None
    ) -> list[ServerGroup]:
        groups = [
            g
            for g in self.groups.values()
            if g.application == application and (cluster is None or g.cluster == cluster)
        ]
        return sorted(groups, key=lambda g: g.created)

    def resize_server_group(
        self, name: str, capacity: Capacity, key: IdempotencyKey, *, region: str | None = None
    ) -> Operation:
        self.calls.append(("resize", name, str(key)))
        group = self.get_server_group(name)
        if str(key) not in self.op_by_key:
            self._check_capacity(capacity, name, name)
        if capacity.desired == 0 and group.enabled:
            self._guard(group, f"resizing {name} to 0")
        op, created = self._claim(
            key, OperationKind.RESIZE_SERVER_GROUP, {"server_group": name, "capacity": capacity.to_dict()}
        )
        if not created:
            return op
        self.acted.append(("resize", name))
        self.groups[name] = group.replace(capacity=capacity)
        return self._done(op, f"{name}: resizing to {capacity.desired}")

    def enable_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        return self._set_enabled(name, True, key)

    def disable_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        return self._set_enabled(name, False, key)

    def _set_enabled(self, name: str, enabled: bool, key: IdempotencyKey) -> Operation:
        method = "enable" if enabled else "disable"
        self.calls.append((method, name, str(key)))
        group = self.get_server_group(name)
        if not enabled:
            self._guard(group, f"disabling {name}")
        kind = OperationKind.ENABLE_SERVER_GROUP if enabled else OperationKind.DISABLE_SERVER_GROUP
        op, created = self._claim(key, kind, {"server_group": name})
        if not created:
            return op
        self.acted.append((method, name))
        self.groups[name] = group.replace(enabled=enabled)
        return self._done(op, f"{method}d {name}")

    def destroy_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        self.calls.append(("destroy", name, str(key)))
        if name not in self.groups:  # the goal is reached
            op, created = self._claim(key, OperationKind.DESTROY_SERVER_GROUP, {"server_group": name})
            if created:
                self.ops[op.id] = op.replace(status=OperationStatus.SUCCEEDED, message=f"{name} is already gone")
            return self.ops[op.id]
        group = self.get_server_group(name)
        if group.enabled:
            self._guard(group, f"destroying {name}")
        op, created = self._claim(key, OperationKind.DESTROY_SERVER_GROUP, {"server_group": name})
        if not created:
            return op
        self.acted.append(("destroy", name))
        if OperationKind.DESTROY_SERVER_GROUP in self.slow:
            self.groups[name] = group.replace(enabled=False, destroying=True)
        else:
            del self.groups[name]
        return self._done(op, f"destroying {name}")

    def instances(self, server_group: str, *, region: str | None = None) -> list[Instance]:
        self.polls += 1
        return list(self.get_server_group(server_group).instances)

    def terminate_instance(
        self,
        server_group: str,
        instance_id: str,
        key: IdempotencyKey,
        *,
        decrement: bool = False,
        region: str | None = None,
    ) -> Operation:
        self.calls.append(("terminate", server_group, str(key)))
        group = self.get_server_group(server_group)
        if str(key) not in self.op_by_key and instance_id not in {i.id for i in group.instances}:
            raise NotFound(f"instance {instance_id} is not an instance of {server_group}")
        request = {"server_group": server_group, "instance": instance_id, "decrement": decrement}
        op, created = self._claim(key, OperationKind.TERMINATE_INSTANCE, request)
        if not created:
            return op
        self.acted.append(("terminate", server_group))
        instances = tuple(i for i in group.instances if i.id != instance_id)
        if decrement:
            desired = max(group.capacity.desired - 1, 0)
            capacity = Capacity(min=min(group.capacity.min, desired), max=group.capacity.max, desired=desired)
            group = group.replace(capacity=capacity)
        else:  # the group replaces it
            new = Instance(id=f"{server_group}-i{next(self._ids)}", server_group=server_group, host="127.0.0.1")
            instances += (new.replace(health=Health.UP),)
        self.groups[server_group] = group.replace(instances=instances)
        return self._done(op, f"terminated {instance_id}")

    # ----------------------------------------------------------------------- load balancers, firewalls, metrics

    def upsert_load_balancer(self, load_balancer: LoadBalancer, key: IdempotencyKey) -> Operation:
        op, created = self._claim(key, OperationKind.UPSERT_LOAD_BALANCER, load_balancer.to_dict())
        if created:
            self.load_balancers[load_balancer.name] = load_balancer
            op = self._done(op, f"upserted {load_balancer.name}")
        return op

    def load_balancer_address(self, load_balancer: LoadBalancer) -> str | None:
        """Its DNS name if it has one, else 127.0.0.1 and its first HTTP port, as a local load balancer."""
        if load_balancer.dns_name:
            return load_balancer.dns_name
        ports = [x.port for x in load_balancer.listeners if x.protocol in ("HTTP", "HTTPS")]
        return f"http://127.0.0.1:{ports[0]}" if ports else None

    def list_load_balancers(self, *, application: str | None = None, region: str | None = None) -> list[LoadBalancer]:
        return [lb for lb in self.load_balancers.values() if application in (None, lb.application)]

    def delete_load_balancer(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        lb = self.load_balancers.get(name)
        if lb is not None and str(key) not in self.op_by_key:
            serving = [
                g.name
                for g in self.groups.values()
                if g.enabled and (name in g.load_balancers or g.cluster in lb.clusters)
            ]
            if serving:
                raise InvalidRequest(f"{name} still serves {', '.join(serving)}", hint="disable or destroy them first")
        op, created = self._claim(key, OperationKind.DELETE_LOAD_BALANCER, {"name": name})
        if created:
            self.load_balancers.pop(name, None)
            op = self._done(op, f"deleted {name}")
        return op

    def upsert_firewall(self, firewall: Firewall, key: IdempotencyKey) -> Operation:
        op, created = self._claim(key, OperationKind.UPSERT_FIREWALL, firewall.to_dict())
        if created:
            self.firewalls[firewall.name] = firewall
            op = self._done(op, f"{firewall.name}: {len(firewall.rules)} rule(s)")
        return op

    def list_firewalls(self, *, application: str | None = None, region: str | None = None) -> list[Firewall]:
        return [fw for fw in self.firewalls.values() if application in (None, fw.application)]

    def delete_firewall(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        users = [g.name for g in self.groups.values() if name in g.firewalls]
        if users and str(key) not in self.op_by_key:
            raise InvalidRequest(f"{name} is used by {', '.join(users)}", hint="remove it from them first")
        op, created = self._claim(key, OperationKind.DELETE_FIREWALL, {"name": name})
        if created:
            self.firewalls.pop(name, None)
            op = self._done(op, f"deleted {name}")
        return op

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
        raise NotImplementedError

    def operation(self, operation_id: str) -> Operation:
        try:
            return self.ops[operation_id]
        except KeyError:
            raise NotFound(f"no operation {operation_id}") from None

    def close(self) -> None:
        self.closed = True
