"""Specs -> real Airflow DAGs: structure, schedule, params and what the factory refuses."""

from collections.abc import Callable
from pathlib import Path

import pytest

from gennaker.factory import FactoryResult

Write = Callable[[str, str], Path]
Build = Callable[[], FactoryResult]

WAIT = "{id: w, type: wait, duration: 1s}"

DIAMOND = """
application: shop
name: release
description: Check, then smoke and soak in parallel, then ask.
tags: [team-a]
concurrency: {limit: 3}
parameters:
  - {name: version, description: what to release, required: true}
  - {name: environment, default: staging, options: [staging, prod]}
  - {name: region, options: [eu, us]}
  - {name: replicas, default: 2}
  - {name: dryRun, default: false}
  - {name: note}
stages:
  - id: check
    type: checkPreconditions
    preconditions: [{expression: "params.version | length > 0"}]
  - {id: smoke, type: wait, duration: 5s, dependsOn: [check], name: Smoke test}
  - {id: soak, type: wait, duration: 10m, dependsOn: [check], timeout: 1h}
  - id: approve
    type: manualJudgment
    dependsOn: [smoke, soak]
    options: [go, abort]
    default: abort
    timeout: 2h
  - {id: announce, type: wait, duration: 1s}
"""


def only_dag(result: FactoryResult) -> object:
    assert result.errors == {}
    (dag,) = result.dags.values()
    return dag


