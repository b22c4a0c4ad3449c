"""Server group stages and findImage become real operators; the cloud stages still missing stay refused."""

from collections.abc import Callable
from pathlib import Path

import pytest

from gennaker.factory import FactoryResult
from gennaker.factory.stages import BUILDERS, NOT_YET

Write = Callable[[str, str], Path]
Build = Callable[[], FactoryResult]

SPEC = """
application: hello
name: ops
stages:
  - {id: find, type: findImage, package: hello-service, select: oldest, tags: {stage: release}, regions: [eu, us]}
  - {id: enable, type: enableServerGroup, cluster: {stack: prod}, target: previous, account: staging, region: eu}
  - {id: disable, type: disableServerGroup, cluster: {stack: prod, detail: canary}}
  - {id: grow, type: resizeServerGroup, cluster: {stack: prod}, scalePercent: 50}
  - {id: fix, type: resizeServerGroup, cluster: {stack: prod}, capacity: {min: 1, max: 3, desired: 2}}
  - {id: shrink, type: resizeServerGroup, cluster: {stack: prod}, scaleBy: -1}
  - {id: clean, type: destroyServerGroup, cluster: {application: shop, stack: prod}, target: oldest}
  - {id: back, type: rollback, cluster: {stack: prod}, targetHealthyPercentage: 75}
  - {id: named, type: disableServerGroup, target: "{{ params.group }}"}
"""


def test_cloud_stages_build_real_operators(write: Write, build: Build) -> None:
    from gennaker.operators import server_group as sg

    write("ops.yaml", SPEC)
    result = build()
    assert result.errors == {}
    t = result.dags["hello.ops"].task_dict

    assert type(t["find"]) is sg.FindImageOperator
    assert (t["find"].package, t["find"].select, t["find"].tags, t["find"].regions) == (
        "hello-service",
        "oldest",
        {"stage": "release"},
        ["eu", "us"],
    )
    assert (t["find"].account, t["find"].region, t["find"].cloud) == ("local", None, "local")

    assert type(t["enable"]) is sg.EnableServerGroupOperator
    assert (t["enable"].application, t["enable"].cluster, t["enable"].target) == ("hello", "hello-prod", "previous")
    assert (t["enable"].account, t["enable"].region) == ("staging", "eu")

    assert type(t["disable"]) is sg.DisableServerGroupOperator
    assert (t["disable"].cluster, t["disable"].target) == ("hello-prod-canary", "newest")

    assert type(t["grow"]) is sg.ResizeServerGroupOperator
    assert (t["grow"].capacity, t["grow"].scale_by, t["grow"].scale_percent) == (None, None, 50)
    assert t["fix"].capacity == {"min": 1, "max": 3, "desired": 2}
    assert t["shrink"].scale_by == -1

    assert type(t["clean"]) is sg.DestroyServerGroupOperator
    assert (t["clean"].cluster, t["clean"].target) == ("shop-prod", "oldest")  # the cluster's own application

    assert type(t["back"]) is sg.RollbackOperator
    assert (t["back"].cluster, t["back"].target, t["back"].target_healthy_percentage) == ("hello-prod", "previous", 75)

    assert t["named"].cluster == "hello"
    assert t["named"].target == "{{ params.group }}"  # rendered by Airflow at run time
    assert "target" in t["named"].template_fields

    # The gate's settings reach them like every other stage.
    assert t["back"].stage_id == "back"
    assert str(t["back"].trigger_rule.value) == "none_failed"


def test_stage_defaults_fill_the_account(write: Write, build: Build) -> None:
    write("defaults.yaml", 'application: hello\nstageDefaults: {"*": {account: staging, region: eu}}\n')
    write(
        "p.yaml", "name: p\nstages:\n  - {id: off, type: disableServerGroup}\n  - {id: w, type: wait, duration: 1s}\n"
    )
    t = build().dags["hello.p"].task_dict
    assert (t["off"].account, t["off"].region) == ("staging", "eu")


def test_the_stages_still_missing_are_refused(write: Write, build: Build) -> None:
    assert set(NOT_YET) == {"webhook", "jenkins"}
    assert not set(NOT_YET) & set(BUILDERS)
    write(
        "hook.yaml",
        """
        application: hello
        name: hook
        stages:
          - {id: find, type: findImage, package: hello-service}
          - {id: hook, type: webhook, url: "https://example.com"}
        """,
    )
    result = build()
    assert result.dags == {}
    (message,) = result.errors.values()
    assert message.splitlines()[0] == (
        "pipelines/hook.yaml:5:22 stages[1].type: stage 'hook': gennaker cannot run 'webhook' stages yet: "
        "its operator is not built yet"
    )


@pytest.mark.parametrize(
    "stage",
    [
        "{id: s, type: enableServerGroup}",
        "{id: s, type: disableServerGroup}",
        "{id: s, type: resizeServerGroup, scaleBy: 1}",
        "{id: s, type: destroyServerGroup}",
        "{id: s, type: rollback}",
        "{id: s, type: findImage, package: p}",
    ],
)
def test_each_new_stage_type_builds(write: Write, build: Build, stage: str) -> None:
    write("p.yaml", f"application: hello\nname: p\nstages:\n  - {stage}\n")
    result = build()
    assert result.errors == {}
    (task,) = result.dags["hello.p"].tasks
    assert task.gennaker_stage_type == stage.split("type: ")[1].split(",")[0].rstrip("}")
