"""Canary stages in specs: the operator and its cleanup teardown, Kayenta config files, errors at their positions."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gennaker.factory import FactoryResult, build_all

Write = Callable[[str, str], Path]
Build = Callable[[], FactoryResult]


@pytest.fixture
def pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("GENNAKER_PIPELINES", "_AIRFLOW_PARSING_CONTEXT_DAG_ID", "_AIRFLOW_PARSING_CONTEXT_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "pipelines"
    folder.mkdir()
    return folder


@pytest.fixture
def write(pipelines: Path) -> Write:
    def _write(rel: str, text: str) -> Path:
        path = pipelines / rel
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def build(pipelines: Path) -> Build:
    return lambda: build_all(pipelines, base=pipelines.parent)


HEAD = """
application: hello
name: p
stages:
  - {id: find, type: findImage, package: hello-service}
  - {id: deploy, type: deploy, cluster: {stack: prod, detail: eu}, traffic: false}
"""


def test_a_canary_after_a_deploy(write: Write, build: Build) -> None:
    from airflow.sdk import TriggerRule

    from gennaker.operators.canary import CanaryCleanupOperator, CanaryOperator

    write(
        "p.yaml",
        HEAD
        + """
  - id: canary
    type: canary
    capacity: 2
    trafficPercent: 5
    lifetime: 30s
    interval: 15s
    warmup: 5s
    lookback: {type: sliding}
    marginal: judge
    thresholds: {pass: 80, marginal: 60}
    metrics:
      - {name: errors, query: error_rate, direction: increase, critical: true, group: e}
      - {name: p50, query: latency_p50, effectSize: {allowedIncrease: 1.5}, group: l}
    groupWeights: {e: 70, l: 30}
  - {id: promote, type: promote}
""",
    )
    result = build()
    assert result.errors == {}
    dag = result.dags["hello.p"]
    canary = dag.task_dict["canary"]
    assert type(canary) is CanaryOperator
    assert (canary.cluster, canary.source_stage, canary.capacity, canary.traffic_percent) == (
        "hello-prod-eu",
        "deploy",
        2,
        5,
    )
    assert (canary.lifetime, canary.interval, canary.warmup, canary.lookback) == (30.0, 15.0, 5.0, 15.0)
    assert canary.thresholds == {"pass": 80, "marginal": 60} and canary.marginal_action == "judge"
    assert canary.queries == {"errors": "error_rate", "p50": "latency_p50"}
    assert canary.canary_config["classifier"]["groupWeights"] == {"e": 70.0, "l": 30.0}
    assert canary.metric_source["type"] == "local"
    assert [link.name for link in canary.operator_extra_links] == ["Canary report"]
    assert dag.task_dict["promote"].upstream_task_ids == {"canary"}

    cleanup = dag.task_dict["canary.cleanup"]
    assert type(cleanup) is CanaryCleanupOperator
    assert cleanup.is_teardown and cleanup.trigger_rule == TriggerRule.ALL_DONE and cleanup.on_failure_fail_dagrun
    assert cleanup.upstream_task_ids == {"canary"}
    assert cleanup.clusters == ["hello-prod-eu-baseline", "hello-prod-eu-canary"]
    assert (cleanup.canary_task_id, cleanup.application) == ("canary", "hello")


def test_existing_groups_need_no_cleanup_task(write: Write, build: Build) -> None:
    write(
        "p.yaml",
        """
        application: hello
        name: p
        stages:
          - id: canary
            type: canary
            baseline: "{{ params.baseline }}"
            canary: hello-prod-v004
            metrics: [{name: e, query: error_rate}]
        """,
    )
    dag = build().dags["hello.p"]
    assert set(dag.task_dict) == {"canary"}
    assert dag.task_dict["canary"].baseline_name == "{{ params.baseline }}"
    assert "baseline_name" in dag.task_dict["canary"].template_fields


KAYENTA = {
    "name": "hello",
    "metrics": [
        {
            "name": "5xx",
            "query": {"type": "prometheus", "customInlineTemplate": "PromQL:sum(rate(e{sg='${scope}'}[1m]))"},
            "groups": ["errors"],
            "analysisConfigurations": {"canary": {"direction": "increase", "critical": True}},
        }
    ],
    "classifier": {"groupWeights": {"errors": 100}},
}


def test_a_kayenta_config_file_is_used_as_is(write: Write, build: Build, pipelines: Path) -> None:
    (pipelines / "configs").mkdir()
    (pipelines / "configs" / "hello.json").write_text(json.dumps(KAYENTA))
    write(
        "p.yaml",
        HEAD
        + """
  - id: canary
    type: canary
    configFile: configs/hello.json
    metricSource: {type: prometheus, endpoint: "http://prometheus:9090", step: 30s}