def test_stages_become_tasks_in_dependency_order(write: Write, build: Build) -> None:
    write("release.yaml", DIAMOND)
    dag = only_dag(build())
    assert dag.dag_id == "shop.release"
    assert sorted(dag.task_ids) == ["announce", "approve", "check", "smoke", "soak"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "check"
    assert set(order[1:3]) == {"smoke", "soak"}
    assert order[3:] == ["approve", "announce"]


def test_parallel_pair_and_join(write: Write, build: Build) -> None:
    write("release.yaml", DIAMOND)
    dag = only_dag(build())
    t = dag.task_dict
    assert t["check"].downstream_task_ids == {"smoke", "soak"}
    assert t["smoke"].upstream_task_ids == t["soak"].upstream_task_ids == {"check"}
    assert t["smoke"].downstream_task_ids == t["soak"].downstream_task_ids == {"approve"}
    assert t["approve"].upstream_task_ids == {"smoke", "soak"}
    assert t["announce"].upstream_task_ids == {"approve"}  # omitted dependsOn: the previous stage
    assert t["check"].upstream_task_ids == set()


def test_trigger_rules(write: Write, build: Build) -> None:
    write("release.yaml", DIAMOND)
    dag = only_dag(build())
    rules = {t.task_id: str(t.trigger_rule.value) for t in dag.tasks}
    # A skipped stage (a false `when`) must not skip everything after it; a failed one still stops them.
    assert rules == {
        "check": "all_success",
        "smoke": "none_failed",
        "soak": "none_failed",
        "approve": "none_failed",
        "announce": "none_failed",
    }


def test_stage_fields_reach_the_task(write: Write, build: Build) -> None:
    from datetime import timedelta

    write("release.yaml", DIAMOND)
    t = only_dag(build()).task_dict
    assert t["smoke"].task_display_name == "Smoke test"
    assert t["soak"].execution_timeout == timedelta(hours=1)
    assert t["check"].owner == "gennaker"
    assert t["check"].retries == 0


def test_dag_settings(write: Write, build: Build) -> None:
    write("release.yaml", DIAMOND)
    dag = only_dag(build())
    assert set(dag.tags) == {"gennaker", "shop", "team-a"}
    assert dag.max_active_runs == 3
    assert dag.catchup is False
    assert dag.description == "Check, then smoke and soak in parallel, then ask."
    assert dag.schedule is None  # no triggers: manual runs only
    # The DAG's docs show where the spec is and the spec itself.
    assert "Pipeline spec: `pipelines/release.yaml`" in dag.doc_md
    assert DIAMOND.strip() in dag.doc_md


def test_owner_from_defaults(write: Write, build: Build) -> None:
    write("defaults.yaml", "application: shop\nowner: team-shop\n")
    write("a.yaml", f"name: a\nstages:\n  - {WAIT}\n")
    dag = only_dag(build())
    assert dag.dag_id == "shop.a"
    assert dag.task_dict["w"].owner == "team-shop"


def test_params(write: Write, build: Build) -> None:
    from airflow.sdk import Param

    write("release.yaml", DIAMOND)
    params = only_dag(build()).params
    assert set(params) == {"version", "environment", "region", "replicas", "dryRun", "note"}
    for name in params:
        assert isinstance(params.get_param(name), Param)
    version = params.get_param("version")
    assert not version.has_value  # required: the trigger form insists on a value
    assert version.schema == {"type": "string", "minLength": 1}
    assert version.description == "what to release"
    env = params.get_param("environment")
    assert (env.value, env.schema) == ("staging", {"enum": ["staging", "prod"]})
    region = params.get_param("region")  # optional with options: may be left empty
    assert region.value is None
    assert region.schema == {"enum": ["eu", "us", None]}
    assert params.get_param("replicas").schema == {"type": "integer"}
    assert params.get_param("dryRun").schema == {"type": "boolean"}
    note = params.get_param("note")
    assert (note.value, note.schema) == (None, {"type": ["string", "null"]})


def test_params_of_a_scheduled_pipeline_are_valid(write: Write, build: Build) -> None:
    # Airflow refuses (ValueError at DAG creation) a scheduled DAG whose params do not validate.
    write(
        "nightly.yaml",
        """
        application: shop
        name: nightly
        parameters:
          - {name: region, options: [eu, us]}
          - {name: version, required: true, default: "1.0.0"}
        triggers:
          - {type: cron, expression: "0 2 * * *"}
        stages:
          - {id: w, type: wait, duration: 1s}
        """,
    )
    dag = only_dag(build())
    assert dag.params.validate() == {"region": None, "version": "1.0.0"}


# --------------------------------------------------------------------------- schedules


def spec_with(triggers: str, name: str = "p") -> str:
    return f"application: shop\nname: {name}\ntriggers:\n{triggers}stages:\n  - {WAIT}\n"


def test_one_cron(write: Write, build: Build) -> None:
    from airflow.timetables.trigger import CronTriggerTimetable

    write("p.yaml", spec_with('  - {type: cron, expression: "0 18 * * 1-5", timezone: Europe/Berlin}\n'))
    tt = only_dag(build()).timetable
    assert isinstance(tt, CronTriggerTimetable)
    assert tt.serialize()["expression"] == "0 18 * * 1-5"
    assert tt.serialize()["timezone"] == "Europe/Berlin"


def test_two_crons(write: Write, build: Build) -> None:
    from airflow.timetables.trigger import MultipleCronTriggerTimetable

    write(
        "p.yaml",
        spec_with(
            '  - {type: cron, expression: "0 18 * * 1-5", timezone: Europe/Berlin}\n'
            '  - {type: cron, expression: "0 6 * * 6", timezone: Europe/Berlin}\n'
        ),
    )
    tt = only_dag(build()).timetable
    assert isinstance(tt, MultipleCronTriggerTimetable)
    assert tt.serialize()["expressions"] == ["0 18 * * 1-5", "0 6 * * 6"]
    assert tt.serialize()["timezone"] == "Europe/Berlin"


def test_two_crons_in_different_timezones_are_refused(write: Write, build: Build) -> None:
    write(
        "p.yaml",
        spec_with(
            '  - {type: cron, expression: "0 18 * * *", timezone: Europe/Berlin}\n'
            '  - {type: cron, expression: "0 6 * * *", timezone: UTC}\n'
        ),
    )
    result = build()
    assert result.dags == {}
    (message,) = result.errors.values()
    assert message.splitlines()[0] == (
        "pipelines/p.yaml:5:53 triggers[1].timezone: several cron triggers must share one timezone "
        "(Airflow's MultipleCronTriggerTimetable)"
    )


def test_pipeline_trigger_schedules_on_the_upstream_status_asset(write: Write, build: Build) -> None:
    from airflow.sdk import Asset, AssetAny

    write("up.yaml", f"application: shop\nname: up\nstages:\n  - {WAIT}\n")
    write("one.yaml", spec_with("  - {type: pipeline, pipeline: shop.up}\n", "one"))
    write("both.yaml", spec_with("  - {type: pipeline, pipeline: shop.up, status: [succeeded, failed]}\n", "both"))
    result = build()
    assert result.errors == {}
    one = result.dags["shop.one"].schedule
    assert isinstance(one, Asset)
    assert one.name == "gennaker.pipeline.shop.up.succeeded"
    both = result.dags["shop.both"].schedule
    assert isinstance(both, AssetAny)
    assert [a.name for a in both.objects] == [
        "gennaker.pipeline.shop.up.succeeded",
        "gennaker.pipeline.shop.up.failed",
    ]


def test_cron_or_pipeline(write: Write, build: Build) -> None:
    from airflow.timetables.assets import AssetOrTimeSchedule

    write("up.yaml", f"application: shop\nname: up\nstages:\n  - {WAIT}\n")
    write(
        "p.yaml",
        spec_with(
            '  - {type: cron, expression: "0 18 * * 1-5", timezone: Europe/Berlin}\n'
            "  - {type: pipeline, pipeline: shop.up}\n"
        ),
    )
    result = build()
    tt = result.dags["shop.p"].timetable
    assert isinstance(tt, AssetOrTimeSchedule)
    ser = tt.serialize()
    assert ser["timetable"]["__var"]["expression"] == "0 18 * * 1-5"
    assert ser["timetable"]["__var"]["timezone"] == "Europe/Berlin"
    assert ser["asset_condition"]["name"] == "gennaker.pipeline.shop.up.succeeded"


def test_publish_status_task_only_on_listened_pipelines(write: Write, build: Build) -> None:
    write(
        "up.yaml",
        "application: shop\nname: up\nstages:\n  - {id: a, type: wait, duration: 1s}\n"
        "  - {id: b, type: wait, duration: 1s, dependsOn: []}\n",
    )
    write("down.yaml", spec_with("  - {type: pipeline, pipeline: shop.up}\n", "down"))
    write("alone.yaml", f"application: shop\nname: alone\nstages:\n  - {WAIT}\n")
    result = build()
    up = result.dags["shop.up"]
    publish = up.task_dict["gennaker_pipeline_status"]
    assert publish.upstream_task_ids == {"a", "b"}  # after every leaf
    assert str(publish.trigger_rule.value) == "all_done"  # also when a stage failed: that is the news
    assert [o.name for o in publish.outlets] == ["gennaker.pipeline.shop.up"]
    assert "gennaker_pipeline_status" not in result.dags["shop.down"].task_ids
    assert "gennaker_pipeline_status" not in result.dags["shop.alone"].task_ids


# --------------------------------------------------------------------------- refused


def test_a_stage_type_the_factory_cannot_run_is_refused_at_its_type(write: Write, build: Build) -> None:
    write(
        "hook.yaml",
        """
        application: shop
        name: hook
        stages:
          - {id: wait, type: wait, duration: 1s}
          - id: notify
            type: webhook
            url: https://example.com/hook
        """,
    )
    write("ok.yaml", f"application: shop\nname: ok\nstages:\n  - {WAIT}\n")
    result = build()
    assert list(result.dags) == ["shop.ok"]  # the other pipeline still builds
    (path,) = result.errors
    assert path == Path("pipelines/hook.yaml").resolve()
    assert result.errors[path].splitlines() == [
        "pipelines/hook.yaml:6:11 stages[1].type: stage 'notify': gennaker cannot run 'webhook' stages yet: "
        "its operator is not built yet",
        "    6 |     type: webhook",
        "      |           ^",
    ]


def test_jenkins_trigger_is_refused(write: Write, build: Build) -> None:
    write("p.yaml", spec_with("  - {type: jenkins, job: build-shop}\n"))
    result = build()
    assert result.dags == {}
    (message,) = result.errors.values()
    assert message.splitlines()[0] == (
        "pipelines/p.yaml:4:12 triggers[0].type: gennaker cannot run jenkins triggers yet: the Jenkins integration "
        "is not built; meanwhile let the Jenkins job call Airflow's REST API to trigger this pipeline"
    )


def test_spec_errors_are_reported_not_raised(write: Write, build: Build) -> None:
    write("bad.yaml", "application: shop\nname: bad\nstages:\n  - {id: w, type: wait}\n")
    write("ok.yaml", f"application: shop\nname: ok\nstages:\n  - {WAIT}\n")
    result = build()
    assert list(result.dags) == ["shop.ok"]
    (message,) = result.errors.values()
    assert message.startswith("pipelines/bad.yaml:4:5 stages[0].duration: missing required field 'duration'")


@pytest.mark.parametrize("name", ["hello.nightly", "hello.release-checks", "hello.smoke"])
def test_the_shipped_pipelines_build(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gennaker.factory import build_all

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    result = build_all(repo / "dags/pipelines", base=repo)
    assert result.errors == {}
    assert name in result.dags
