"""The pipeline language: pydantic models, one per stage type.

YAML keys are camelCase as Spinnaker users write them (``dependsOn``,
``maxRemaining``); Python attributes are snake_case. Every model forbids
unknown keys, so a typo is an error (with a "did you mean" from the loader).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gennaker.spec.durations import Duration

IDENT = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
NAME = r"^[a-z0-9][a-z0-9_-]*$"
# Frigga names: no '-' inside an application, stack or detail part would break parsing.
APP_NAME = r"^[a-zA-Z0-9_]+$"
STACK = r"^[a-zA-Z0-9_]*$"
DETAIL = r"^[a-zA-Z0-9_-]*$"


class SpecModel(BaseModel):
    """Base of every spec model: camelCase keys, unknown keys forbidden."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=True,
    )


# --------------------------------------------------------------------------- common


NotifyEvent = Literal["starting", "complete", "failed"]
RunStatus = Literal["succeeded", "failed"]


def _on_failure_only() -> list[NotifyEvent]:
    return ["failed"]


def _succeeded_only() -> list[RunStatus]:
    return ["succeeded"]


class Notification(SpecModel):
    """Tell someone about a pipeline or stage event (Spinnaker's notifications)."""

    type: Literal["email", "webhook"] = Field(description="email (Airflow's SMTP connection) or webhook (POST)")
    to: list[str] = Field(default_factory=list, description="email: recipients")
    url: str | None = Field(default=None, description="webhook: URL that receives a JSON POST")
    when: list[NotifyEvent] = Field(default_factory=_on_failure_only, min_length=1)
    message: str | None = Field(default=None, description="extra text, Jinja-templated")

    @model_validator(mode="after")
    def _target(self) -> Notification:
        if self.type == "email" and not self.to:
            raise ValueError("an email notification needs 'to' (one or more addresses)")
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook notification needs 'url'")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class TimeRange(SpecModel):
    """An allowed time of day, ``start`` inclusive, ``end`` exclusive (``22:00``-``06:00`` wraps)."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"{v!r} is not a time of day as HH:MM")
        return v


class ExecutionWindow(SpecModel):
    """When a stage may start (Spinnaker's restrictExecutionDuringTimeWindow).

    Outside the window the stage waits (deferred: no worker slot) until it opens.
    """

    days: list[Weekday] = Field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]  # type: ignore[arg-type]
    )
    hours: list[TimeRange] = Field(default_factory=list, description="empty = all day")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)


def _check_timezone(v: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)") from None
    return v


OnFailure = Literal["halt", "haltBranch", "failAfterBranches", "ignore"]


class StageBase(SpecModel):
    """Fields every stage takes."""

    id: str = Field(pattern=IDENT, max_length=200, description="unique within the pipeline; the task id")
    name: str | None = Field(default=None, description="display name (defaults to the id)")
    depends_on: list[str] | None = Field(
        default=None,
        description="stages that must finish first; omitted = the previous stage in the list, [] = none",
    )
    when: str | bool | None = Field(
        default=None,
        description="run only if this Jinja expression is true, e.g. \"params.env == 'prod'\"; "
        "earlier stages' outputs are stages.<id>.<key>",
    )
    on_failure: OnFailure = Field(
        default="halt",
        description="halt: fail the pipeline now; haltBranch: stop this branch only; "
        "failAfterBranches: stop this branch, fail once the others end; ignore: carry on",
    )
    timeout: Duration | None = None
    retries: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Airflow retries of the stage's task (a lost worker, an unreachable cloud); cloud stages "
        "carry on where the failed try stopped",
    )
    retry_delay: Duration = Field(default=timedelta(seconds=10), description="wait before a retry")
    execution_window: ExecutionWindow | None = None
    notifications: list[Notification] = Field(default_factory=list)

    @property
    def display_name(self) -> str:
        return self.name or self.id


# --------------------------------------------------------------------------- cloud pieces


MAX_CAPACITY = 10_000
"""No server group asks for more (``gennaker.cloud.limits.SANE_MAX_CAPACITY``; accounts have lower limits)."""


class Capacity(SpecModel):
    """Instance counts of a server group (at most :data:`MAX_CAPACITY`: a typo must not start a runaway)."""

    min: int = Field(ge=0, le=MAX_CAPACITY)
    max: int = Field(ge=0, le=MAX_CAPACITY)
    desired: int = Field(ge=0, le=MAX_CAPACITY)

    @model_validator(mode="after")
    def _ordered(self) -> Capacity:
        if not self.min <= self.desired <= self.max:
            raise ValueError(
                f"must satisfy min <= desired <= max (got min={self.min}, desired={self.desired}, max={self.max})"
            )
        return self


class ClusterRef(SpecModel):
    """Which cluster: ``<application>-<stack>-<detail>``; the application is the pipeline's."""

    stack: str = Field(default="", pattern=STACK)
    detail: str = Field(default="", pattern=DETAIL)
    application: str | None = Field(default=None, pattern=APP_NAME, description="default: the pipeline's")


class CloudStage(StageBase):
    """A stage that talks to a cloud provider account."""

    provider: str = Field(
        default="local",
        description="the kind of cloud: local, or the kind of an installed provider (aws and gcp once built)",
        examples=["local", "aws", "gcp"],
    )
    account: str = Field(default="local", description="Airflow connection id of the provider account")
    region: str | None = None

    @field_validator("provider")
    @classmethod
    def _installed(cls, v: str) -> str:
        # The registry knows the kinds of the installed providers (gennaker.providers entry points).
        from gennaker.cloud.registry import provider_kind_problem

        problem = provider_kind_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


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


# --------------------------------------------------------------------------- canary


class EffectSize(SpecModel):
    """Effect-size gates (Kayenta): how big a change must be to count, and to be critical.

    Unset thresholds take Kayenta's defaults: 1.0 for ``meanRatio``, 0.5 for ``cles``.
    """

    measure: Literal["meanRatio", "cles"] = Field(
        default="meanRatio", description="meanRatio: canary mean / baseline mean; cles: common-language effect size"
    )
    allowed_increase: float | None = Field(
        default=None, gt=0, description="a High needs at least this effect; default 1.0 (cles: 0.5)"
    )
    allowed_decrease: float | None = Field(
        default=None, gt=0, description="a Low needs at most this effect; default 1.0 (cles: 0.5)"
    )
    critical_increase: float | None = Field(
        default=None, gt=0, description="a critical metric's High fails the canary from this effect on"
    )
    critical_decrease: float | None = Field(
        default=None, gt=0, description="a critical metric's Low fails the canary from this effect on"
    )


class Outliers(SpecModel):
    """Kayenta's outlier removal: drop points beyond ``factor`` interquartile ranges."""

    strategy: Literal["keep", "remove"] = "keep"
    factor: float = Field(default=3.0, gt=0, description="IQR multiplier")


_PLACEHOLDER = re.compile(r"\$\{\s*([^}]*?)\s*\}")
CANARY_QUERY_VARIABLES = ("scope", "serverGroup", "cluster", "application", "account", "region", "location")
"""What a canary metric query may name as ``${...}``; replaced by the baseline's or the canary's value."""


class CanaryMetric(SpecModel):
    """One metric the judge compares between baseline and canary."""

    name: str = Field(min_length=1, description="shown in the log and the report")
    query: str = Field(
        min_length=1,
        description="local: a series name (error_rate, latency_p50, ...); prometheus: PromQL with ${scope} "
        "(the server group), ${cluster}, ${region}/${location}, ${account}, ${application}",
    )
    group: str = Field(default="default", min_length=1, description="the metric group (groupWeights)")
    direction: Literal["increase", "decrease", "either"] = Field(
        default="either", description="which change fails: increase (High), decrease (Low) or either"
    )
    critical: bool = Field(default=False, description="a failing critical metric fails the whole canary (score 0)")
    must_have_data: bool = Field(default=False, description="no data counts as a failure")
    muted: bool = Field(default=False, description="reported, not scored")
    nan_strategy: Literal["remove", "replace"] = Field(default="remove", description="replace: missing points are 0")
    outliers: Outliers = Field(default_factory=Outliers)
    effect_size: EffectSize = Field(default_factory=EffectSize)

    @field_validator("query")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        for name in _PLACEHOLDER.findall(v):
            if name not in CANARY_QUERY_VARIABLES:
                known = ", ".join("${" + n + "}" for n in CANARY_QUERY_VARIABLES)
                raise ValueError(f"unknown placeholder ${{{name}}} in the query; known: {known}")
        return v


class MetricSource(SpecModel):
    """Where a canary's metrics come from."""

    type: str = Field(
        default="local",
        description="local: the local load balancers' per-server-group series; prometheus: PromQL over the "
        "Prometheus HTTP API (query_range); cloudwatch and cloudMonitoring arrive with the AWS and GCP providers; "
        "or the type of an installed metric source",
        examples=["local", "prometheus", "cloudwatch", "cloudMonitoring"],
    )
    endpoint: str | None = Field(
        default=None, description="prometheus: base URL of the HTTP API, e.g. http://prometheus:9090"
    )
    connection: str | None = Field(
        default=None,
        description="prometheus: an Airflow connection (HTTP) with the endpoint and credentials, instead of endpoint",
    )
    step: Duration | None = Field(
        default=None, description="time between samples; default 1s (local), 15s (prometheus)"
    )
    timeout: Duration = Field(default=timedelta(seconds=30), description="prometheus: per HTTP request")

    @field_validator("type")
    @classmethod
    def _available(cls, v: str) -> str:
        # The registry knows the installed metric sources (gennaker.metric_sources entry points).
        from gennaker.cloud import registry

        problem = registry.metric_source_problem(v)
        if problem is not None:
            later = v in registry.PLANNED_METRIC_SOURCES
            raise ValueError(problem + (f"; use {registry.installed_metric_sources_text()} meanwhile" if later else ""))
        return v

    @field_validator("step")
    @classmethod
    def _step(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v < timedelta(seconds=1):
            raise ValueError("the step must be at least 1s")
        return v

    @model_validator(mode="after")
    def _where(self) -> MetricSource:
        # Each source says which settings it needs (an endpoint, none); _available vouched for the type.
        from gennaker.cloud import registry

        try:
            source = registry.metric_source_class(self.type)
        except registry.Unavailable as error:
            raise ValueError(error.message) from None
        problem = source.check_spec(self.model_dump(mode="json", by_alias=True))
        if problem is not None:
            raise ValueError(problem)
        return self


class CanaryThresholds(SpecModel):
    """Scores: at or above ``pass`` passes; at or below ``marginal`` fails (and stops the canary at once)."""

    pass_: int = Field(default=75, ge=0, le=100, alias="pass")
    marginal: int = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> CanaryThresholds:
        if self.marginal > self.pass_:
            raise ValueError("marginal must be <= pass")
        return self


class Lookback(SpecModel):
    """Which data each judgement reads: all since the start (growing) or the last ``duration`` (sliding)."""

    type: Literal["growing", "sliding"] = "growing"
    duration: Duration | None = Field(default=None, description="sliding: the window's length; default the interval")

    @model_validator(mode="after")
    def _duration(self) -> Lookback:
        if self.type == "growing" and self.duration is not None:
            raise ValueError("a growing lookback reads everything since the start: it takes no duration")
        if self.duration is not None and self.duration <= timedelta(0):
            raise ValueError("the lookback duration must be positive")
        return self


class CanaryStage(CloudStage):
    """Run baseline and canary side by side on live traffic and judge them (Kayenta's NetflixACAJudge)."""

    type: Literal["canary"]
    cluster: ClusterRef | None = Field(default=None, description="the live cluster; default: the upstream deploy's")
    baseline: str | None = Field(
        default=None, description="analyse this existing server group (no deployment)... (Jinja-templated)"
    )
    canary: str | None = Field(default=None, description="...against this one (both or neither)")
    capacity: int = Field(default=1, ge=1, description="instances each of baseline and canary")
    traffic_percent: int = Field(
        default=10, ge=1, le=50, description="share of the live traffic for each of baseline and canary"
    )
    lifetime: Duration = Field(default=timedelta(minutes=30), description="how long the canary runs")
    interval: Duration = Field(default=timedelta(minutes=5), description="one judgement per interval")
    warmup: Duration = Field(default=timedelta(0), description="wait this long before the first interval")
    lookback: Lookback = Field(default_factory=Lookback)
    baseline_offset: Duration = Field(default=timedelta(0), description="read the baseline this much earlier")
    thresholds: CanaryThresholds = Field(default_factory=CanaryThresholds)
    marginal: Literal["fail", "judge"] = Field(
        default="fail", description="a final score between marginal and pass: fail, or judge (ask a person)"
    )
    metric_source: MetricSource = Field(default_factory=MetricSource)
    metrics: list[CanaryMetric] = Field(default_factory=list)
    group_weights: dict[str, float] = Field(
        default_factory=dict, description="group -> weight (they add up to 100); default: equal"
    )
    config_file: str | None = Field(
        default=None,
        description="a Kayenta canary-config JSON (path relative to the spec), used as is instead of metrics",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CanaryStage:
        if (self.baseline is None) != (self.canary is None):
            raise ValueError("give both 'baseline' and 'canary' server groups, or neither")
        if not self.metrics and not self.config_file:
            raise ValueError("give 'metrics' or a Kayenta 'configFile'")
        if self.metrics and self.config_file:
            raise ValueError("give 'metrics' or a Kayenta 'configFile', not both")
        names = [m.name for m in self.metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"metric names must be unique ({', '.join(repr(n) for n in twice)} more than once)")
        if self.lifetime <= timedelta(0) or self.interval <= timedelta(0):
            raise ValueError("lifetime and interval must be positive")
        if self.interval > self.lifetime:
            raise ValueError("interval must not be longer than lifetime")
        if self.group_weights:
            groups = {m.group for m in self.metrics}
            missing = groups - set(self.group_weights)
            if missing and self.metrics:
                raise ValueError(f"groupWeights has no weight for group(s) {sorted(missing)}")
            total = sum(self.group_weights.values())
            if abs(total - 100) > 1e-6:
                raise ValueError(f"groupWeights must add up to 100 (they add up to {total:g})")
        return self


# --------------------------------------------------------------------------- no-cloud stages


class WaitStage(StageBase):
    """Wait for a while without holding a worker slot."""

    type: Literal["wait"]
    duration: Duration = Field(description="deferred to the triggerer: no worker slot is held")


class ManualJudgmentStage(StageBase):
    """Ask a person (Airflow's human-in-the-loop)."""

    type: Literal["manualJudgment"]
    subject: str | None = Field(default=None, description="default: the stage's name")
    instructions: str | None = None
    options: list[str] = Field(default_factory=lambda: ["continue", "stop"], min_length=1)
    fail_on: list[str] | None = Field(
        default=None, description="choosing one of these fails the stage; default: stop, if offered"
    )
    respondents: list[str] = Field(default_factory=list, description="user ids who may answer; empty = any")
    default: str | None = Field(default=None, description="chosen when the timeout passes")

    @property
    def failing_options(self) -> list[str]:
        if self.fail_on is not None:
            return list(self.fail_on)
        return ["stop"] if "stop" in self.options else []

    @model_validator(mode="after")
    def _options(self) -> ManualJudgmentStage:
        if len(set(self.options)) != len(self.options):
            raise ValueError("options must be unique")
        for label, values in (
            ("failOn", self.fail_on or []),
            ("default", [self.default] if self.default else []),
        ):
            unknown = [v for v in values if v not in self.options]
            if unknown:
                raise ValueError(f"{label} {unknown} must be among options {self.options}")
        if self.default is None and self.timeout is not None:
            raise ValueError("a timeout needs a 'default' option to choose when nobody answers")
        return self


class Precondition(SpecModel):
    expression: str = Field(min_length=1, description="Jinja expression that must be true")
    message: str | None = Field(default=None, description="shown when it is false")


class CheckPreconditionsStage(StageBase):
    """Fail unless every expression holds."""

    type: Literal["checkPreconditions"]
    preconditions: list[Precondition] = Field(min_length=1)


class RunPipelineStage(StageBase):
    """Start another pipeline with parameters and wait for its result."""

    type: Literal["runPipeline"]
    pipeline: str = Field(pattern=r"^[A-Za-z0-9_]+\.[A-Za-z0-9_.-]+$", description="<application>.<name>")
    parameters: dict[str, Any] = Field(default_factory=dict)
    wait_for_completion: bool = True
    poll_interval: Duration = Field(
        default=timedelta(seconds=10), description="how often the child's state is checked (at least 6s on Airflow 3.3)"
    )


class WebhookStage(StageBase):
    """Call an HTTP endpoint, optionally polling a status URL until it says done."""

    type: Literal["webhook"]
    url: str = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    payload: Any = None
    connection: str | None = Field(default=None, description="Airflow HTTP connection for credentials")
    expected_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    wait_for_completion: bool = False
    status_url: str | None = None
    status_json_path: str | None = Field(default=None, description="e.g. $.status")
    success_statuses: list[str] = Field(default_factory=lambda: ["SUCCESS"])
    failure_statuses: list[str] = Field(default_factory=lambda: ["FAILURE", "TERMINAL"])
    poll_interval: Duration = timedelta(seconds=10)


class JenkinsStage(StageBase):
    """Run a Jenkins job and wait for its build."""

    type: Literal["jenkins"]
    connection: str = "jenkins_default"
    job: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    wait_for_completion: bool = True
    mark_unstable_as_successful: bool = False
    property_file: str | None = Field(default=None, description="build artifact whose properties become outputs")
    poll_interval: Duration = timedelta(seconds=15)


Stage = Annotated[
    BakeStage
    | FindImageStage
    | DeployStage
    | CanaryStage
    | PromoteStage
    | UpsertLoadBalancerStage
    | RollbackStage
    | EnableServerGroupStage
    | DisableServerGroupStage
    | ResizeServerGroupStage
    | DestroyServerGroupStage
    | ManualJudgmentStage
    | WaitStage
    | CheckPreconditionsStage
    | RunPipelineStage
    | WebhookStage
    | JenkinsStage,
    Field(discriminator="type"),
]

STAGE_TYPES: tuple[str, ...] = (
    "bake",
    "findImage",
    "deploy",
    "canary",
    "promote",
    "upsertLoadBalancer",
    "rollback",
    "enableServerGroup",
    "disableServerGroup",
    "resizeServerGroup",
    "destroyServerGroup",
    "manualJudgment",
    "wait",
    "checkPreconditions",
    "runPipeline",
    "webhook",
    "jenkins",
)

# --------------------------------------------------------------------------- triggers


class CronTrigger(SpecModel):
    type: Literal["cron"] = Field(description="becomes the DAG's schedule (CronTriggerTimetable)")
    expression: str = Field(min_length=1, description="five-field cron, e.g. '0 10 * * 1-5'")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)

    @field_validator("expression")
    @classmethod
    def _cron(cls, v: str) -> str:
        from croniter import croniter

        if len(v.split()) != 5 or not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a five-field cron expression (minute hour day month weekday)")
        return v


class PipelineTrigger(SpecModel):
    """Start when another pipeline ends in one of the listed statuses."""

    type: Literal["pipeline"] = Field(description="through Airflow assets emitted when the other one ends")
    pipeline: str = Field(pattern=r"^[A-Za-z0-9_]+\.[A-Za-z0-9_.-]+$", description="<application>.<name>")
    status: list[RunStatus] = Field(default_factory=_succeeded_only, min_length=1)


class JenkinsTrigger(SpecModel):
    """Start when a Jenkins job's build succeeds."""

    type: Literal["jenkins"]
    connection: str = "jenkins_default"
    job: str = Field(min_length=1)
    artifact: str | None = Field(default=None, description="glob of the build artifact to pass on")
    poll_interval: Duration = timedelta(minutes=1)


Trigger = Annotated[CronTrigger | PipelineTrigger | JenkinsTrigger, Field(discriminator="type")]

# --------------------------------------------------------------------------- pipeline


class Parameter(SpecModel):
    """A run parameter; becomes an Airflow Param in the trigger form.

    ``options`` and ``pattern`` become the Param's JSON Schema (``enum``, ``pattern``):
    Airflow refuses a run whose value does not fit (the trigger form and the REST API
    answer 400) before any task runs. Guard what a trigger may send, e.g. a version
    that becomes part of an artifact name: ``pattern: '[0-9]+\\.[0-9]+\\.[0-9]+'``.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="params.<name> in expressions")
    description: str | None = Field(default=None, description="shown in the trigger form")
    default: str | int | float | bool | None = Field(default=None, description="its type is the Param's type")
    required: bool = Field(default=False, description="the trigger form insists on a value")
    options: list[str | int | float] | None = Field(default=None, min_length=1, description="allowed values")
    pattern: str | None = Field(
        default=None,
        min_length=1,
        description="a Python regular expression the whole value must match, e.g. '[0-9]+\\.[0-9]+\\.[0-9]+' "
        "(string parameters)",
    )

    @field_validator("pattern")
    @classmethod
    def _pattern_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A valid regex, for a string parameter, that its own default and options match."""
        if value is None:
            return None
        try:
            re.compile(value)  # on its own first: wrapped, `[0-9` would still compile, as something else
            regex = re.compile(whole_value_pattern(value))
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        default = info.data.get("default")
        for what, given in [("the default", default), *(("option", o) for o in info.data.get("options") or [])]:
            if given is None:
                continue
            if not isinstance(given, str):
                raise ValueError(f"a pattern applies to strings, and {what} {given!r} is not one")
            if not regex.search(given):
                raise ValueError(f"{what} {given!r} does not match this pattern")
        return value

    @model_validator(mode="after")
    def _default_in_options(self) -> Parameter:
        if self.options is not None and self.default is not None and self.default not in self.options:
            raise ValueError(f"default {self.default!r} is not one of options {self.options}")
        return self


def whole_value_pattern(pattern: str) -> str:
    """``pattern`` anchored to the whole value, as JSON Schema's ``pattern`` (a search) is given it.

    ``(?![\\s\\S])`` is "end of the value" in Python and in JavaScript alike; ``$`` would
    also let a trailing newline through.
    """
    return f"^(?:{pattern})(?![\\s\\S])"


class Concurrency(SpecModel):
    """Spinnaker's limitConcurrent / keepWaitingPipelines."""

    limit: int = Field(default=16, ge=1, description="runs at once (Airflow's max_active_runs)")
    keep_waiting: bool = Field(
        default=True,
        description="false = when runs queue up, only the newest waiting one runs; older ones are skipped",
    )


def _allow_rule(value: str) -> str:
    from gennaker.artifact_refs import parse_rule

    parse_rule(value)  # a ValueError becomes this entry's file:line error
    return value


class ArtifactPolicy(SpecModel):
    """Where a bake may read artifacts from besides the artifact folder (see gennaker.artifact_refs)."""

    allow: list[Annotated[str, AfterValidator(_allow_rule)]] = Field(
        default_factory=list,
        description="URL prefixes a bake's artifact may come from, e.g. https://artifacts.example.com/builds/ "
        "(same scheme, host and port; a path under it) or file:///srv/builds/ (absolute paths under it); "
        "without one, only relative paths inside $GENNAKER_ARTIFACTS",
    )


class Pipeline(SpecModel):
    """One pipeline = one Airflow DAG, ``dag_id = <application>.<name>``."""

    schema_: str | None = Field(default=None, alias="$schema", exclude=True)
    application: str = Field(pattern=APP_NAME, max_length=100, description="letters, digits, _ (no '-')")
    name: str = Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=150, description="the dag_id is <application>.<name>"
    )
    description: str | None = Field(default=None, description="shown in the DAG list")
    owner: str = Field(default="gennaker", description="Airflow task owner")
    tags: list[str] = Field(default_factory=list, description="DAG tags, besides the application and 'gennaker'")
    parameters: list[Parameter] = Field(default_factory=list, description="run parameters (the trigger form)")
    triggers: list[Trigger] = Field(
        default_factory=list, description="besides manual runs, which are always possible; several = any of them"
    )
    concurrency: Concurrency = Field(default_factory=Concurrency)
    notifications: list[Notification] = Field(default_factory=list, description="on pipeline events")
    artifacts: ArtifactPolicy = Field(
        default_factory=ArtifactPolicy, description="where bakes may read artifacts from (untrusted references)"
    )
    stages: list[Stage] = Field(min_length=1, description="the stages; each a task, wired by dependsOn")

    @property
    def dag_id(self) -> str:
        return f"{self.application}.{self.name}"

    def stage(self, stage_id: str) -> Any:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(stage_id)

    def parents(self) -> dict[str, list[str]]:
        """Each stage's parents: ``dependsOn``, or the previous stage when it is omitted."""
        out: dict[str, list[str]] = {}
        prev: str | None = None
        for s in self.stages:
            if s.depends_on is not None:
                out[s.id] = list(s.depends_on)
            else:
                out[s.id] = [prev] if prev is not None else []
            prev = s.id
        return out


# Fields of the spec that are not pipeline fields: used by templates and defaults.
TEMPLATE_KEYS = ("template", "variables")
