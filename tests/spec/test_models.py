"""The spec language's rules, as a user meets them: through a spec file and its error headlines."""

from collections.abc import Callable
from datetime import timedelta

import pytest
from pydantic import ValidationError

from gennaker.spec.loader import LoadedSpec
from gennaker.spec.models import (
    STAGE_TYPES,
    Capacity,
    DeployStage,
    Highlander,
    ManualJudgmentStage,
    NoStrategy,
    Pipeline,
    RedBlack,
    RollingRedBlack,
    Stage,
    WaitStage,
)

Errors = Callable[..., list[str]]
Load = Callable[..., LoadedSpec]

HEAD = "application: hello\nname: p\n"


def deploy(body: str) -> str:
    """A pipeline with a bake and a deploy stage whose extra fields are ``body`` (indented 4)."""
    return HEAD + "stages:\n  - {id: bake, type: bake, package: hello}\n  - id: deploy\n    type: deploy\n" + body


# --------------------------------------------------------------------------- capacity


def test_capacity_in_order_is_accepted(load: Load) -> None:
    spec = load(deploy("    capacity: {min: 1, desired: 2, max: 3}\n"))
    assert spec.pipeline.stages[1].capacity == Capacity(min=1, desired=2, max=3)


def test_capacity_desired_above_max(errors: Errors) -> None:
    assert errors(deploy("    capacity: {min: 1, desired: 4, max: 3}\n")) == [
        "spec.yaml:7:15 stages[1].capacity: must satisfy min <= desired <= max (got min=1, desired=4, max=3)"
    ]


def test_capacity_min_above_desired(errors: Errors) -> None:
    assert errors(deploy("    capacity: {min: 3, desired: 2, max: 3}\n")) == [
        "spec.yaml:7:15 stages[1].capacity: must satisfy min <= desired <= max (got min=3, desired=2, max=3)"
    ]


def test_capacity_negative_and_missing(errors: Errors) -> None:
    assert errors(deploy("    capacity:\n      min: -1\n      max: 2\n")) == [
        "spec.yaml:8:7 stages[1].capacity.desired: missing required field 'desired'",
        "spec.yaml:8:12 stages[1].capacity.min: must be >= 0 (got -1)",
    ]


# --------------------------------------------------------------------------- stage union


def test_each_stage_type_gets_its_own_model() -> None:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(Stage)
    wait = adapter.validate_python({"id": "w", "type": "wait", "duration": "5s"})
    assert isinstance(wait, WaitStage)
    assert wait.duration == timedelta(seconds=5)
    judge = adapter.validate_python({"id": "j", "type": "manualJudgment"})
    assert isinstance(judge, ManualJudgmentStage)
    assert judge.options == ["continue", "stop"]
    assert judge.failing_options == ["stop"]


def test_stage_types_constant_matches_the_union() -> None:
    from typing import get_args

    union = get_args(get_args(Stage)[0])
    names = [get_args(m.model_fields["type"].annotation)[0] for m in union]
    assert tuple(names) == STAGE_TYPES


def test_unknown_stage_type_suggests_the_closest(errors: Errors) -> None:
    (err,) = errors(HEAD + "stages:\n  - {id: w, type: wiat, duration: 1s}\n")
    assert err.startswith("spec.yaml:4:19 stages[0].type: unknown type 'wiat' (did you mean 'wait'?); one of: 'bake',")


def test_missing_stage_type(errors: Errors) -> None:
    assert errors(HEAD + "stages:\n  - {id: w, duration: 1s}\n") == ["spec.yaml:4:5 stages[0]: missing 'type'"]


def test_a_field_of_another_stage_type_is_unknown_here(errors: Errors) -> None:
    assert errors(HEAD + "stages:\n  - {id: w, type: wait, duration: 1s, package: x}\n") == [
        "spec.yaml:4:39 stages[0].package: unknown field 'package'"
    ]


def test_missing_required_field_points_at_the_stage(errors: Errors) -> None:
    assert errors(HEAD + "stages:\n  - id: w\n    type: wait\n") == [
        "spec.yaml:4:5 stages[0].duration: missing required field 'duration'"
    ]


def test_stage_level_rules_are_reported_on_the_stage_not_on_the_type_name(errors: Errors) -> None:
    # pydantic puts the union member ('resizeServerGroup') in the error's location; users never wrote it.
    assert errors(HEAD + "stages:\n  - id: r\n    type: resizeServerGroup\n") == [
        "spec.yaml:4:5 stages[0]: give exactly one of 'capacity', 'scaleBy' or 'scalePercent'"
    ]


