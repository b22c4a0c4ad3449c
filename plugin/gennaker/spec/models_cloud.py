"""The pipeline language's cloud stages: bake, findImage, deploy (with its strategies),
promote, upsertLoadBalancer, rollback and the server group stages.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gennaker.durations import Duration
from gennaker.spec.models_common import MAX_CAPACITY, Capacity, CloudStage, ClusterRef, SpecModel


class HealthCheck(SpecModel):
    """How a new instance proves it is up."""

    type: Literal["http", "tcp", "none"] = "http"
    path: str = "/health"
    port: int | None = Field(default=None, ge=1, le=65535)
    interval: Duration = timedelta(seconds=2)
    timeout: Duration = timedelta(seconds=2)
    healthy_threshold: int = Field(default=1, ge=1)
    grace_period: Duration = Field(default=timedelta(seconds=0), description="ignore failures this long")
    wait_timeout: Duration = Field(
        default=timedelta(minutes=10), description="give up (and roll back) if not healthy after this long"
    )


class RollbackPolicy(SpecModel):
    """Automatic rollback when this stage (or a later one) fails."""

    on_failure: bool = False
    action: Literal["disable", "destroy"] = Field(
        default="disable", description="what to do with the failed server group"
    )


class RedBlack(SpecModel):
    """New group healthy -> in service -> older groups disabled."""

    type: Literal["redblack"]
    max_remaining: int | None = Field(default=None, ge=1, description="keep at most N older groups")
    delay_before_disable: Duration = timedelta(0)
    scale_down_old: bool = False
    delay_before_scale_down: Duration = timedelta(0)
    rollback_on_failure: bool = True


class Highlander(SpecModel):
    """As red/black, then destroy every older group ("there can be only one")."""

    type: Literal["highlander"]
    delay_before_disable: Duration = timedelta(0)
    rollback_on_failure: bool = True


class RollingRedBlack(SpecModel):
    """Move traffic in steps, waiting for health (and a pause) at each."""

    type: Literal["rollingRedBlack"]
    target_percentages: list[Annotated[int, Field(gt=0, le=100)]] = Field(default_factory=lambda: [100])
    pause_between: Duration = timedelta(0)
    max_remaining: int | None = Field(default=None, ge=1)
    scale_down_old: bool = False
    delay_before_scale_down: Duration = timedelta(0)
    rollback_on_failure: bool = True

    @field_validator("target_percentages")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if v != sorted(set(v)):
            raise ValueError("must be strictly increasing, e.g. [25, 50, 100]")
        if v[-1] != 100:
            raise ValueError("the last step must be 100")
        return v


class NoStrategy(SpecModel):
    """Add the group and change nothing else."""

    type: Literal["none"]


Strategy = Annotated[RedBlack | Highlander | RollingRedBlack | NoStrategy, Field(discriminator="type")]


class ImageRef(SpecModel):
    """Where a deploy takes its image from: an upstream stage's output or a named image."""

    stage: str | None = Field(default=None, description="a bake or findImage stage id")
    name: str | None = Field(default=None, description="an image id/name, Jinja-templated")

    @model_validator(mode="after")
    def _one(self) -> ImageRef:
        if (self.stage is None) == (self.name is None):
            raise ValueError("give exactly one of 'stage' or 'name'")
        return self


ServerGroupTarget = Annotated[
    str,
    Field(
        description="a server group name, or newest / previous / oldest in the cluster",
        min_length=1,
    ),
]


# --------------------------------------------------------------------------- cloud stages


class BakeStage(CloudStage):
    """Turn an artifact into an immutable image, one per region."""

    type: Literal["bake"]
    package: str = Field(min_length=1)
    version: str | None = Field(default=None, description="default: the artifact's; Jinja-templated")
    artifact: str | None = Field(
        default=None, description="path or URL of the artifact; Jinja-templated (e.g. a trigger's)"
    )
    base_image: str = Field(default="python-3.11", description="base runtime, e.g. python-3.11, jre-17")
    base_label: Literal["release", "candidate", "previous", "unstable"] = "release"
    regions: list[str] = Field(default_factory=list, description="one image per region; empty = default")
    rebake: bool = Field(default=False, description="bake again even if the same inputs were baked")
    start_command: str | None = Field(default=None, description="for a tarball: how to start it")
    tags: dict[str, str] = Field(default_factory=dict)


