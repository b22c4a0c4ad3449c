"""docs/spec-language.md, generated from the models so the reference cannot drift from the code."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gennaker.durations import format_duration
from gennaker.spec import models as m

INTRO = """\
# The pipeline language

Generated from `plugin/gennaker/spec/models.py` by `gennaker reference`; do not edit by
hand (a test checks it is current). Keys are camelCase. Unknown keys are errors.
Durations are written `30s`, `5m`, `2h`, `1h30m`, `1d` or ISO 8601 (`PT30M`); a bare
number is seconds. Strings marked *Jinja* are rendered by Airflow at run time
(`{{ params.version }}`, `{{ stages.bake.imageId }}`). See docs/design.md for how each
part maps onto Airflow.

A spec may instead say `template: <name>` with `variables: {...}` and add or override
stages by id; see templates/ and docs/design.md.

YAML anchors and aliases (`&name`, `*name`) and merge keys (`<<`) are errors in specs,
defaults.yaml and templates: an alias can refer to itself or expand a few hundred bytes
into millions of values. Share what repeats with templates or defaults.yaml instead.
"""

SECTIONS: list[tuple[str, list[type[BaseModel]]]] = [
    ("Pipeline", [m.Pipeline, m.Parameter, m.Concurrency, m.Notification]),
    ("Triggers", [m.CronTrigger, m.PipelineTrigger, m.JenkinsTrigger]),
    ("Fields of every stage", [m.StageBase, m.ExecutionWindow, m.TimeRange]),
    (
        "Stages that need no cloud",
        [m.WaitStage, m.ManualJudgmentStage, m.Precondition, m.CheckPreconditionsStage, m.RunPipelineStage],
    ),
    (
        "Delivery stages",
        [
            m.BakeStage,
            m.FindImageStage,
            m.DeployStage,
            m.ClusterRef,
            m.ImageRef,
            m.Capacity,
            m.HealthCheck,
            m.RollbackPolicy,
            m.RedBlack,
            m.Highlander,
            m.RollingRedBlack,
            m.NoStrategy,
            m.PromoteStage,
            m.RollbackStage,
        ],
    ),
    (
        "Server-group stages",
        [m.EnableServerGroupStage, m.DisableServerGroupStage, m.ResizeServerGroupStage, m.DestroyServerGroupStage],
    ),
    (
        "Canary",
        [
            m.CanaryStage,
            m.CanaryMetric,
            m.EffectSize,
            m.Outliers,
            m.MetricSource,
            m.CanaryThresholds,
            m.Lookback,
        ],
    ),
    ("Integrations", [m.WebhookStage, m.JenkinsStage]),
]


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        args = get_args(annotation)
        if args[0] is __import__("datetime").timedelta:
            return "duration"
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in get_args(annotation) if a is not type(None)]
        return " \\| ".join(parts)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        return f"map of {_type_name(get_args(annotation)[1])}"
    if annotation is typing.Any:
        return "any"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return annotation.__name__
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is None or value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        dumped = value.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        return f"`{dumped}`" if dumped else "(defaults)"
    if hasattr(value, "total_seconds"):
        return f"`{format_duration(value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == [] or value == {}:
        return ""
    return f"`{value}`"


def model_table(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().splitlines()
    lines = [f"### {model.__name__}", ""]
    if doc:
        lines += [" ".join(d.strip() for d in doc if d.strip()), ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    own = model.model_fields
    for name, field in own.items():
        if model is not m.StageBase and issubclass(model, m.StageBase) and name in m.StageBase.model_fields:
            continue
        if field.exclude:
            continue
        key = field.alias or name
        kind = "list of stages (one of the stage types, by `type`)" if key == "stages" else _type_name(field.annotation)
        desc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {_default(field)} | {desc} |")
    return "\n".join(lines) + "\n"


def render_reference() -> str:
    out = [INTRO]
    stage_types = ", ".join(f"`{t}`" for t in m.STAGE_TYPES)
    for title, models in SECTIONS:
        out.append(f"## {title}\n")
        if title == "Fields of every stage":
            out.append(f"Stage types: {stage_types}. Every stage also takes these fields:\n")
        for model in models:
            out.append(model_table(model))
    return "\n".join(out)
