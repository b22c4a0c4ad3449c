"""Pipeline templates: typed variables, overrides by stage id, ${} substitution."""

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from gennaker.errors import SpecErrors
from gennaker.spec.loader import LoadedSpec, load_spec
from gennaker.spec.models import BakeStage, CanaryStage, CheckPreconditionsStage, DeployStage, PromoteStage

REPO = Path(__file__).resolve().parents[2]

Write = Callable[[str, str], Path]
Load = Callable[..., LoadedSpec]
Errors = Callable[..., list[str]]

SHIPPED = "bake-deploy-canary-promote"


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENNAKER_TEMPLATE_PATH", str(REPO / "templates"))


def test_the_shipped_example_expands() -> None:
    spec = load_spec(REPO / "docs/examples/pipelines/hello/deploy-prod.yaml")
    p = spec.pipeline
    assert p.dag_id == "hello.deploy-prod"
    assert [(s.id, s.type) for s in p.stages] == [
        ("bake", "bake"),
        ("deploy", "deploy"),
        ("canary", "canary"),
        ("promote", "promote"),
        ("announce", "checkPreconditions"),
    ]
    bake, deploy, canary, promote, announce = p.stages
    assert isinstance(bake, BakeStage)
    assert (bake.package, bake.version, bake.account) == ("hello", "{{ params.version }}", "local")
    assert isinstance(deploy, DeployStage)
    assert (deploy.capacity.min, deploy.capacity.desired, deploy.capacity.max) == (3, 3, 3)
    assert deploy.cluster.stack == "prod"
    assert deploy.traffic is False
    assert isinstance(canary, CanaryStage)
    assert canary.lifetime == timedelta(hours=1)  # the spec's override
    assert canary.interval == timedelta(minutes=5)  # the template's default
    assert (canary.thresholds.pass_, canary.thresholds.marginal) == (75, 50)
    assert [m.name for m in canary.metrics] == ["error rate", "latency p50"]
    assert isinstance(promote, PromoteStage)
    assert isinstance(announce, CheckPreconditionsStage)
    assert [q.name for q in p.parameters] == ["version"]
    assert p.concurrency.limit == 1


def test_a_spec_can_set_every_variable(shipped: None, load: Load) -> None:
    spec = load(
        f"""
        application: hello
        name: p
        template: {SHIPPED}
        variables: {{package: hello, account: aws-prod, stack: main, instances: 4, canaryLifetime: 2h,
                     canaryInterval: PT10M, passScore: 90, marginalScore: 60}}
        """
    )
    bake, deploy, canary, _ = spec.pipeline.stages
    assert bake.account == deploy.account == canary.account == "aws-prod"
    assert deploy.capacity.desired == 4
    assert deploy.cluster.stack == "main"
    assert (canary.lifetime, canary.interval) == (timedelta(hours=2), timedelta(minutes=10))
    assert (canary.thresholds.pass_, canary.thresholds.marginal) == (90, 60)


def test_missing_variable(shipped: None, errors: Errors) -> None:
    text = f"application: hello\nname: p\ntemplate: {SHIPPED}\nvariables:\n  instances: 3\n"
    assert errors(text) == [
        "spec.yaml:4:1 variables: missing variable 'package' of type string (the package (artifact) to bake) "
        f"required by template '{SHIPPED}'"
    ]


def test_missing_variables_block_points_at_the_template_line(shipped: None, errors: Errors) -> None:
    assert errors(f"application: hello\nname: p\ntemplate: {SHIPPED}\n") == [
        "spec.yaml:3:1 variables: missing variable 'package' of type string (the package (artifact) to bake) "
        f"required by template '{SHIPPED}'"
    ]


def test_mistyped_variable(shipped: None, errors: Errors) -> None:
    text = f"application: hello\nname: p\ntemplate: {SHIPPED}\nvariables:\n  package: hello\n  instances: three\n"
    assert errors(text) == ["spec.yaml:6:14 variables.instances: must be of type integer (got str 'three')"]


def test_mistyped_duration_variable(shipped: None, errors: Errors) -> None:
    text = (
        f"application: hello\nname: p\ntemplate: {SHIPPED}\nvariables:\n  package: x\n  canaryLifetime: 1 fortnight\n"
    )
    (err,) = errors(text)
    assert err.startswith("spec.yaml:6:19 variables.canaryLifetime: '1 fortnight' is not a duration")


def test_unknown_variable_suggests(shipped: None, errors: Errors) -> None:
    text = f"application: hello\nname: p\ntemplate: {SHIPPED}\nvariables:\n  package: x\n  instance: 3\n"
    assert errors(text) == [
        f"spec.yaml:6:3 variables.instance: template '{SHIPPED}' has no variable 'instance' (did you mean 'instances'?)"
    ]


def test_unknown_template_suggests(shipped: None, errors: Errors) -> None:
    (err,) = errors("application: hello\nname: p\ntemplate: bake-deploy-canary\n")
    assert err.startswith(f"spec.yaml:3:11 template: unknown template 'bake-deploy-canary' (did you mean '{SHIPPED}'?)")


