"""The Clusters API's JSON shapes: camelCase on the wire, snake_case in Python.

Every response and request body of :mod:`gennaker.web.app` is one of these models, so
FastAPI's OpenAPI document (``/gennaker/openapi.json``) describes exactly what is served.
Hot responses are rendered once per cache snapshot with :meth:`ApiModel.to_json` and
served as bytes; the route still declares the model as its ``response_model``.

Names follow Spinnaker's Deck where it has one (``serverGroups``, ``instanceCounts``,
``loadBalancers``); times are ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from typing_extensions import Self

MAX_NAME = 255
"""The longest name (application, account, region, cluster, server group, instance or operation id) a caller sends."""
MAX_REASON = 500
"""The longest reason an action's body may give (it goes into the audit trail)."""
MAX_CAPACITY = 10_000
"""The most instances a request may name (``gennaker.cloud.limits.SANE_MAX_CAPACITY``; accounts allow fewer)."""
MAX_CURSOR = 2**62
"""The largest ``before`` cursor (SQLite integers are 64-bit)."""

HealthState = Literal["Up", "Down", "Starting", "OutOfService", "Unknown"]
AuditStatus = Literal["RUNNING", "SUCCEEDED", "FAILED", "REFUSED", "FORBIDDEN", "INTERRUPTED"]
ActionName = Literal["resize", "enable", "disable", "destroy", "rollback", "terminateInstance"]
HistoryEvent = Literal["created", "resized", "enabled", "disabled", "destroying", "destroyed", "instanceTerminated"]


class ApiModel(BaseModel):
    """Base of every API shape: camelCase aliases, frozen, unknown request keys refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        """The JSON the API serves (camelCase)."""
        return self.model_dump_json(by_alias=True).encode()


# --------------------------------------------------------------------------- building blocks


class Permissions(ApiModel):
    """What the caller may do with an application (see docs/clusters-api.md, "Permissions")."""

    read: bool
    edit: bool = Field(description="may resize, enable, disable, roll back, destroy and terminate")


class CapacityView(ApiModel):
    """Instance counts of a server group: ``0 <= min <= desired <= max <= 10000`` (the account may allow fewer)."""

    min: int = Field(ge=0, le=MAX_CAPACITY)
    max: int = Field(ge=0, le=MAX_CAPACITY)
    desired: int = Field(ge=0, le=MAX_CAPACITY)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min <= self.desired <= self.max:
            raise ValueError(
                f"capacity must satisfy min <= desired <= max (got min={self.min}, desired={self.desired}, "
                f"max={self.max})"
            )
        return self


class InstanceCounts(ApiModel):
    """How many instances are in each health state."""

    up: int = 0
    down: int = 0
    starting: int = 0
    out_of_service: int = 0
    unknown: int = 0
    total: int = 0


class PipelineRef(ApiModel):
    """A gennaker pipeline (an Airflow DAG) of an application."""

    dag_id: str
    url: str = Field(description="the DAG in the Airflow UI, relative to its root: /dags/{dagId}")


class CreatedBy(ApiModel):
    """The pipeline run and stage (Airflow DAG run and task) that made a server group."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    run_url: str | None = Field(
        description="the run in the Airflow UI, relative to its root: /dags/{dagId}/runs/{runId} "
        "(null for an action of the Clusters page)"
    )


class ImageRef(ApiModel):
    """The image a server group runs (name, package and version when the account still has it)."""

    id: str
    name: str | None = None
    package: str | None = None
    version: str | None = None


class AccountError(ApiModel):
    """An account that could not be read; the others are still shown."""

    account: str
    status: int
    detail: str


# --------------------------------------------------------------------------- server groups and clusters


class ServerGroupView(ApiModel):
    """One server group as the clusters view shows it (instances counted, not listed)."""

    name: str
    account: str
    region: str
    application: str
    cluster: str
    stack: str
    detail: str
    sequence: int
    image: ImageRef
    capacity: CapacityView
    instance_counts: InstanceCounts
    enabled: bool
    disabled_by: str | None = None
    disabled_at: datetime | None = None
    destroying: bool = Field(description="being destroyed: no action applies any more")
    load_balancers: list[str]
    firewalls: list[str]
    created_at: datetime
    created_by: CreatedBy | None


