"""The pipeline language's stages without a cloud (wait, manual judgment, preconditions,
run pipeline, webhook, Jenkins), and the discriminated union of every stage type.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gennaker.durations import Duration
from gennaker.spec.models_canary import CanaryStage
from gennaker.spec.models_cloud import (
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
from gennaker.spec.models_common import SpecModel, StageBase


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
