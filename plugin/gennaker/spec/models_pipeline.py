"""The pipeline language's top level: triggers, run parameters, concurrency, the artifact
policy, and the Pipeline model itself.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from gennaker.durations import Duration
from gennaker.spec.models_common import APP_NAME, Notification, RunStatus, SpecModel, check_timezone
from gennaker.spec.models_stages import Stage


def _succeeded_only() -> list[RunStatus]:
    return ["succeeded"]


class CronTrigger(SpecModel):
    type: Literal["cron"] = Field(description="becomes the DAG's schedule (CronTriggerTimetable)")
    expression: str = Field(min_length=1, description="five-field cron, e.g. '0 10 * * 1-5'")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

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