def test_canary_stage_with_a_canary_field_reports_the_right_field(errors: Errors) -> None:
    # The canary stage has a field named like its type: errors must still land on the field at fault.
    text = (
        HEAD + "stages:\n  - id: k\n    type: canary\n    baseline: sg-v001\n    canary: sg-v002\n"
        "    lifetime: forever\n    metrics: [{name: errors, query: error_rate}]\n"
    )
    (err,) = errors(text)
    assert err.startswith("spec.yaml:8:15 stages[0].lifetime: 'forever' is not a duration")


def test_empty_stage_list(errors: Errors) -> None:
    assert errors(HEAD + "stages: []\n") == [
        "spec.yaml:3:9 stages: list should have at least 1 item after validation, not 0"
    ]


# --------------------------------------------------------------------------- strategies


@pytest.mark.parametrize(
    ("text", "model"),
    [
        ("{type: redblack, maxRemaining: 2}", RedBlack),
        ("{type: highlander}", Highlander),
        ("{type: rollingRedBlack, targetPercentages: [25, 50, 100], pauseBetween: 5m}", RollingRedBlack),
        ("{type: none}", NoStrategy),
    ],
)
def test_strategies(load: Load, text: str, model: type) -> None:
    stage = load(deploy(f"    strategy: {text}\n")).pipeline.stages[1]
    assert isinstance(stage.strategy, model)


def test_default_strategy_is_redblack() -> None:
    stage = DeployStage.model_validate({"id": "d", "type": "deploy"})
    assert stage.strategy == RedBlack(type="redblack")


def test_unknown_strategy(errors: Errors) -> None:
    assert errors(deploy("    strategy: {type: redblak}\n")) == [
        "spec.yaml:7:22 stages[1].strategy.type: unknown type 'redblak' (did you mean 'redblack'?); "
        "one of: 'redblack', 'highlander', 'rollingRedBlack', 'none'"
    ]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("[50, 25, 100]", "must be strictly increasing, e.g. [25, 50, 100]"),
        ("[25, 50]", "the last step must be 100"),
        ("[0, 100]", "must be > 0 (got 0)"),
    ],
)
def test_rolling_steps(errors: Errors, steps: str, message: str) -> None:
    (err,) = errors(deploy(f"    strategy: {{type: rollingRedBlack, targetPercentages: {steps}}}\n"))
    assert err.endswith(message)
    assert "stages[1].strategy.targetPercentages" in err


def test_a_field_of_another_strategy_is_unknown(errors: Errors) -> None:
    assert errors(deploy("    strategy: {type: highlander, maxRemaining: 2}\n")) == [
        "spec.yaml:7:34 stages[1].strategy.maxRemaining: unknown field 'maxRemaining'"
    ]


# --------------------------------------------------------------------------- manualJudgment


def judgment(body: str) -> str:
    return HEAD + "stages:\n  - id: approve\n    type: manualJudgment\n" + body


def test_judgment_with_options_default_and_timeout(load: Load) -> None:
    stage = load(judgment("    options: [go, wait, abort]\n    failOn: [abort]\n    default: wait\n    timeout: 1h\n"))
    s = stage.pipeline.stages[0]
    assert s.options == ["go", "wait", "abort"]
    assert s.failing_options == ["abort"]
    assert s.default == "wait"
    assert s.timeout == timedelta(hours=1)


def test_judgment_fails_on_stop_only_when_offered(load: Load) -> None:
    assert load(judgment("    options: [approve, reject]\n")).pipeline.stages[0].failing_options == []


def test_judgment_default_must_be_an_option(errors: Errors) -> None:
    assert errors(judgment("    options: [go, abort]\n    default: maybe\n")) == [
        "spec.yaml:4:5 stages[0]: default ['maybe'] must be among options ['go', 'abort']"
    ]


def test_judgment_fail_on_must_be_options(errors: Errors) -> None:
    assert errors(judgment("    options: [go, abort]\n    failOn: [stop]\n")) == [
        "spec.yaml:4:5 stages[0]: failOn ['stop'] must be among options ['go', 'abort']"
    ]


def test_judgment_timeout_needs_a_default(errors: Errors) -> None:
    assert errors(judgment("    timeout: 1h\n")) == [
        "spec.yaml:4:5 stages[0]: a timeout needs a 'default' option to choose when nobody answers"
    ]


def test_judgment_options_unique_and_not_empty(errors: Errors) -> None:
    assert errors(judgment("    options: [go, go]\n")) == ["spec.yaml:4:5 stages[0]: options must be unique"]
    assert errors(judgment("    options: []\n")) == [
        "spec.yaml:6:14 stages[0].options: list should have at least 1 item after validation, not 0"
    ]


# --------------------------------------------------------------------------- triggers


