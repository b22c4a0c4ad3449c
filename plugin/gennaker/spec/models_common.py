"""The pipeline language's shared pieces: the base model, name patterns, notifications,
execution windows, the fields every stage takes, and what every cloud stage takes.

Public names are re-exported by :mod:`gennaker.spec.models`; import them from there.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from gennaker.durations import Duration

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
        return check_timezone(v)


def check_timezone(v: str) -> str:
    """``v`` if it names an IANA time zone; a ValueError (the field's error) otherwise."""
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