TEMPLATE = """
template: {name: tiny}
variables:
  - {name: count, type: integer, default: 2}
  - {name: dark, type: boolean, default: false}
  - {name: pause, type: duration, default: 5s}
  - {name: who, type: string, default: ops}
concurrency: {limit: 2}
stages:
  - id: soak
    type: wait
    duration: ${pause}
    name: "soak ${count}x, dark=${dark}, by ${who}, literal $${who}"
  - id: check
    type: checkPreconditions
    preconditions:
      - {expression: "params.dark == ${dark}", message: "$${count} is ${count}"}
  - id: deploy
    type: deploy
    image: {name: "app-${count}"}
    capacity: {min: 1, desired: "${count}", max: 10}
    strategy: {type: redblack, maxRemaining: 3}
"""


@pytest.fixture
def tiny(write: Write) -> None:
    write("templates/tiny.yaml", TEMPLATE)


def test_whole_string_keeps_the_type_embedded_becomes_text(tiny: None, load: Load) -> None:
    spec = load("application: hello\nname: p\ntemplate: tiny\nvariables: {count: 4, dark: true}\n")
    soak, check, deploy = spec.pipeline.stages
    assert deploy.capacity.desired == 4  # "${count}" alone: an integer
    assert soak.duration == timedelta(seconds=5)
    # Inside text: the value as YAML writes it ("true", not Python's "True"); $${ is a literal ${.
    assert soak.name == "soak 4x, dark=true, by ops, literal ${who}"
    assert check.preconditions[0].expression == "params.dark == true"
    assert check.preconditions[0].message == "${count} is 4"
    assert deploy.image.name == "app-4"


def test_spec_overrides_template_stages_by_id_and_appends(tiny: None, load: Load) -> None:
    spec = load(
        """
        application: hello
        name: p
        template: tiny
        concurrency: {limit: 5}
        stages:
          - id: deploy
            strategy: {maxRemaining: 1}
            capacity: {desired: 3}
          - id: announce
            type: wait
            duration: 1s
        """
    )
    p = spec.pipeline
    assert [s.id for s in p.stages] == ["soak", "check", "deploy", "announce"]
    deploy = p.stage("deploy")
    # Field by field: the override keeps the template's other fields, nested ones too.
    assert deploy.strategy.type == "redblack"
    assert deploy.strategy.max_remaining == 1
    assert (deploy.capacity.min, deploy.capacity.desired, deploy.capacity.max) == (1, 3, 10)
    assert deploy.image.name == "app-2"
    assert p.concurrency.limit == 5
    assert p.parents()["announce"] == ["deploy"]


def test_errors_in_the_template_point_into_the_template(tiny: None, errors: Errors) -> None:
    assert errors("application: hello\nname: p\ntemplate: tiny\nvariables: {count: 20}\n") == [
        "templates/tiny.yaml:20:15 stages[2].capacity: "
        "must satisfy min <= desired <= max (got min=1, desired=20, max=10)"
    ]


def test_errors_in_an_override_point_into_the_spec(tiny: None, errors: Errors) -> None:
    text = "application: hello\nname: p\ntemplate: tiny\nstages:\n  - id: soak\n    duration: later\n"
    (err,) = errors(text)
    assert err.startswith("spec.yaml:6:15 stages[0].duration: 'later' is not a duration")


def test_undeclared_variable_in_a_template(write: Write, errors: Errors) -> None:
    write(
        "templates/t.yaml",
        "template: {name: t}\nvariables:\n  - {name: count, type: integer}\nstages:\n"
        "  - {id: w, type: wait, duration: '${cont}s'}\n",
    )
    assert errors("application: hello\nname: p\ntemplate: t\nvariables: {count: 1}\n") == [
        "templates/t.yaml:5:35 stages[0].duration: template uses undeclared variable 'cont' (did you mean 'count'?)"
    ]


def test_a_bad_template_header(write: Write) -> None:
    path = write("spec.yaml", "application: hello\nname: p\ntemplate: t\n")
    write("templates/t.yaml", "template: {name: t}\nvariables:\n  - {name: n, type: int}\nstages: []\n")
    with pytest.raises(SpecErrors) as info:
        load_spec(path)
    (err,) = info.value.errors
    assert err.headline().startswith("templates/t.yaml:3:21 variables[0].type: 'int' is not allowed (did you mean")


def test_defaults_yaml_outranks_the_template(tiny: None, write: Write) -> None:
    # docs/design.md: precedence is the spec, then the nearest defaults.yaml ... the outermost, then the template.
    write("pipelines/defaults.yaml", "application: hello\nconcurrency: {limit: 7}\n")
    spec = write("pipelines/p.yaml", "name: p\ntemplate: tiny\n")
    p = load_spec(spec, root=spec.parent).pipeline
    assert p.dag_id == "hello.p"
    assert p.concurrency.limit == 7  # not the template's 2
    write("pipelines/p.yaml", "name: p\ntemplate: tiny\nconcurrency: {limit: 9}\n")
    assert load_spec(spec, root=spec.parent).pipeline.concurrency.limit == 9  # the spec's own beats both


def test_a_bad_default_over_a_template_points_into_defaults_yaml(tiny: None, write: Write) -> None:
    write("pipelines/defaults.yaml", "application: hello\nconcurrency: {limit: 0}\n")
    spec = write("pipelines/p.yaml", "name: p\ntemplate: tiny\n")
    with pytest.raises(SpecErrors) as info:
        load_spec(spec, root=spec.parent)
    assert [e.headline() for e in info.value.errors] == [
        "pipelines/defaults.yaml:2:22 concurrency.limit: must be >= 1 (got 0)"
    ]