class ClusterView(ApiModel):
    """``app-stack-detail`` in one account: its server groups, newest first."""

    name: str
    account: str
    application: str
    stack: str
    detail: str
    regions: list[str]
    instance_counts: InstanceCounts
    enabled_server_groups: list[str] = Field(description="names of the server groups that take traffic")
    server_groups: list[ServerGroupView]


class ClustersResponse(ApiModel):
    """``GET /api/applications/{application}/clusters``."""

    application: str
    permissions: Permissions
    clusters: list[ClusterView]
    snapshot_at: datetime | None = Field(description="when the oldest account snapshot shown was read")
    account_errors: list[AccountError]


class ClusterResponse(ApiModel):
    """``GET /api/applications/{application}/clusters/{account}/{cluster}``."""

    application: str
    permissions: Permissions
    cluster: ClusterView
    snapshot_at: datetime


class ApplicationView(ApiModel):
    """An application: what it runs in which accounts, and its pipelines."""

    name: str
    accounts: list[str]
    cluster_count: int
    server_group_count: int
    instance_counts: InstanceCounts
    pipelines: list[PipelineRef]
    permissions: Permissions


class ApplicationsResponse(ApiModel):
    """``GET /api/applications``: the applications the caller may read."""

    applications: list[ApplicationView]
    snapshot_at: datetime | None
    account_errors: list[AccountError]


# --------------------------------------------------------------------------- one server group


class InstanceView(ApiModel):
    """One instance of a server group."""

    id: str
    address: str = Field(description="host:port")
    host: str
    port: int | None
    zone: str | None
    health: HealthState
    health_since: datetime = Field(description="since when it has had this health")
    health_reason: str = Field(description="why it is not Up, in plain words")
    launched_at: datetime
    restarts: int


class ListenerView(ApiModel):
    """A port a load balancer listens on."""

    port: int
    protocol: Literal["HTTP", "HTTPS", "TCP"]
    target_port: int | None


class LoadBalancerTarget(ApiModel):
    """A server group a load balancer serves."""

    server_group: str
    enabled: bool
    weight: int | None = Field(description="its explicit weight, if the load balancer gives one")
    instance_counts: InstanceCounts


class LoadBalancerView(ApiModel):
    """A load balancer of the application and the server groups it serves."""

    name: str
    account: str
    region: str
    application: str
    listeners: list[ListenerView]
    clusters: list[str]
    dns_name: str | None
    health_check: dict[str, Any]
    server_groups: list[LoadBalancerTarget]


class FirewallRuleView(ApiModel):
    """Traffic a firewall lets in."""

    protocol: Literal["tcp", "udp", "icmp", "all"]
    port_from: int
    port_to: int
    cidr: str | None
    source_firewall: str | None


class FirewallView(ApiModel):
    """A firewall (security group) of the application and the server groups that use it."""

    name: str
    account: str
    region: str
    application: str
    description: str
    rules: list[FirewallRuleView]
    server_groups: list[str]


class ServerGroupResponse(ApiModel):
    """``GET /api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}``."""

    application: str
    permissions: Permissions
    server_group: ServerGroupView
    instances: list[InstanceView]
    health_check: dict[str, Any]
    tags: dict[str, str]
    load_balancers: list[LoadBalancerView]
    firewalls: list[FirewallView]
    snapshot_at: datetime


class LoadBalancersResponse(ApiModel):
    """``GET /api/applications/{application}/loadBalancers``."""

    application: str
    load_balancers: list[LoadBalancerView]
    snapshot_at: datetime | None
    account_errors: list[AccountError]


class FirewallsResponse(ApiModel):
    """``GET /api/applications/{application}/firewalls``."""

    application: str
    firewalls: list[FirewallView]
    snapshot_at: datetime | None
    account_errors: list[AccountError]


# --------------------------------------------------------------------------- operations, history, audit


class OperationView(ApiModel):
    """A cloud operation (long calls return one at once; poll it until ``done``)."""

    id: str
    kind: str
    status: Literal["RUNNING", "SUCCEEDED", "FAILED"]
    done: bool
    message: str
    server_group: str | None
    started_at: datetime
    updated_at: datetime


