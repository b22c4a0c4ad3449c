"""The one interface every cloud provider implements: local processes, AWS, Google Cloud.

Stages, triggers and the web UI talk to a :class:`CloudProvider` only. What each
method becomes in each cloud is tabled in ``docs/cloud.md``; in short:

=============  ==========================  ===============================  =====================
model          AWS                         Google Cloud                     local
=============  ==========================  ===============================  =====================
Image          AMI                         image                            app bundle in a store
ServerGroup    launch template version     instance template + managed      supervised processes
               + Auto Scaling group        instance group
LoadBalancer   ALB/NLB, a target group     backend service (+ forwarding    HTTP proxy on
               per server group            rule)                            127.0.0.1
Firewall       security group              firewall rules on a network tag  (recorded only)
=============  ==========================  ===============================  =====================

The contract every provider keeps:

- **Long calls return at once.** Every mutating method returns an :class:`Operation`
  that is ``RUNNING`` (or already final); callers poll :meth:`CloudProvider.operation`,
  typically from a deferred trigger, so no worker slot waits.
- **Idempotent by key.** Every mutating method takes an :class:`IdempotencyKey` (the
  DAG run's task and a purpose). Repeating a call with the same key returns the first
  call's Operation (and so its result) instead of doing the work again: a retried task
  finds the server group its first try created. The same key with a different kind of
  operation raises :class:`IdempotencyConflict`. Arguments of a repeat are not compared
  (a retry may compute them anew); the first call's arguments win.
- **Errors are** :class:`CloudError` **subclasses**; a provider never lets its SDK's
  exceptions escape. They are defined in ``gennaker.errors`` (the model and the
  naming rules raise them too) and re-exported here::

      CloudError
       +-- InvalidRequest           fix the request; retrying fails the same way (also ValueError)
       |    +-- InvalidName         not app-stack-detail-v000
       |    +-- IdempotencyConflict one key, two kinds of operation
       +-- NotFound                 (also LookupError)
       +-- AlreadyExists
       |    +-- SequenceExhausted   v000..v999 all in use in the cluster
       +-- TrafficGuardViolation    last serving group of a guarded cluster
       +-- QuotaExceeded            an account limit
       +-- ProviderUnavailable      transient: the only retryable one
       +-- OperationFailed          a polled Operation ended FAILED
       +-- NotSupported             an optional method this provider does not offer
- **Callers read the interface, never a provider's internals.** What stages and the
  Clusters page need is a method or a model field: a server group being destroyed is
  ``ServerGroup.destroying``, where clients reach a load balancer is
  :meth:`CloudProvider.load_balancer_address`, a cluster's deployment history is
  :meth:`CloudProvider.history` (optional: :class:`NotSupported` by default), and a
  whole account read at once is :meth:`CloudProvider.inventory` (a generic default a
  provider may replace with a faster bulk read).
- **No SDK at import time.** boto3 and the Google clients are imported inside methods
  (ruff bans them at module level): DAG files import stages, stages import this.
"""

from __future__ import annotations

import abc
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import unquote

from gennaker.cloud.limits import Limits
from gennaker.cloud.model import (
    BakeRequest,
    Capacity,
    ClusterEvent,
    CreatedBy,
    Firewall,
    Image,
    Instance,
    LoadBalancer,
    MetricSeries,
    Operation,
    OperationStatus,
    ServerGroup,
    ServerGroupSpec,
)
from gennaker.errors import (
    AlreadyExists,
    CloudError,
    IdempotencyConflict,
    InvalidName,
    InvalidRequest,
    NotFound,
    NotSupported,
    OperationFailed,
    ProviderUnavailable,
    QuotaExceeded,
    SequenceExhausted,
    TrafficGuardViolation,
)

# A fixed namespace, so a key maps to the same UUID in every process and release.
_KEY_NAMESPACE = uuid.UUID("6f0f6a53-3c55-4c1e-9b7e-2a1f0d9c6e11")


