"""The cloud model: validation, derived fields, and dict round trips through JSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from gennaker.cloud.model import (
    BakeRequest,
    Capacity,
    CloudModel,
    CreatedBy,
    Event,
    Firewall,
    FirewallRule,
    Health,
    HealthCounts,
    Image,
    Instance,
    Listener,
    LoadBalancer,
    MetricSeries,
    Operation,
    OperationKind,
    OperationStatus,
    ServerGroup,
    ServerGroupSpec,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def instance(health: Health = Health.UP, n: int = 1) -> Instance:
    return Instance(id=f"i-{n}", server_group="hello-prod-v003", host="127.0.0.1", port=9000 + n, health=health)


def server_group(**changes: object) -> ServerGroup:
    fields: dict[str, object] = {
        "name": "hello-prod-canary-v003",
        "account": "local",
        "region": "local",
        "image_id": "img-1",
        "capacity": Capacity(min=1, max=3, desired=2),
        "created": T0,
        "created_by": CreatedBy(dag_id="hello.deploy", run_id="r1", task_id="deploy"),
    }
    return ServerGroup.model_validate({**fields, **changes})


# --------------------------------------------------------------------------- capacity


@pytest.mark.parametrize(("lo", "desired", "hi"), [(0, 0, 0), (1, 1, 1), (1, 2, 3), (0, 5, 10)])
def test_capacity_in_order_is_accepted(lo: int, desired: int, hi: int) -> None:
    assert Capacity(min=lo, desired=desired, max=hi).desired == desired


@pytest.mark.parametrize(
    ("lo", "desired", "hi", "message"),
    [
        (2, 1, 3, "min <= desired <= max"),
        (1, 4, 3, "min <= desired <= max"),
        (3, 3, 2, "min <= desired <= max"),
        (-1, 0, 0, "greater than or equal to 0"),
    ],
)
def test_capacity_out_of_order_is_refused(lo: int, desired: int, hi: int, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Capacity(min=lo, desired=desired, max=hi)


def test_capacity_fixed_and_replace_revalidates() -> None:
    assert Capacity.fixed(2) == Capacity(min=2, max=2, desired=2)
    with pytest.raises(ValidationError, match="min <= desired <= max"):
        Capacity.fixed(2).replace(desired=3)


def test_models_are_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        Capacity.fixed(1).desired = 2


# --------------------------------------------------------------------------- server groups


def test_server_group_reads_its_parts_from_the_name() -> None:
    group = server_group()
    assert (group.cluster, group.application, group.stack, group.detail, group.sequence) == (
        "hello-prod-canary",
        "hello",
        "prod",
        "canary",
        3,
    )


@pytest.mark.parametrize(("name", "message"), [("hello-prod", "no -v000 sequence"), ("hel lo-v001", "not an app")])
def test_server_group_name_must_be_a_frigga_server_group(name: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        server_group(name=name)


def test_server_group_derived_fields_in_a_dict_cannot_disagree_with_the_name() -> None:
    data = server_group().to_dict()
    assert data["cluster"] == "hello-prod-canary"
    data.update(cluster="other", sequence=9)
    again = ServerGroup.from_dict(data)
    assert (again.cluster, again.sequence) == ("hello-prod-canary", 3)


def test_health_counts() -> None:
    group = server_group(
        instances=[
            instance(Health.UP, 1),
            instance(Health.UP, 2),
            instance(Health.STARTING, 3),
            instance(Health.DOWN, 4),
        ]
    )
    counts = group.health_counts()
    assert counts == HealthCounts(up=2, starting=1, down=1)
    assert counts.total == 4
    assert group.is_healthy()  # 2 of desired 2
    assert not group.replace(capacity=Capacity.fixed(3)).is_healthy()
    assert group.replace(capacity=Capacity.fixed(3)).is_healthy(percent=50)  # ceil(1.5) = 2


def test_enough_up_rounds_up() -> None:
    assert HealthCounts(up=1).enough_up(desired=2, percent=50)
    assert not HealthCounts(up=1).enough_up(desired=3, percent=50)
    assert HealthCounts().enough_up(desired=0)


def test_server_group_spec_makes_the_named_group() -> None:
    spec = ServerGroupSpec(
        application="hello",
        stack="prod",
        account="local",
        region="local",
        image_id="img-1",
        capacity=Capacity.fixed(2),
        enabled=False,
        load_balancers=("hello-prod",),
    )
    assert spec.cluster == "hello-prod"
    group = spec.server_group(4, created=T0)
    assert (group.name, group.enabled, group.load_balancers, group.created) == (
        "hello-prod-v004",
        False,
        ("hello-prod",),
        T0,
    )


def test_server_group_spec_validates_the_cluster() -> None:
    with pytest.raises(ValidationError, match="stack 'pr-od'"):
        ServerGroupSpec(
            application="hello", stack="pr-od", account="a", region="r", image_id="i", capacity=Capacity.fixed(1)
        )


def test_equality_does_not_depend_on_cached_parsing() -> None:
    a, b = server_group(), server_group()
    assert a.cluster == "hello-prod-canary"  # parses and caches on a only
    assert a == b
    assert hash(a.capacity) == hash(b.capacity)


# --------------------------------------------------------------------------- other models


def test_instance_address() -> None:
    assert instance(n=1).address == "127.0.0.1:9001"
    assert Instance(id="i", server_group="a-v001", host="10.0.0.1").address == "10.0.0.1"


def test_times_must_be_timezone_aware() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        server_group(created=datetime(2025, 1, 1))


def test_firewall_rule_validation() -> None:
    FirewallRule(cidr="10.0.0.0/8", port_from=80, port_to=443)
    FirewallRule(source_firewall="hello-elb", port_from=7001, port_to=7001)
    with pytest.raises(ValidationError, match="does not appear to be an IPv4 or IPv6 network"):
        FirewallRule(cidr="10.0.0.300/8")
    with pytest.raises(ValidationError, match="port_from 443 is above port_to 80"):
        FirewallRule(cidr="0.0.0.0/0", port_from=443, port_to=80)
    with pytest.raises(ValidationError, match="exactly one of cidr or source_firewall"):
        FirewallRule(port_from=80, port_to=80)


def test_load_balancer_weights_are_not_negative() -> None:
    with pytest.raises(ValidationError, match=r"negative for \['hello-v001'\]"):
        LoadBalancer(name="hello", application="hello", account="a", region="r", weights={"hello-v001": -1})


def test_operation_done() -> None:
    op = Operation(id="op-1", kind=OperationKind.BAKE, key="d/r/t/bake")
    assert not op.done
    assert op.replace(status=OperationStatus.FAILED).done
    assert op.replace(status="SUCCEEDED").succeeded


def test_bake_inputs_hash_covers_contents_not_placement() -> None:
    request = BakeRequest(package="hello", version="1.0", account="local", region="local", artifact="/a/hello.tgz")
    assert request.inputs_hash() == request.replace(account="other", region="eu", tags={"x": "y"}).inputs_hash()
    assert request.inputs_hash() != request.replace(version="1.1").inputs_hash()
    assert request.inputs_hash() != request.replace(start_command="python -m hello").inputs_hash()
    assert len(request.inputs_hash()) == 64


# --------------------------------------------------------------------------- round trips

EXAMPLES: list[CloudModel] = [
    Image(
        id="img-1",
        name="hello-1.0-h1",
        package="hello",
        version="1.0",
        application="hello",
        base="python-3.11",
        region="local",
        account="local",
        inputs_hash="abc",
        created=T0,
        tags={"build": "42"},
        manifest={"bundle": "/x/y", "files": [1, 2]},
    ),
    BakeRequest(package="hello", version="1.0", account="local", region="local", rebake=True),
    Capacity(min=1, max=3, desired=2),
    instance(Health.OUT_OF_SERVICE),
    server_group(
        instances=[instance(Health.UP, 1), instance(Health.UNKNOWN, 2)],
        load_balancers=["hello-prod"],
        firewalls=["hello"],
        health_check={"type": "http", "path": "/health", "interval": 2.0},
        enabled=False,
        disabled_by="hello.deploy/r1/promote",
        disabled_at=T0 + timedelta(minutes=5),
        native={"launch_template": {"id": "lt-1", "version": 3}},
    ),
    LoadBalancer(
        name="hello-prod",
        application="hello",
        account="local",
        region="local",
        listeners=(Listener(port=80, protocol="HTTP", target_port=8080),),
        clusters=("hello-prod",),
        weights={"hello-prod-v003": 90, "hello-prod-v004": 10},
        dns_name="127.0.0.1:8000",
    ),
    Firewall(
        name="hello",
        application="hello",
        account="local",
        region="global",
        rules=(FirewallRule(cidr="10.0.0.0/8", port_from=80, port_to=80), FirewallRule(source_firewall="hello-elb")),
    ),
    Operation(
        id="op-1",
        kind=OperationKind.CREATE_SERVER_GROUP,
        key="hello.deploy/r1/deploy/create",
        status=OperationStatus.SUCCEEDED,
        result={"server_group": "hello-prod-v004"},
        request={"capacity": {"min": 1, "max": 1, "desired": 1}},
        started=T0,
        updated=T0,
    ),
    MetricSeries(name="latency", server_group="hello-prod-v004", start=T0, step_seconds=60, values=(1.5, None, 2.0)),
    Event(id=7, at=T0, kind="serverGroup.disabled", subject="hello-prod-v003", data={"by": "promote"}),
]


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_dict_round_trip_through_json(model: CloudModel) -> None:
    data = json.loads(json.dumps(model.to_dict()))
    again = type(model).from_dict(data)
    assert again == model
    assert again.to_dict() == model.to_dict()


def test_from_dict_ignores_unknown_keys_from_newer_versions() -> None:
    data = Capacity.fixed(1).to_dict() | {"future_field": True}
    assert Capacity.from_dict(data) == Capacity.fixed(1)


def test_enums_are_plain_strings_in_dicts() -> None:
    data = instance(Health.OUT_OF_SERVICE).to_dict()
    assert data["health"] == "OutOfService"
    assert isinstance(data["launched"], str)