class FindImageStage(CloudStage):
    """Find an existing image of a package instead of baking one."""

    type: Literal["findImage"]
    package: str = Field(min_length=1)
    select: Literal["newest", "oldest"] = "newest"
    tags: dict[str, str] = Field(default_factory=dict)
    regions: list[str] = Field(default_factory=list)


class DeployStage(CloudStage):
    """Create the next server group of a cluster from an image."""

    type: Literal["deploy"]
    cluster: ClusterRef = Field(default_factory=ClusterRef)
    image: ImageRef | None = Field(default=None, description="default: the nearest upstream bake/findImage")
    capacity: Capacity = Field(default_factory=lambda: Capacity(min=1, max=1, desired=1))
    load_balancers: list[str] = Field(default_factory=list)
    firewalls: list[str] = Field(default_factory=list)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    traffic: bool = Field(default=True, description="false = deploy dark, for a later canary or promote")
    strategy: Strategy = Field(default_factory=lambda: RedBlack(type="redblack"))
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    environment: dict[str, str] = Field(default_factory=dict, description="passed to the instances")
    tags: dict[str, str] = Field(default_factory=dict)


class PromoteStage(CloudStage):
    """Make a dark-deployed (or canaried) server group the live one."""

    type: Literal["promote"]
    cluster: ClusterRef | None = Field(default=None, description="default: the upstream deploy's")
    server_group: str | None = Field(default=None, description="default: the upstream deploy's output")
    max_remaining: int | None = Field(default=None, ge=1, description="default: the promoted deploy's strategy's")
    delay_before_disable: Duration = Field(default=timedelta(0), description="default: the deploy strategy's")
    scale_down_old: bool = Field(default=False, description="default: the deploy strategy's")
    delay_before_scale_down: Duration = Field(default=timedelta(0), description="default: the deploy strategy's")
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)


class LoadBalancerListener(SpecModel):
    """One port a load balancer listens on (local: 127.0.0.1:<port>)."""

    port: int = Field(ge=1, le=65535)
    protocol: Literal["HTTP", "HTTPS", "TCP"] = "HTTP"
    target_port: int | None = Field(default=None, ge=1, le=65535, description="default: the instances' port")


class UpsertLoadBalancerStage(CloudStage):
    """Create a load balancer for a cluster, or update its listeners (Spinnaker's upsertLoadBalancers)."""

    type: Literal["upsertLoadBalancer"]
    load_balancer: str | None = Field(
        default=None,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$",
        max_length=32,
        description="the load balancer's name; default: the cluster's name",
    )
    cluster: ClusterRef = Field(default_factory=ClusterRef, description="the cluster whose enabled groups it serves")
    listeners: list[LoadBalancerListener] = Field(min_length=1)
    health_check_path: str = Field(default="/health", description="what the load balancer checks on instances")


class RollbackStage(CloudStage):
    """Re-enable the previous server group of a cluster, wait healthy, disable the current one."""

    type: Literal["rollback"]
    cluster: ClusterRef = Field(default_factory=ClusterRef)
    target: ServerGroupTarget = "previous"
    target_healthy_percentage: int = Field(default=100, ge=1, le=100)


class ServerGroupStage(CloudStage):
    """A stage that acts on one server group of a cluster."""

    cluster: ClusterRef = Field(default_factory=ClusterRef)
    target: ServerGroupTarget = "newest"


class EnableServerGroupStage(ServerGroupStage):
    type: Literal["enableServerGroup"]


class DisableServerGroupStage(ServerGroupStage):
    type: Literal["disableServerGroup"]


class DestroyServerGroupStage(ServerGroupStage):
    type: Literal["destroyServerGroup"]


class ResizeServerGroupStage(ServerGroupStage):
    """Set a server group's capacity, or scale it by a number or a percentage."""

    type: Literal["resizeServerGroup"]
    capacity: Capacity | None = None
    scale_by: int | None = Field(
        default=None, ge=-MAX_CAPACITY, le=MAX_CAPACITY, description="add (or with a minus, remove) instances"
    )
    scale_percent: int | None = Field(
        default=None, ge=-100, le=MAX_CAPACITY, description="grow or shrink by a percentage"
    )

    @model_validator(mode="after")
    def _one(self) -> ResizeServerGroupStage:
        given = [x for x in (self.capacity, self.scale_by, self.scale_percent) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'capacity', 'scaleBy' or 'scalePercent'")
        return self