@dataclass(frozen=True)
class IdempotencyKey:
    """Names one mutating call of one task of one DAG run: retries of the task share it.

    ``purpose`` tells a task's calls apart (``deploy``, ``disable-previous``); a mapped
    task adds its ``map_index``. The string form ``dag/run/task[/map_index]/purpose`` is
    stable across processes and releases (``/`` and ``%`` inside a part are escaped),
    and :meth:`parse` reads it back. Calls made outside a DAG run (the Clusters page)
    use ``dag_id="ui"`` and a fresh ``run_id`` per user action.
    """

    dag_id: str
    run_id: str
    task_id: str
    purpose: str
    map_index: int = -1

    def __post_init__(self) -> None:
        for field in ("dag_id", "run_id", "task_id", "purpose"):
            if not getattr(self, field):
                raise InvalidRequest(f"an idempotency key needs a non-empty {field}")

    def __str__(self) -> str:
        parts = [self.dag_id, self.run_id, self.task_id]
        if self.map_index >= 0:
            parts.append(str(self.map_index))
        parts.append(self.purpose)
        return "/".join(_escape(part) for part in parts)

    @classmethod
    def parse(cls, text: str) -> IdempotencyKey:
        """The inverse of ``str(key)``."""
        parts = [_unescape(part) for part in text.split("/")]
        if len(parts) == 4:
            return cls(parts[0], parts[1], parts[2], parts[3])
        if len(parts) == 5 and parts[3].isdigit():
            return cls(parts[0], parts[1], parts[2], parts[4], int(parts[3]))
        raise InvalidRequest(f"{text!r} is not an idempotency key (dag/run/task[/map_index]/purpose)")

    @classmethod
    def from_context(cls, context: Mapping[str, Any], purpose: str) -> IdempotencyKey:
        """The key of the running task instance (Airflow's task context) for ``purpose``."""
        ti = context["ti"]
        return cls(ti.dag_id, ti.run_id, ti.task_id, purpose, getattr(ti, "map_index", -1))

    def derive(self, step: str) -> IdempotencyKey:
        """A key for one step of this call (``create/launch-template``): one cloud request each."""
        return IdempotencyKey(self.dag_id, self.run_id, self.task_id, f"{self.purpose}/{step}", self.map_index)

    def digest(self) -> str:
        """SHA-256 (hex) of the string form: fits where the key itself does not."""
        return hashlib.sha256(str(self).encode()).hexdigest()

    def client_token(self) -> str:
        """AWS ``ClientToken`` (at most 64 ASCII characters)."""
        return self.digest()

    def request_id(self) -> str:
        """Google Cloud ``requestId`` (a UUID; the API remembers it for at least 60 minutes)."""
        return str(uuid.uuid5(_KEY_NAMESPACE, str(self)))

    def label(self) -> str:
        """A tag/label value that finds the resource later (GCE labels: <= 63 of ``[a-z0-9_-]``)."""
        return self.digest()[:63]

    def created_by(self) -> CreatedBy:
        """The task this key belongs to, for a resource's ``created_by``."""
        return CreatedBy(dag_id=self.dag_id, run_id=self.run_id, task_id=self.task_id, map_index=self.map_index)


