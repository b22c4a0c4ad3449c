"""bake, deploy, promote, upsertLoadBalancer and rollback.onFailure become real operators, wired as the spec says."""

from collections.abc import Callable
from pathlib import Path

from gennaker.factory import FactoryResult

Write = Callable[[str, str], Path]
Build = Callable[[], FactoryResult]

SPEC = """
application: hello
name: deliver
stages:
  - {id: lb, type: upsertLoadBalancer, cluster: {stack: prod}, listeners: [{port: 8088}]}
  - id: bake
    type: bake
    dependsOn: []
    package: hello-service
    artifact: "hello_service-{{ params.version }}-py3-none-any.whl"
    regions: [eu, us]
  - id: deploy
    type: deploy
    dependsOn: [lb, bake]
    cluster: {stack: prod}
    loadBalancers: [hello-prod]
    capacity: {min: 2, max: 4, desired: 3}
    healthCheck: {path: /ready, waitTimeout: 90s}
    traffic: false
    strategy:
      {type: rollingRedBlack, targetPercentages: [25, 100], pauseBetween: 1m, maxRemaining: 2, scaleDownOld: true}
    rollback: {onFailure: true, action: destroy}
  - {id: check, type: wait, duration: 1s}
  - {id: promote, type: promote, delayBeforeDisable: 30s}
"""


def test_delivery_stages_build_real_operators(write: Write, build: Build) -> None:
    from gennaker.operators.bake import BakeOperator
    from gennaker.operators.deploy import AutoRollbackOperator, DeployOperator, PromoteOperator
    from gennaker.operators.load_balancer import UpsertLoadBalancerOperator

    write("deliver.yaml", SPEC)
    result = build()
    assert result.errors == {}
    dag = result.dags["hello.deliver"]
    t = dag.task_dict

    assert type(t["lb"]) is UpsertLoadBalancerOperator
    assert (t["lb"].name, t["lb"].cluster, t["lb"].listeners) == (
        "hello-prod",
        "hello-prod",
        [{"port": 8088, "protocol": "HTTP", "target_port": None}],
    )
    assert type(t["bake"]) is BakeOperator
    assert (t["bake"].package, t["bake"].regions, t["bake"].application) == ("hello-service", ["eu", "us"], "hello")

    deploy = t["deploy"]
    assert type(deploy) is DeployOperator
    assert deploy.image_stage == "bake" and deploy.image_name is None
    assert (deploy.application, deploy.stack, deploy.cluster) == ("hello", "prod", "hello-prod")
    assert deploy.capacity == {"min": 2, "max": 4, "desired": 3}
    assert deploy.health_check["path"] == "/ready" and deploy.health_timeout == 90.0
    assert deploy.traffic is False and deploy.rollback_action == "destroy"
    assert deploy.policy.kind == "rollingRedBlack" and deploy.policy.target_percentages == (25, 100)
    assert sorted(deploy.upstream_task_ids) == ["bake", "lb"]

    # promote: its cluster and the redblack options it does not set come from the deploy it promotes.
    promote = t["promote"]
    assert type(promote) is PromoteOperator
    assert promote.source_stage == "deploy" and promote.cluster == "hello-prod"
    assert promote.policy.max_remaining == 2 and promote.policy.scale_down_old is True
    assert promote.policy.delay_before_disable.total_seconds() == 30  # its own

    # rollback.onFailure: a teardown after the deploy and every stage after it.
    rollback = t["deploy.rollback_on_failure"]
    assert type(rollback) is AutoRollbackOperator
    assert rollback.is_teardown and rollback.trigger_rule == "all_done"
    assert rollback.watched_task_ids == ["check", "deploy", "promote"]
    assert rollback.upstream_task_ids == {"promote"}
    assert rollback.rollback_action == "destroy" and rollback.cluster == "hello-prod"


def test_a_deploy_with_two_equally_close_image_stages_must_say_which(write: Write, build: Build) -> None:
    write(
        "two.yaml",
        """
        application: hello
        name: two
        stages:
          - {id: bake-a, type: bake, package: a, artifact: a-1.0.whl}
          - {id: bake-b, type: bake, package: b, artifact: b-1.0.whl, dependsOn: []}
          - {id: deploy, type: deploy, dependsOn: [bake-a, bake-b], cluster: {stack: prod}}
        """,
    )
    result = build()
    (message,) = result.errors.values()
    assert "several bake/findImage stages are equally close before this deploy (bake-a, bake-b)" in message
    assert "image: {stage: bake-a}" in message


def test_the_nearest_image_stage_wins(write: Write, build: Build) -> None:
    write(
        "near.yaml",
        """
        application: hello
        name: near
        stages:
          - {id: old, type: findImage, package: hello-service}
          - {id: bake, type: bake, package: hello-service, artifact: hello-1.0.whl}
          - {id: deploy, type: deploy, cluster: {stack: prod}}
        """,
    )
    result = build()
    assert result.errors == {}
    assert result.dags["hello.near"].task_dict["deploy"].image_stage == "bake"
