"""The pipeline language's canary stage and its configuration (Kayenta's terms)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gennaker.durations import Duration
from gennaker.spec.models_common import CloudStage, ClusterRef, SpecModel


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
        except registry.MetricSourceUnavailable as error:
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
