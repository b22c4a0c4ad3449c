"""An in-memory CloudProvider for stage and trigger tests: records every call, keeps the idempotency contract.

Import it as ``from fakecloud import FakeProvider`` (``tests/`` is on the path through its conftest).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

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
    NotFound,
    TrafficGuardViolation,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeProvider(CloudProvider):
    """Server groups and images in dicts; operations end at once unless their kind is in ``slow``."""

    kind: ClassVar[str] = "local"

    def __init__(self, account: str = "local", region: str = "local", *, guarded: Iterable[str] = ()) -> None:
        super().__init__(account, region)
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
        raise NotImplementedError

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
        raise NotImplementedError

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
        group = self.get_server_group(name)
        if group.enabled:
            self._guard(group, f"destroying {name}")
        op, created = self._claim(key, OperationKind.DESTROY_SERVER_GROUP, {"server_group": name})
        if not created:
            return op
        self.acted.append(("destroy", name))
        if OperationKind.DESTROY_SERVER_GROUP in self.slow:
            self.groups[name] = group.replace(enabled=False, tags={**group.tags, "gennaker:destroying": "true"})
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
        raise NotImplementedError

    # ----------------------------------------------------------------------- load balancers, firewalls, metrics

    def upsert_load_balancer(self, load_balancer: LoadBalancer, key: IdempotencyKey) -> Operation:
        raise NotImplementedError

    def list_load_balancers(self, *, application: str | None = None, region: str | None = None) -> list[LoadBalancer]:
        return []

    def delete_load_balancer(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        raise NotImplementedError

    def upsert_firewall(self, firewall: Firewall, key: IdempotencyKey) -> Operation:
        raise NotImplementedError

    def list_firewalls(self, *, application: str | None = None, region: str | None = None) -> list[Firewall]:
        return []

    def delete_firewall(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        raise NotImplementedError

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