def trigger(text: str) -> str:
    return HEAD + f"triggers:\n  - {text}\nstages:\n  - {{id: w, type: wait, duration: 1s}}\n"


def test_cron_trigger_accepted(load: Load) -> None:
    t = load(trigger('{type: cron, expression: "0 18 * * 1-5", timezone: Europe/Berlin}')).pipeline.triggers[0]
    assert (t.expression, t.timezone) == ("0 18 * * 1-5", "Europe/Berlin")


@pytest.mark.parametrize("expression", ["0 25 * * *", "* * * *", "0 0 * * * *", "@daily", "every day"])
def test_bad_cron(errors: Errors, expression: str) -> None:
    assert errors(trigger(f'{{type: cron, expression: "{expression}"}}')) == [
        f"spec.yaml:4:30 triggers[0].expression: {expression!r} is not a five-field cron expression "
        "(minute hour day month weekday)"
    ]


def test_bad_timezone(errors: Errors) -> None:
    assert errors(trigger('{type: cron, expression: "0 1 * * *", timezone: Europe/Berlim}')) == [
        "spec.yaml:4:53 triggers[0].timezone: unknown time zone 'Europe/Berlim' "
        "(use an IANA name such as Europe/Berlin)"
    ]


def test_bad_execution_window_timezone_and_hours(errors: Errors) -> None:
    text = HEAD + (
        "stages:\n  - id: w\n    type: wait\n    duration: 1s\n"
        "    executionWindow:\n      timezone: Nowhere\n      hours: [{start: '25:00', end: '06:00'}]\n"
    )
    assert errors(text) == [
        "spec.yaml:8:17 stages[0].executionWindow.timezone: unknown time zone 'Nowhere' "
        "(use an IANA name such as Europe/Berlin)",
        "spec.yaml:9:23 stages[0].executionWindow.hours[0].start: '25:00' is not a time of day as HH:MM",
    ]


def test_pipeline_trigger_names_application_dot_name(errors: Errors) -> None:
    (err,) = errors(trigger("{type: pipeline, pipeline: release-checks}"))
    assert err.startswith("spec.yaml:4:32 triggers[0].pipeline: 'release-checks' does not match the pattern")


def test_pipeline_trigger_status_values(errors: Errors) -> None:
    (err,) = errors(trigger("{type: pipeline, pipeline: hello.x, status: [succeded]}"))
    assert err.startswith(
        "spec.yaml:4:50 triggers[0].status[0]: 'succeded' is not allowed (did you mean 'succeeded'?); one of:"
    )


# --------------------------------------------------------------------------- parameters


def params(text: str) -> str:
    return HEAD + f"parameters:\n  - {text}\nstages:\n  - {{id: w, type: wait, duration: 1s}}\n"


def test_parameter_default_among_options(load: Load) -> None:
    p = load(params("{name: env, default: prod, options: [staging, prod]}")).pipeline.parameters[0]
    assert (p.default, p.options) == ("prod", ["staging", "prod"])


def test_parameter_default_not_among_options(errors: Errors) -> None:
    assert errors(params("{name: env, default: qa, options: [staging, prod]}")) == [
        "spec.yaml:4:5 parameters[0]: default 'qa' is not one of options ['staging', 'prod']"
    ]


def test_parameter_name_must_be_an_identifier(errors: Errors) -> None:
    (err,) = errors(params("{name: my-param}"))
    assert err.startswith("spec.yaml:4:12 parameters[0].name: 'my-param' does not match the pattern")


# --------------------------------------------------------------------------- pipeline


def test_unknown_top_level_field_suggests(errors: Errors) -> None:
    assert errors(HEAD + "descripton: x\nstages:\n  - {id: w, type: wait, duration: 1s}\n") == [
        "spec.yaml:3:1 descripton: unknown field 'descripton' (did you mean 'description'?)"
    ]


def test_dag_id_and_implicit_order() -> None:
    p = Pipeline.model_validate(
        {
            "application": "hello",
            "name": "p",
            "stages": [
                {"id": "a", "type": "wait", "duration": 1},
                {"id": "b", "type": "wait", "duration": 1},
                {"id": "c", "type": "wait", "duration": 1, "dependsOn": ["a"]},
                {"id": "d", "type": "wait", "duration": 1, "dependsOn": []},
            ],
        }
    )
    assert p.dag_id == "hello.p"
    assert p.parents() == {"a": [], "b": ["a"], "c": ["a"], "d": []}


def test_application_may_not_contain_a_dash() -> None:
    with pytest.raises(ValidationError, match="application"):
        Pipeline.model_validate(
            {"application": "my-app", "name": "p", "stages": [{"id": "w", "type": "wait", "duration": 1}]}
        )
