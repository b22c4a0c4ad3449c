"""The cloud model every provider speaks: images, server groups, instances, load balancers, firewalls.

Application -> cluster (``app-stack-detail``) -> server group (``app-stack-detail-v003``:
one image, one launch configuration, never changed by a deploy) -> instances with
health. Load balancers and firewalls belong to an application.

Every class is a frozen pydantic model: validated when built, changed only by making
a new one (:meth:`CloudModel.replace`), and turned into plain JSON-ready dicts and back
(:meth:`CloudModel.to_dict`, :meth:`CloudModel.from_dict`) for the state store, XCom
and the web API. Unknown keys in a dict are ignored, so a record written by a newer
gennaker still loads in an older worker during an upgrade. Times are timezone-aware
(UTC when we make them).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from functools import cached_property
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator
from typing_extensions import Self

from gennaker.cloud.naming import Names, cluster_name, format_server_group_name, parse_server_group_name


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


class CloudModel(BaseModel):
    """Base of the cloud model: frozen, validated, JSON-ready dicts both ways."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (enums as their values, times as ISO 8601 strings)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The inverse of :meth:`to_dict`; raises pydantic's ``ValidationError`` on bad data."""
        return cls.model_validate(dict(data))

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (the model itself is frozen)."""
        data = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).model_validate({**data, **changes})


# --------------------------------------------------------------------------- images


class Image(CloudModel):
    """An immutable, bootable image of one package version, in one account and region.

    AWS: an AMI; Google Cloud: a Compute Engine image; local: an app bundle in the store.
    """

    id: str = Field(min_length=1, description="ami-..., a GCE image selfLink or name, or a local id")
    name: str = Field(min_length=1)
    package: str = Field(min_length=1)
    version: str = Field(min_length=1)
    application: str | None = Field(default=None, description="the application whose pipeline baked it")
    base: str = Field(description="the base image or runtime it was baked on, e.g. python-3.11")
    region: str
    account: str
    inputs_hash: str = Field(description="hash of everything that went into the bake; equal hash = same image")
    created: AwareDatetime = Field(default_factory=utcnow)
    tags: dict[str, str] = Field(default_factory=dict)
    manifest: dict[str, Any] = Field(default_factory=dict, description="provider details (paths, block devices)")


class BakeRequest(CloudModel):
    """What to bake: a package version on a base image, for one account and region."""

    package: str = Field(min_length=1)
    version: str = Field(min_length=1)
    artifact: str | None = Field(default=None, description="path or URL of the build artifact")
    application: str | None = Field(default=None, description="the pipeline's application (for listing)")
    base: str = "python-3.11"
    base_label: Literal["release", "candidate", "previous", "unstable"] = "release"
    account: str
    region: str
    start_command: str | None = None
    rebake: bool = Field(default=False, description="bake even if an image with the same inputs exists")
    tags: dict[str, str] = Field(default_factory=dict)

    def inputs_hash(self) -> str:
        """A stable hash of the inputs that decide the image's contents (Rosco's "already baked?")."""
        inputs = self.model_dump(mode="json", include={"package", "version", "artifact", "base", "base_label"})
        inputs["start_command"] = self.start_command
        text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- capacity and health


class Capacity(CloudModel):
    """Instance counts of a server group: ``0 <= min <= desired <= max``."""

    min: int = Field(ge=0)
    max: int = Field(ge=0)
    desired: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min <= self.desired <= self.max:
            raise ValueError(
                f"capacity must satisfy min <= desired <= max (got min={self.min}, desired={self.desired}, "
                f"max={self.max})"
            )
        return self

    @classmethod
    def fixed(cls, count: int) -> Capacity:
        """``min = desired = max = count``."""
        return cls(min=count, max=count, desired=count)


class TextEnum(str, Enum):
    """A string enum whose ``str()`` and f-string form is its value (``Up``, not ``Health.UP``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Health(TextEnum):
    """An instance's health, as Spinnaker's HealthState names it."""

    UP = "Up"
    DOWN = "Down"
    STARTING = "Starting"
    OUT_OF_SERVICE = "OutOfService"
    UNKNOWN = "Unknown"


class HealthCounts(CloudModel):
    """How many of a server group's instances are in each health state."""

    up: int = 0
    down: int = 0
    starting: int = 0
    out_of_service: int = 0
    unknown: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        """All instances, whatever their health."""
        return self.up + self.down + self.starting + self.out_of_service + self.unknown

    def enough_up(self, desired: int, percent: int = 100) -> bool:
        """At least ``ceil(desired * percent / 100)`` instances are Up (Spinnaker's targetHealthyPercentage)."""
        return self.up >= math.ceil(desired * percent / 100)


class Instance(CloudModel):
    """One running copy of a server group's image: an EC2 instance, a GCE VM, or a local process."""

    id: str = Field(min_length=1)
    server_group: str
    host: str = Field(description="private IP or hostname; 127.0.0.1 for the local provider")
    port: int | None = Field(default=None, ge=1, le=65535)
    zone: str | None = None
    health: Health = Health.UNKNOWN
    health_since: AwareDatetime = Field(default_factory=utcnow)
    health_reason: str = Field(default="", description="why it is not Up, in plain words")
    launched: AwareDatetime = Field(default_factory=utcnow)
    restarts: int = Field(default=0, ge=0)

    @property
    def address(self) -> str:
        """``host:port`` (or the host alone when there is no port)."""
        return f"{self.host}:{self.port}" if self.port else self.host


# --------------------------------------------------------------------------- server groups


class CreatedBy(CloudModel):
    """The Airflow task that made a resource (the idempotency key's origin, shown in the UI)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1


class ServerGroup(CloudModel):
    """One immutable deployment of one image in a cluster: an ASG, a managed instance group, local processes.

    ``cluster``, ``application``, ``stack``, ``detail`` and ``sequence`` are read from
    the name (they are in :meth:`to_dict`, and ignored by :meth:`from_dict`), so they
    can never disagree with it.
    """

    name: str
    account: str
    region: str
    image_id: str
    capacity: Capacity
    enabled: bool = Field(default=True, description="in service: its load balancers send it traffic")
    load_balancers: tuple[str, ...] = ()
    firewalls: tuple[str, ...] = ()
    health_check: dict[str, Any] = Field(default_factory=dict, description="the spec's HealthCheck, as a dict")
    environment: dict[str, str] = Field(default_factory=dict, description="passed to the instances")
    created: AwareDatetime = Field(default_factory=utcnow)
    created_by: CreatedBy | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    instances: tuple[Instance, ...] = ()
    disabled_by: str | None = Field(default=None, description="who took it out of service, and why")
    disabled_at: AwareDatetime | None = None
    destroying: bool = Field(
        default=False, description="being destroyed: out of service for good, no action applies to it any more"
    )
    native: dict[str, Any] = Field(
        default_factory=dict, description="provider ids: launch template and version, instance template, MIG link"
    )

    @field_validator("name")
    @classmethod
    def _frigga_name(cls, value: str) -> str:
        names = parse_server_group_name(value)  # InvalidName is a ValueError: pydantic reports it
        if names.sequence is None:
            raise ValueError(f"{value!r} has no -v000 sequence; a server group name is <cluster>-v<NNN>")
        return value

    @cached_property
    def names(self) -> Names:
        """The parsed name."""
        return parse_server_group_name(self.name)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cluster(self) -> str:
        """``app-stack-detail``: the name without ``-v000``."""
        return self.names.cluster

    @computed_field  # type: ignore[prop-decorator]
    @property
    def application(self) -> str:
        """The application part of the name."""
        return self.names.app

    @computed_field  # type: ignore[prop-decorator]
    @property
    def stack(self) -> str:
        """The stack part of the name (``""`` if none)."""
        return self.names.stack

    @computed_field  # type: ignore[prop-decorator]
    @property
    def detail(self) -> str:
        """The detail part of the name (``""`` if none)."""
        return self.names.detail

    @computed_field  # type: ignore[prop-decorator]
    @property
    def sequence(self) -> int:
        """3 for ``-v003``."""
        return self.names.sequence or 0

    def health_counts(self) -> HealthCounts:
        """How many instances are Up, Down, Starting, OutOfService, Unknown."""
        counts = dict.fromkeys(("up", "down", "starting", "out_of_service", "unknown"), 0)
        for instance in self.instances:
            counts[_COUNT_FIELD[instance.health]] += 1
        return HealthCounts(**counts)

    def is_healthy(self, percent: int = 100) -> bool:
        """Enough instances are Up for the desired capacity (``percent`` of it, rounded up)."""
        return self.health_counts().enough_up(self.capacity.desired, percent)


_COUNT_FIELD = {
    Health.UP: "up",
    Health.DOWN: "down",
    Health.STARTING: "starting",
    Health.OUT_OF_SERVICE: "out_of_service",
    Health.UNKNOWN: "unknown",
}


class ServerGroupSpec(CloudModel):
    """What ``create_server_group`` makes; the provider picks the name (the cluster's next sequence)."""

    application: str
    stack: str = ""
    detail: str = ""
    account: str
    region: str
    image_id: str
    capacity: Capacity
    enabled: bool = Field(default=True, description="false = deploy dark (no traffic until enabled)")
    load_balancers: tuple[str, ...] = ()
    firewalls: tuple[str, ...] = ()
    health_check: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    created_by: CreatedBy | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def cluster(self) -> str:
        """``app-stack-detail`` (validated by Frigga's rules)."""
        return cluster_name(self.application, self.stack, self.detail)

    @model_validator(mode="after")
    def _valid_cluster(self) -> Self:
        self.cluster  # noqa: B018 - raises InvalidName (a ValueError) for bad parts
        return self

    def server_group(self, sequence: int, created: datetime | None = None) -> ServerGroup:
        """The server group this spec makes with ``sequence`` (instances come later)."""
        fields = self.model_dump(exclude={"application", "stack", "detail"})
        return ServerGroup(
            name=format_server_group_name(self.cluster, sequence),
            created=created or utcnow(),
            **fields,
        )


# --------------------------------------------------------------------------- load balancers and firewalls


class Listener(CloudModel):
    """A port the load balancer listens on; ``target_port`` defaults to the same port on the instances."""

    port: int = Field(ge=1, le=65535)
    protocol: Literal["HTTP", "HTTPS", "TCP"] = "HTTP"
    target_port: int | None = Field(default=None, ge=1, le=65535)


class LoadBalancer(CloudModel):
    """Sends traffic to the enabled server groups of the clusters it serves.

    AWS: an ALB/NLB with a target group per server group; Google Cloud: a backend
    service (with a forwarding rule); local: an HTTP proxy on 127.0.0.1.
    """

    name: str
    application: str
    account: str
    region: str
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[str, ...] = Field(default=(), description="clusters whose enabled server groups it serves")
    weights: dict[str, int] = Field(
        default_factory=dict,
        description="server group -> relative weight among the enabled ones (rolling deploys, canaries); "
        "a group without one gets an equal share",
    )
    health_check: dict[str, Any] = Field(default_factory=dict)
    dns_name: str | None = Field(default=None, description="where clients reach it")
    native: dict[str, Any] = Field(default_factory=dict, description="provider ids: ARNs, backend service link")
    created: AwareDatetime = Field(default_factory=utcnow)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, weights: dict[str, int]) -> dict[str, int]:
        negative = sorted(name for name, weight in weights.items() if weight < 0)
        if negative:
            raise ValueError(f"weights must be >= 0 (negative for {negative})")
        return weights


class FirewallRule(CloudModel):
    """Let traffic in: from a CIDR or from another firewall's members, to a port range."""

    protocol: Literal["tcp", "udp", "icmp", "all"] = "tcp"
    port_from: int = Field(default=0, ge=0, le=65535)
    port_to: int = Field(default=65535, ge=0, le=65535)
    cidr: str | None = Field(default=None, description="e.g. 10.0.0.0/8")
    source_firewall: str | None = Field(default=None, description="members of this firewall (AWS SG, GCE tag)")

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_network(value, strict=False)  # ValueError names the bad address
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.port_from > self.port_to:
            raise ValueError(f"port_from {self.port_from} is above port_to {self.port_to}")
        if (self.cidr is None) == (self.source_firewall is None):
            raise ValueError("give exactly one of cidr or source_firewall")
        return self


class Firewall(CloudModel):
    """Who may reach an application's instances. AWS: a security group; Google Cloud: firewall rules on a tag."""

    name: str
    application: str
    account: str
    region: str = Field(description="AWS: the VPC's region; Google Cloud firewalls are global ('global')")
    description: str = ""
    rules: tuple[FirewallRule, ...] = ()
    native: dict[str, Any] = Field(default_factory=dict, description="provider ids: sg-..., rule names, target tag")
    created: AwareDatetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- operations, metrics, events


class OperationStatus(TextEnum):
    """Where a long operation is; SUCCEEDED and FAILED are final."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class OperationKind(TextEnum):
    """What a long operation does."""

    BAKE = "bake"
    CREATE_SERVER_GROUP = "createServerGroup"
    RESIZE_SERVER_GROUP = "resizeServerGroup"
    ENABLE_SERVER_GROUP = "enableServerGroup"
    DISABLE_SERVER_GROUP = "disableServerGroup"
    DESTROY_SERVER_GROUP = "destroyServerGroup"
    TERMINATE_INSTANCE = "terminateInstance"
    UPSERT_LOAD_BALANCER = "upsertLoadBalancer"
    DELETE_LOAD_BALANCER = "deleteLoadBalancer"
    UPSERT_FIREWALL = "upsertFirewall"
    DELETE_FIREWALL = "deleteFirewall"


class Operation(CloudModel):
    """A mutating call that returns at once; poll ``provider.operation(id)`` until it is done.

    ``key`` is the idempotency key's string form: the same key always names the same
    operation. ``result`` holds what later stages need (``image_id``, ``server_group``).
    """

    id: str = Field(min_length=1)
    kind: OperationKind
    key: str = Field(min_length=1)
    status: OperationStatus = OperationStatus.RUNNING
    message: str = ""
    request: dict[str, Any] = Field(default_factory=dict, description="the call's arguments, for audit and workers")
    result: dict[str, Any] = Field(default_factory=dict)
    started: AwareDatetime = Field(default_factory=utcnow)
    updated: AwareDatetime = Field(default_factory=utcnow)

    @property
    def done(self) -> bool:
        """SUCCEEDED or FAILED: it will not change any more."""
        return self.status is not OperationStatus.RUNNING

    @property
    def succeeded(self) -> bool:
        """It ended SUCCEEDED."""
        return self.status is OperationStatus.SUCCEEDED


class MetricSeries(CloudModel):
    """Evenly spaced samples of one metric of one server group (Kayenta's MetricSet).

    ``values[i]`` is the sample at ``start + i * step_seconds``; None where there is no data.
    """

    name: str
    server_group: str
    start: AwareDatetime
    step_seconds: float = Field(gt=0)
    values: tuple[float | None, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)


HistoryKind = Literal["created", "resized", "enabled", "disabled", "destroying", "destroyed", "instanceTerminated"]
"""What happened to a server group, in a cluster's deployment history."""


class ClusterEvent(CloudModel):
    """One change of a cluster's server groups (``CloudProvider.history``), with the operation that made it."""

    id: int = Field(description="increasing with time; pages of history continue below the last one's id")
    at: AwareDatetime
    kind: HistoryKind
    server_group: str
    instance_id: str | None = Field(default=None, description="the terminated instance (instanceTerminated)")
    message: str = ""
    key: str | None = Field(default=None, description="the idempotency key of the change: who asked for it")
    operation: Operation | None = Field(default=None, description="the operation of that key, as recorded")


class Event(CloudModel):
    """One line of the audit log: who did what to which resource, and when."""

    id: int = 0
    at: AwareDatetime = Field(default_factory=utcnow)
    kind: str = Field(description="e.g. operation.started, serverGroup.disabled, instance.restarted")
    subject: str = Field(description="the resource it is about, e.g. hello-prod-v003")
    message: str = ""
    account: str | None = None
    key: str | None = Field(default=None, description="the idempotency key of the operation, if any")
    data: dict[str, Any] = Field(default_factory=dict)


__all__ = [
    "BakeRequest",
    "Capacity",
    "CloudModel",
    "ClusterEvent",
    "CreatedBy",
    "Event",
    "Firewall",
    "FirewallRule",
    "Health",
    "HealthCounts",
    "HistoryKind",
    "Image",
    "Instance",
    "Listener",
    "LoadBalancer",
    "MetricSeries",
    "Operation",
    "OperationKind",
    "OperationStatus",
    "ServerGroup",
    "ServerGroupSpec",
    "utcnow",
]
