"""Builders of the cloud stages: bake, findImage, deploy, promote, upsertLoadBalancer, server group stages."""

from __future__ import annotations

from typing import Any

from gennaker.factory.stages_common import (
    StageBuild,
    account_of,
    cluster_of,
    nearest_upstream,
    seconds,
    server_group_cluster,
)
from gennaker.spec.models import (
    BakeStage,
    DeployStage,
    DestroyServerGroupStage,
    DisableServerGroupStage,
    EnableServerGroupStage,
    FindImageStage,
    PromoteStage,
    ResizeServerGroupStage,
    RollbackStage,
    UpsertLoadBalancerStage,
)


def build_enable(b: StageBuild) -> Any:
    """The operator of an enable server group stage."""
    from gennaker.operators.server_group import EnableServerGroupOperator

    s = b.stage
    assert isinstance(s, EnableServerGroupStage)
    return EnableServerGroupOperator(**server_group_cluster(b, s), **b.common)


def build_disable(b: StageBuild) -> Any:
    """The operator of a disable server group stage."""
    from gennaker.operators.server_group import DisableServerGroupOperator

    s = b.stage
    assert isinstance(s, DisableServerGroupStage)
    return DisableServerGroupOperator(**server_group_cluster(b, s), **b.common)


def build_resize(b: StageBuild) -> Any:
    """The operator of a resize server group stage."""
    from gennaker.operators.server_group import ResizeServerGroupOperator

    s = b.stage
    assert isinstance(s, ResizeServerGroupStage)
    return ResizeServerGroupOperator(
        capacity=s.capacity.model_dump() if s.capacity is not None else None,
        scale_by=s.scale_by,
        scale_percent=s.scale_percent,
        **server_group_cluster(b, s),
        **b.common,
    )


def build_destroy(b: StageBuild) -> Any:
    """The operator of a destroy server group stage."""
    from gennaker.operators.server_group import DestroyServerGroupOperator

    s = b.stage
    assert isinstance(s, DestroyServerGroupStage)
    return DestroyServerGroupOperator(**server_group_cluster(b, s), **b.common)


def build_rollback(b: StageBuild) -> Any:
    """The operator of a rollback stage."""
    from gennaker.operators.server_group import RollbackOperator

    s = b.stage
    assert isinstance(s, RollbackStage)
    return RollbackOperator(
        target_healthy_percentage=s.target_healthy_percentage,
        **server_group_cluster(b, s),
        **b.common,
    )


def build_find_image(b: StageBuild) -> Any:
    """The operator of a find image stage."""
    from gennaker.operators.server_group import FindImageOperator

    s = b.stage
    assert isinstance(s, FindImageStage)
    return FindImageOperator(
        package=s.package,
        select=s.select,
        tags=dict(s.tags),
        regions=list(s.regions),
        **account_of(s),
        **b.common,
    )


def build_bake(b: StageBuild) -> Any:
    """The operator of a bake stage."""
    from gennaker.operators.bake import BakeOperator

    s = b.stage
    assert isinstance(s, BakeStage)
    return BakeOperator(
        package=s.package,
        application=b.pipeline.application if b.pipeline is not None else None,
        version=s.version,
        artifact=s.artifact,
        base_image=s.base_image,
        base_label=s.base_label,
        regions=list(s.regions),
        rebake=s.rebake,
        start_command=s.start_command,
        tags=dict(s.tags),
        artifact_allow=list(b.pipeline.artifacts.allow) if b.pipeline is not None else [],
        **account_of(s),
        **b.common,
    )


def _strategy(s: DeployStage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in type(s.strategy).model_fields:
        value = getattr(s.strategy, key)
        out[key] = value.total_seconds() if hasattr(value, "total_seconds") else value
    return out


def deploy_cluster(b: StageBuild, s: DeployStage | PromoteStage) -> dict[str, Any]:
    """The cluster of a deploy, or of a promote (its own, else the nearest deploy's before it)."""
    if isinstance(s, DeployStage):
        return cluster_of(b, s, s.cluster)
    if s.cluster is not None:
        return cluster_of(b, s, s.cluster)
    source = nearest_upstream(b, ("deploy",))
    if source is None or b.pipeline is None:
        raise ValueError(f"stage {s.id!r}: no cluster to promote in (give cluster, or put a deploy before it)")
    deploy = b.pipeline.stage(source)
    assert isinstance(deploy, DeployStage)
    return cluster_of(b, deploy, deploy.cluster)


def build_deploy(b: StageBuild) -> Any:
    """The operator of a deploy stage."""
    from gennaker.operators.deploy import DeployOperator

    s = b.stage
    assert isinstance(s, DeployStage)
    image_stage = s.image.stage if s.image is not None else nearest_upstream(b, ("bake", "findImage"))
    health = s.health_check.model_dump(mode="json", by_alias=True, exclude={"wait_timeout"})
    return DeployOperator(
        capacity=s.capacity.model_dump(),
        image_stage=image_stage,
        image_name=s.image.name if s.image is not None else None,
        load_balancers=list(s.load_balancers),
        firewalls=list(s.firewalls),
        health_check=health,
        health_timeout=seconds(s.health_check.wait_timeout) or None,
        traffic=s.traffic,
        strategy=_strategy(s),
        environment=dict(s.environment),
        tags=dict(s.tags),
        rollback_action=s.rollback.action,
        **deploy_cluster(b, s),
        **account_of(s),
        **b.common,
    )


def build_promote(b: StageBuild) -> Any:
    """The operator of a promote stage."""
    from gennaker.operators.deploy import PromoteOperator

    s = b.stage
    assert isinstance(s, PromoteStage)
    source = None if s.server_group else nearest_upstream(b, ("deploy",))
    # What the promote does not say, it takes from the strategy of the deploy it promotes (redblack's options).
    inherited: dict[str, Any] = {}
    if source is not None and b.pipeline is not None:
        deploy = b.pipeline.stage(source)
        if isinstance(deploy, DeployStage):
            inherited = {k: v for k, v in _strategy(deploy).items() if k not in s.model_fields_set}

    def pick(name: str, own: Any) -> Any:
        return inherited.get(name, own)

    return PromoteOperator(
        server_group=s.server_group,
        source_stage=source,
        max_remaining=pick("max_remaining", s.max_remaining),
        delay_before_disable=pick("delay_before_disable", seconds(s.delay_before_disable)),
        scale_down_old=pick("scale_down_old", s.scale_down_old),
        delay_before_scale_down=pick("delay_before_scale_down", seconds(s.delay_before_scale_down)),
        rollback_action=s.rollback.action,
        **deploy_cluster(b, s),
        **account_of(s),
        **b.common,
    )


def build_upsert_load_balancer(b: StageBuild) -> Any:
    """The operator of an upsert load balancer stage."""
    from gennaker.cloud.naming import cluster_name
    from gennaker.operators.load_balancer import UpsertLoadBalancerOperator

    s = b.stage
    assert isinstance(s, UpsertLoadBalancerStage)
    where = cluster_of(b, s, s.cluster)
    cluster = cluster_name(where["application"], where["stack"], where["detail"])
    return UpsertLoadBalancerOperator(
        application=where["application"],
        cluster=cluster,
        name=s.load_balancer,
        listeners=[x.model_dump() for x in s.listeners],
        health_check_path=s.health_check_path,
        **account_of(s),
        **b.common,
    )
