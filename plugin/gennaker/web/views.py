"""The cloud model (``gennaker.cloud.model``) as the Clusters API shows it (``gennaker.web.models``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote

from gennaker.cloud.model import Firewall, Image, Instance, LoadBalancer, Operation, ServerGroup
from gennaker.cloud.provider import IdempotencyKey
from gennaker.web import models as m
from gennaker.web.audit import UI_DAG_ID
from gennaker.web.reader import AccountSnapshot


def dag_url(dag_id: str) -> str:
    """The DAG in the Airflow UI, relative to the UI's root."""
    return f"/dags/{quote(dag_id, safe='')}"


def run_url(dag_id: str, run_id: str) -> str | None:
    """A DAG run in the Airflow UI, relative to the UI's root (None for the Clusters page's own actions)."""
    if dag_id == UI_DAG_ID:
        return None
    return f"{dag_url(dag_id)}/runs/{quote(run_id, safe='')}"


def counts(instances: Iterable[Instance]) -> m.InstanceCounts:
    """Instances by health."""
    tally = {"Up": 0, "Down": 0, "Starting": 0, "OutOfService": 0, "Unknown": 0}
    total = 0
    for instance in instances:
        tally[instance.health.value] += 1
        total += 1
    return m.InstanceCounts(
        up=tally["Up"],
        down=tally["Down"],
        starting=tally["Starting"],
        out_of_service=tally["OutOfService"],
        unknown=tally["Unknown"],
        total=total,
    )


def add_counts(parts: Iterable[m.InstanceCounts]) -> m.InstanceCounts:
    """The sum of several counts."""
    fields = ("up", "down", "starting", "out_of_service", "unknown", "total")
    sums = dict.fromkeys(fields, 0)
    for part in parts:
        for name in fields:
            sums[name] += getattr(part, name)
    return m.InstanceCounts(**sums)


def server_group(group: ServerGroup, images: Mapping[str, Image]) -> m.ServerGroupView:
    """A server group for the clusters view."""
    image = images.get(group.image_id)
    made = group.created_by
    return m.ServerGroupView(
        name=group.name,
        account=group.account,
        region=group.region,
        application=group.application,
        cluster=group.cluster,
        stack=group.stack,
        detail=group.detail,
        sequence=group.sequence,
        image=m.ImageRef(
            id=group.image_id,
            name=image.name if image else None,
            package=image.package if image else None,
            version=image.version if image else None,
        ),
        capacity=m.CapacityView(min=group.capacity.min, max=group.capacity.max, desired=group.capacity.desired),
        instance_counts=counts(group.instances),
        enabled=group.enabled,
        disabled_by=group.disabled_by,
        disabled_at=group.disabled_at,
        destroying=group.destroying,
        load_balancers=list(group.load_balancers),
        firewalls=list(group.firewalls),
        created_at=group.created,
        created_by=None
        if made is None
        else m.CreatedBy(
            dag_id=made.dag_id,
            run_id=made.run_id,
            task_id=made.task_id,
            map_index=made.map_index,
            run_url=run_url(made.dag_id, made.run_id),
        ),
    )


def clusters(snapshot: AccountSnapshot, application: str) -> list[m.ClusterView]:
    """The application's clusters in one account, by name; server groups newest first."""
    by_cluster: dict[str, list[ServerGroup]] = {}
    for group in snapshot.server_groups_of(application):
        by_cluster.setdefault(group.cluster, []).append(group)
    result = []
    for name in sorted(by_cluster):
        groups = sorted(by_cluster[name], key=lambda g: (g.created, g.sequence), reverse=True)
        views = [server_group(g, snapshot.images) for g in groups]
        first = groups[0]
        result.append(
            m.ClusterView(
                name=name,
                account=snapshot.account,
                application=application,
                stack=first.stack,
                detail=first.detail,
                regions=sorted({g.region for g in groups}),
                instance_counts=add_counts(v.instance_counts for v in views),
                enabled_server_groups=[g.name for g in groups if g.enabled and not g.destroying],
                server_groups=views,
            )
        )
    return result


def instance(item: Instance) -> m.InstanceView:
    """One instance."""
    return m.InstanceView(
        id=item.id,
        address=item.address,
        host=item.host,
        port=item.port,
        zone=item.zone,
        health=item.health.value,
        health_since=item.health_since,
        health_reason=item.health_reason,
        launched_at=item.launched,
        restarts=item.restarts,
    )


def serves(lb: LoadBalancer, group: ServerGroup) -> bool:
    """The group names the load balancer, or belongs to one of its clusters (same account and region)."""
    return (
        group.account == lb.account
        and group.region == lb.region
        and (lb.name in group.load_balancers or group.cluster in lb.clusters)
    )


def load_balancer(lb: LoadBalancer, groups: Sequence[ServerGroup]) -> m.LoadBalancerView:
    """A load balancer and the server groups it serves."""
    return m.LoadBalancerView(
        name=lb.name,
        account=lb.account,
        region=lb.region,
        application=lb.application,
        listeners=[m.ListenerView(port=x.port, protocol=x.protocol, target_port=x.target_port) for x in lb.listeners],
        clusters=list(lb.clusters),
        dns_name=lb.dns_name,
        health_check=dict(lb.health_check),
        server_groups=[
            m.LoadBalancerTarget(
                server_group=g.name,
                enabled=g.enabled,
                weight=lb.weights.get(g.name),
                instance_counts=counts(g.instances),
            )
            for g in groups
            if serves(lb, g)
        ],
    )


def firewall(fw: Firewall, groups: Sequence[ServerGroup]) -> m.FirewallView:
    """A firewall and the server groups that use it."""
    return m.FirewallView(
        name=fw.name,
        account=fw.account,
        region=fw.region,
        application=fw.application,
        description=fw.description,
        rules=[
            m.FirewallRuleView(
                protocol=r.protocol,
                port_from=r.port_from,
                port_to=r.port_to,
                cidr=r.cidr,
                source_firewall=r.source_firewall,
            )
            for r in fw.rules
        ],
        server_groups=[g.name for g in groups if fw.name in g.firewalls and g.account == fw.account],
    )


def operation(op: Operation) -> m.OperationView:
    """An operation, without its request (which may hold a deploy's environment)."""
    group = op.request.get("server_group") or op.result.get("server_group")
    return m.OperationView(
        id=op.id,
        kind=op.kind.value,
        status=op.status.value,
        done=op.done,
        message=op.message,
        server_group=str(group) if group else None,
        started_at=op.started,
        updated_at=op.updated,
    )


def source(key_text: str | None, users: Mapping[str, str]) -> m.Source | None:
    """Who asked for a change, from its idempotency key (``users``: UI action id -> user)."""
    if not key_text:
        return None
    try:
        key = IdempotencyKey.parse(key_text)
    except ValueError:
        return None
    ui = key.dag_id == UI_DAG_ID
    return m.Source(
        kind="ui" if ui else "pipeline",
        dag_id=key.dag_id,
        run_id=key.run_id,
        task_id=key.task_id,
        map_index=key.map_index,
        purpose=key.purpose,
        run_url=run_url(key.dag_id, key.run_id),
        action_id=key.run_id if ui else None,
        user=users.get(key.run_id) if ui else None,
    )


__all__ = [
    "add_counts",
    "clusters",
    "counts",
    "dag_url",
    "firewall",
    "instance",
    "load_balancer",
    "operation",
    "run_url",
    "server_group",
    "serves",
    "source",
]