""",
    )
    canary = build().dags["hello.p"].task_dict["canary"]
    assert canary.canary_config == KAYENTA
    assert canary.queries == {"5xx": "sum(rate(e{sg='${scope}'}[1m]))"}
    assert canary.metric_source == {
        "type": "prometheus",
        "endpoint": "http://prometheus:9090",
        "connection": None,
        "step": "30s",
        "timeout": "30s",
    }


@pytest.mark.parametrize(
    ("stage", "config", "expected"),
    [
        (
            "metrics: [{name: e, query: error_rate}, {name: c, query: cpu}]",
            None,
            "pipelines/p.yaml:8:62 stages[2].metrics[1].query: stage 'canary': the local metric source has no series "
            "'cpu'; it has requests, errors, error_rate",
        ),
        (
            "configFile: missing.json",
            None,
            "pipelines/p.yaml:8:17 stages[2].configFile: stage 'canary': no canary config file 'missing.json'",
        ),
        (
            "configFile: c.json",
            "{not json",
            "pipelines/p.yaml:8:17 stages[2].configFile: stage 'canary': c.json is not JSON",
        ),
        (
            "configFile: c.json",
            json.dumps({"metrics": [{"name": "x", "groups": ["g"], "query": {"type": "stackdriver"}}]}),
            "stages[2].configFile: stage 'canary': c.json: metric 'x' has no query gennaker can run",
        ),
        (
            "configFile: c.json",
            json.dumps(KAYENTA),
            "stages[2].configFile: stage 'canary': c.json: metric(s) '5xx' query series the local metric source "
            "does not have",
        ),
        (
            "configFile: c.json",
            json.dumps({"metrics": [{"name": "x", "groups": [], "query": "error_rate"}]}),
            "stages[2].configFile: stage 'canary': c.json: metric 'x': a metric needs at least one group",
        ),
    ],
)
def test_canary_problems_are_errors_at_their_field(
    write: Write, build: Build, pipelines: Path, stage: str, config: str | None, expected: str
) -> None:
    if config is not None:
        (pipelines / "c.json").write_text(config)
    write("p.yaml", HEAD + f"  - id: canary\n    type: canary\n    {stage}\n")
    result = build()
    assert result.dags == {}
    (message,) = result.errors.values()
    assert expected in message.splitlines()[0], message


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (
            "metricSource: {type: cloudwatch}\n    metrics: [{name: e, query: x}]",
            "stages[2].metricSource.type: metric source 'cloudwatch' is not available yet: CloudWatch metrics arrive "
            "with the AWS provider; use local or prometheus meanwhile",
        ),
        (
            "metricSource: {type: prometheus}\n    metrics: [{name: e, query: x}]",
            "stages[2].metricSource: a prometheus metric source needs 'endpoint' (or an Airflow 'connection')",
        ),
        (
            "metrics: [{name: e, query: 'up{g=\"${pod}\"}'}]",
            "stages[2].metrics[0].query: unknown placeholder ${pod} in the query; known: ${scope}",
        ),
        (
            "metrics: [{name: e, query: error_rate}]\n    configFile: c.json",
            "stages[2]: give 'metrics' or a Kayenta 'configFile', not both",
        ),
        (
            "metrics: [{name: e, query: error_rate}, {name: e, query: latency_p50}]",
            "stages[2]: metric names must be unique ('e' more than once)",
        ),
        (
            "lookback: {type: growing, duration: 5m}\n    metrics: [{name: e, query: error_rate}]",
            "stages[2].lookback: a growing lookback reads everything since the start: it takes no duration",
        ),
    ],
)
def test_canary_spec_errors(write: Write, build: Build, stage: str, expected: str) -> None:
    write("p.yaml", HEAD + f"  - id: canary\n    type: canary\n    {stage}\n")
    (message,) = build().errors.values()
    assert expected in message.splitlines()[0], message


def test_the_shipped_template_builds() -> None:
    repo = Path(__file__).resolve().parents[2]
    result = build_all(repo / "docs" / "examples" / "pipelines", base=repo)
    assert result.errors == {}
    dag = result.dags["hello.deploy-prod"]
    assert {"bake", "deploy", "canary", "canary.cleanup", "promote"} <= set(dag.task_dict)