class Source(ApiModel):
    """Who asked for a change: a pipeline stage (DAG run task) or an action of the Clusters page."""

    kind: Literal["pipeline", "ui"]
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    purpose: str
    run_url: str | None = Field(description="pipeline: the run in the Airflow UI (/dags/{dagId}/runs/{runId})")
    action_id: str | None = Field(description="ui: the audit entry of the action")
    user: str | None = Field(description="ui: who clicked")


class HistoryEntry(ApiModel):
    """One change to a server group of the cluster."""

    id: int
    at: datetime
    event: HistoryEvent
    server_group: str
    instance_id: str | None
    message: str
    source: Source | None = Field(description="null when the change was not keyed (a destroy's last step)")
    operation: OperationView | None


class HistoryResponse(ApiModel):
    """``GET /api/applications/{application}/clusters/{account}/{cluster}/history``: newest first."""

    application: str
    account: str
    cluster: str
    entries: list[HistoryEntry]
    next_before: int | None = Field(description="pass as ?before= for older entries; null at the end")


class AuditEntry(ApiModel):
    """One action of the Clusters page: who, when, what, and how it ended."""

    id: str
    at: datetime
    user: str
    action: ActionName
    application: str
    account: str
    region: str | None
    cluster: str | None
    server_group: str | None
    instance_id: str | None
    parameters: dict[str, Any]
    reason: str
    status: AuditStatus
    http_status: int
    message: str
    operation_ids: list[str]
    finished_at: datetime | None


class AuditResponse(ApiModel):
    """``GET /api/applications/{application}/audit``: newest first."""

    application: str
    entries: list[AuditEntry]
    next_before: int | None = Field(description="pass as ?before= for older entries; null at the end")


class ActionResponse(ApiModel):
    """What an action returns (HTTP 202): its audit entry and the operations it started."""

    action: AuditEntry
    operations: list[OperationView]


class ErrorResponse(ApiModel):
    """Every error: what happened (``detail``), its kind and what to do."""

    detail: str
    type: str = Field(description="NotFound, InvalidRequest, TrafficGuardViolation, Forbidden, ...")
    hint: str = ""


# --------------------------------------------------------------------------- action requests


class ActionRequest(ApiModel):
    """The body every action takes (``{}`` is enough); ``reason`` goes into the audit trail."""

    reason: str = Field(default="", max_length=MAX_REASON)


class ResizeRequest(ActionRequest):
    """``POST .../resize``."""

    capacity: CapacityView


class TerminateRequest(ActionRequest):
    """``POST .../instances/{instanceId}/terminate``."""

    decrement: bool = Field(default=False, description="lower desired by one instead of replacing the instance")


class RollbackRequest(ActionRequest):
    """``POST .../clusters/{account}/{cluster}/rollback``: the rollback stage's semantics."""

    region: str | None = Field(default=None, max_length=MAX_NAME, description="the account's region when null")
    target: str = Field(default="previous", max_length=MAX_NAME, description="previous | oldest | a server group name")
    target_healthy_percentage: int = Field(default=100, ge=1, le=100)
    timeout_seconds: int = Field(
        default=600, ge=1, le=3600, description="how long to wait for the restored group to be healthy"
    )


__all__ = [
    "MAX_CAPACITY",
    "MAX_CURSOR",
    "MAX_NAME",
    "MAX_REASON",
    "AccountError",
    "ActionRequest",
    "ActionResponse",
    "ApiModel",
    "ApplicationView",
    "ApplicationsResponse",
    "AuditEntry",
    "AuditResponse",
    "CapacityView",
    "ClusterResponse",
    "ClusterView",
    "ClustersResponse",
    "CreatedBy",
    "ErrorResponse",
    "FirewallView",
    "FirewallsResponse",
    "HistoryEntry",
    "HistoryResponse",
    "ImageRef",
    "InstanceCounts",
    "InstanceView",
    "LoadBalancerView",
    "LoadBalancersResponse",
    "OperationView",
    "Permissions",
    "PipelineRef",
    "ResizeRequest",
    "RollbackRequest",
    "ServerGroupResponse",
    "ServerGroupView",
    "Source",
    "TerminateRequest",
]