@dataclass(frozen=True)
class Inventory:
    """Everything of an account the Clusters page shows, read at once (:meth:`CloudProvider.inventory`).

    ``images``: the images the server groups use, by id (a deregistered one is left out).
    """

    server_groups: tuple[ServerGroup, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()
    firewalls: tuple[Firewall, ...] = ()
    images: Mapping[str, Image] = dataclass_field(default_factory=dict)


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("/", "%2F")


def _unescape(part: str) -> str:
    # Every '%' in an escaped part came from _escape, so a plain unquote is exact.
    return unquote(part)


class CloudProvider(abc.ABC):
    """One account of one cloud: images, server groups, load balancers, firewalls, metrics.

    ``region`` arguments default to the account's region (``self.region``). Lookups
    raise :class:`NotFound`; mutations return an :class:`Operation` and honour the
    idempotency contract in this module's docstring.
    """

    kind: ClassVar[str]
    """``local``, ``aws`` or ``gcp``: the spec's ``provider``."""

    def __init__(self, account: str, region: str) -> None:
        self.account = account
        self.region = region

    # ----------------------------------------------------------------------- images

    @abc.abstractmethod
    def bake(self, request: BakeRequest, key: IdempotencyKey) -> Operation:
        """Start baking an image; the operation's result is ``{"image_id": ...}``.

        Unless ``request.rebake``, an existing image with the same inputs hash in the
        account and region is the result at once (the operation is already SUCCEEDED).
        """

    @abc.abstractmethod
    def find_images(
        self,
        *,
        package: str | None = None,
        application: str | None = None,
        tags: Mapping[str, str] | None = None,
        region: str | None = None,
    ) -> list[Image]:
        """Images matching every given filter (``tags``: all must match), newest first."""

    @abc.abstractmethod
    def get_image(self, image_id: str, *, region: str | None = None) -> Image:
        """One image; :class:`NotFound` if it does not exist (or was deregistered)."""

    # ----------------------------------------------------------------------- server groups

    @abc.abstractmethod
    def create_server_group(self, spec: ServerGroupSpec, key: IdempotencyKey) -> Operation:
        """Start creating the cluster's next server group; the result is ``{"server_group": name}``.

        The name is allocated at once (``Operation.result["server_group"]`` is set while
        RUNNING), so a poller can watch its instances. ``spec.enabled`` false creates it
        out of service (deploy dark).
        """

    @abc.abstractmethod
    def get_server_group(self, name: str, *, region: str | None = None) -> ServerGroup:
        """One server group with its instances; :class:`NotFound` if it does not exist."""

    @abc.abstractmethod
    def list_server_groups(
        self, application: str, *, cluster: str | None = None, region: str | None = None
    ) -> list[ServerGroup]:
        """An application's (or one cluster's) server groups with instances, oldest first."""

    @abc.abstractmethod
    def resize_server_group(
        self, name: str, capacity: Capacity, key: IdempotencyKey, *, region: str | None = None
    ) -> Operation:
        """Set min/max/desired; done when the instance count reaches desired.

        Raises :class:`TrafficGuardViolation` if this would scale the last enabled
        server group of a guarded cluster to zero.
        """

    @abc.abstractmethod
    def enable_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        """Put a server group in service: its load balancers send it traffic."""

    @abc.abstractmethod
    def disable_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        """Take a server group out of service (draining connections first); instances keep running.

        Raises :class:`TrafficGuardViolation` if it is the last enabled server group of a
        guarded cluster.
        """

    @abc.abstractmethod
    def destroy_server_group(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        """Disable, then delete a server group and its instances (and launch template / instance template).

        Raises :class:`TrafficGuardViolation` as :meth:`disable_server_group` does.
        Destroying one that no longer exists succeeds (the goal is reached).
        """

    @abc.abstractmethod
    def instances(self, server_group: str, *, region: str | None = None) -> list[Instance]:
        """A server group's instances with their current health."""

    @abc.abstractmethod
    def terminate_instance(
        self,
        server_group: str,
        instance_id: str,
        key: IdempotencyKey,
        *,
        decrement: bool = False,
        region: str | None = None,
    ) -> Operation:
        """Terminate one instance; the group replaces it unless ``decrement`` lowers desired by one."""

    # ----------------------------------------------------------------------- load balancers, firewalls

    @abc.abstractmethod
    def upsert_load_balancer(self, load_balancer: LoadBalancer, key: IdempotencyKey) -> Operation:
        """Create a load balancer, or update its listeners, clusters, weights and health check."""

    def load_balancer_address(self, load_balancer: LoadBalancer) -> str | None:
        """Where clients reach ``load_balancer`` (a URL or a DNS name); None while the cloud has given it none.

        The default is the model's ``dns_name`` (what a cloud fills in when it lists the load
        balancer); a provider whose address follows from the listeners says so here.
        """
        return load_balancer.dns_name

    @abc.abstractmethod
    def list_load_balancers(self, *, application: str | None = None, region: str | None = None) -> list[LoadBalancer]:
        """Load balancers of an application (all of the account's when None)."""

    @abc.abstractmethod
    def delete_load_balancer(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        """Delete a load balancer; :class:`InvalidRequest` while it serves enabled server groups."""

    @abc.abstractmethod
    def upsert_firewall(self, firewall: Firewall, key: IdempotencyKey) -> Operation:
        """Create a firewall, or replace its rules."""

    @abc.abstractmethod
    def list_firewalls(self, *, application: str | None = None, region: str | None = None) -> list[Firewall]:
        """Firewalls of an application (all of the account's when None)."""

    @abc.abstractmethod
    def delete_firewall(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        """Delete a firewall; :class:`InvalidRequest` while server groups use it."""

    # ----------------------------------------------------------------------- metrics, operations

    @abc.abstractmethod
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
        """Samples of each metric of a server group in ``[start, end)`` every ``step``, keyed by name.

        A name is what the provider's metric source understands (local: a series name;
        AWS: ``Namespace/MetricName:Statistic``; Google Cloud: a metric type). A metric
        without data comes back with ``None`` values, never missing from the dict.
        """

    @abc.abstractmethod
    def operation(self, operation_id: str) -> Operation:
        """The current state of a long operation; :class:`NotFound` for an unknown id."""

    def recorded_operation(self, operation_id: str) -> Operation:
        """An operation as last recorded, without moving it on; :class:`NotFound` for an unknown id.

        The default is :meth:`operation`: for a cloud, reading an operation changes nothing.
        A provider whose :meth:`operation` does work (the local one finishes what is done)
        answers from its records here, so a reader who may not act can still look.
        """
        return self.operation(operation_id)

    # ----------------------------------------------------------------------- optional reads

    def history(self, cluster: str, *, before: int | None = None, limit: int = 200) -> list[ClusterEvent]:
        """A cluster's deployment history in this account, newest first: events with ids below ``before``.

        Optional: the default raises :class:`NotSupported` (the Clusters API answers 501).
        """
        raise NotSupported(
            f"account {self.account} is a {self.kind} account: its history is not recorded here",
            hint="see the pipelines' runs in Airflow for what changed the cluster",
        )

    def inventory(self, applications: Iterable[str] = ()) -> Inventory:
        """The account's server groups (with instances), load balancers, firewalls and the images in use.

        Reading starts and changes nothing. The default lists server groups per application:
        ``applications`` (those known elsewhere, e.g. from the pipelines) and those of the load
        balancers and firewalls. A provider that can read the whole account in bulk overrides it.
        """
        balancers = self.list_load_balancers()
        firewalls = self.list_firewalls()
        names = set(applications) | {lb.application for lb in balancers} | {fw.application for fw in firewalls}
        groups = [group for name in sorted(names) for group in self.list_server_groups(name)]
        images = {}
        for image_id in sorted({group.image_id for group in groups}):
            try:
                images[image_id] = self.get_image(image_id)
            except NotFound:
                continue  # deregistered: the group still shows its image id
        return Inventory(tuple(groups), tuple(balancers), tuple(firewalls), images)

    @property
    def limits(self) -> Limits:
        """The account's capacity limits (per server group, per account), checked before creating or resizing.

        The default bounds only a server group (:data:`~gennaker.cloud.limits.SANE_MAX_CAPACITY`);
        a provider whose account has quotas reports them.
        """
        return Limits()

    def poll(self, operation_id: str) -> Operation:
        """:meth:`operation`, raising :class:`OperationFailed` if it ended FAILED."""
        op = self.operation(operation_id)
        if op.status is OperationStatus.FAILED:
            raise OperationFailed(op)
        return op

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract: most providers hold nothing
        """Release clients and connections (optional)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(account={self.account!r}, region={self.region!r})"


__all__ = [
    "AlreadyExists",
    "CloudError",
    "CloudProvider",
    "IdempotencyConflict",
    "IdempotencyKey",
    "InvalidName",
    "InvalidRequest",
    "Inventory",
    "NotFound",
    "NotSupported",
    "OperationFailed",
    "ProviderUnavailable",
    "QuotaExceeded",
    "SequenceExhausted",
    "TrafficGuardViolation",
]
