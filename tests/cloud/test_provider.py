"""The provider interface: idempotency keys, the error tree, and what every provider must implement."""

from __future__ import annotations

import pickle
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from fakecloud import FakeProvider

from gennaker import errors
from gennaker.cloud.model import Listener, LoadBalancer, Operation, OperationKind, OperationStatus
from gennaker.cloud.provider import (
    CloudError,
    CloudProvider,
    IdempotencyKey,
    InvalidRequest,
    NotFound,
    OperationFailed,
    ProviderUnavailable,
)
from gennaker.errors import GennakerError

RUN = "manual__2025-03-01T12:00:00+00:00"

# --------------------------------------------------------------------------- idempotency keys


def test_key_string_form_is_readable_and_stable() -> None:
    key = IdempotencyKey("hello.deploy", RUN, "deploy", "create")
    assert str(key) == f"hello.deploy/{RUN}/deploy/create"
    assert key.request_id() == IdempotencyKey("hello.deploy", RUN, "deploy", "create").request_id()


@pytest.mark.parametrize(
    "key",
    [
        IdempotencyKey("hello.deploy", RUN, "deploy", "create"),
        IdempotencyKey("hello.deploy", RUN, "group.deploy", "create", map_index=3),
        IdempotencyKey("d", "run/with/slashes", "t", "100%/done"),
        IdempotencyKey("d", "r%2F", "t", "p", map_index=0),
    ],
)
def test_key_parses_back(key: IdempotencyKey) -> None:
    assert IdempotencyKey.parse(str(key)) == key


def test_map_index_and_purpose_tell_keys_apart() -> None:
    base = IdempotencyKey("d", "r", "t", "create")
    others = {base, base.derive("launch-template"), IdempotencyKey("d", "r", "t", "create", map_index=0)}
    assert len({str(k) for k in others}) == 3
    assert base.derive("launch-template").purpose == "create/launch-template"


@pytest.mark.parametrize("text", ["a/b/c", "a/b/c/x/y", "a/b/c/d/e/f", "a//c/d"])
def test_parse_refuses_what_is_not_a_key(text: str) -> None:
    with pytest.raises(InvalidRequest):
        IdempotencyKey.parse(text)


def test_key_fits_aws_and_google_cloud() -> None:
    key = IdempotencyKey("hello.deploy", RUN, "deploy", "create")
    assert len(key.client_token()) == 64 and key.client_token().isascii()
    assert uuid.UUID(key.request_id()).version == 5
    assert len(key.label()) == 63 and key.label() == key.label().lower()


def test_key_from_airflow_context() -> None:
    ti = SimpleNamespace(dag_id="hello.deploy", run_id=RUN, task_id="deploy", map_index=2)
    key = IdempotencyKey.from_context({"ti": ti}, "create")
    assert key == IdempotencyKey("hello.deploy", RUN, "deploy", "create", map_index=2)
    assert key.created_by().map_index == 2


# --------------------------------------------------------------------------- errors

ERROR_CLASSES = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, CloudError) and cls is not CloudError
]


def _example(cls: type[CloudError]) -> CloudError:
    if cls is OperationFailed:
        op = Operation(
            id="op-1", kind=OperationKind.BAKE, key="d/r/t/p", status=OperationStatus.FAILED, message="no base image"
        )
        return OperationFailed(op)
    return cls("something happened")


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_says_what_to_do(cls: type[CloudError]) -> None:
    error = _example(cls)
    assert isinstance(error, GennakerError)
    assert cls.default_hint and str(error).endswith(cls.default_hint)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_survive_pickling(cls: type[CloudError]) -> None:
    error = _example(cls)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls and str(again) == str(error)


def test_error_hint_can_be_sharper() -> None:
    assert str(NotFound("image img-1 not found", hint="bake it first")) == "image img-1 not found: bake it first"


def test_only_provider_unavailable_is_retryable() -> None:
    assert [cls for cls in ERROR_CLASSES if cls.retryable] == [ProviderUnavailable]


def test_familiar_bases() -> None:
    assert issubclass(InvalidRequest, ValueError)
    assert issubclass(NotFound, LookupError)


# --------------------------------------------------------------------------- the interface

EXPECTED_METHODS = {
    "bake",
    "find_images",
    "get_image",
    "create_server_group",
    "get_server_group",
    "list_server_groups",
    "resize_server_group",
    "enable_server_group",
    "disable_server_group",
    "destroy_server_group",
    "instances",
    "terminate_instance",
    "upsert_load_balancer",
    "list_load_balancers",
    "delete_load_balancer",
    "upsert_firewall",
    "list_firewalls",
    "delete_firewall",
    "metrics",
    "operation",
}


def test_interface_is_complete_and_abstract() -> None:
    assert CloudProvider.__abstractmethods__ == EXPECTED_METHODS
    with pytest.raises(TypeError):
        CloudProvider("local", "local")  # type: ignore[abstract]


def _provider_returning(op: Operation) -> CloudProvider:
    def stub(self: Any, *args: Any, **kwargs: Any) -> Any:
        return op

    cls = type("Stub", (CloudProvider,), {name: stub for name in EXPECTED_METHODS} | {"kind": "stub"})
    provider: CloudProvider = cls("acct", "here")
    return provider


def test_poll_raises_when_the_operation_failed() -> None:
    op = Operation(id="op-1", kind=OperationKind.BAKE, key="d/r/t/p")
    assert _provider_returning(op).poll("op-1") == op
    failed = op.replace(status=OperationStatus.FAILED, message="package hello not found")
    with pytest.raises(OperationFailed, match="bake op-1 failed: package hello not found") as caught:
        _provider_returning(failed).poll("op-1")
    assert caught.value.operation == failed
    assert repr(_provider_returning(op)) == "Stub(account='acct', region='here')"


# --------------------------------------------------------------------------- what callers read through the interface


def test_the_optional_methods_have_generic_defaults() -> None:
    op = Operation(id="op-1", kind=OperationKind.BAKE, key="d/r/t/p")
    provider = _provider_returning(op)
    assert provider.recorded_operation("op-1") == op  # a cloud's operation() changes nothing: the same answer
    lb = LoadBalancer(name="hello-lb", application="hello", account="acct", region="here")
    assert provider.load_balancer_address(lb) is None  # no address until the cloud names it
    assert provider.load_balancer_address(lb.replace(dns_name="hello-lb-1.elb.example")) == "hello-lb-1.elb.example"
    with pytest.raises(errors.NotSupported, match="account acct is a stub account: its history is not recorded"):
        provider.history("hello-prod")


def test_the_fake_reports_destroying_and_a_load_balancer_address() -> None:
    cloud = FakeProvider()
    cloud.slow.add(OperationKind.DESTROY_SERVER_GROUP)
    cloud.add_group("hello-prod-v000", desired=1)
    assert not cloud.get_server_group("hello-prod-v000").destroying
    op = cloud.destroy_server_group("hello-prod-v000", IdempotencyKey("d", "r", "t", "destroy"))
    assert not op.done
    group = cloud.get_server_group("hello-prod-v000")
    assert group.destroying and not group.enabled
    assert [g.destroying for g in cloud.list_server_groups("hello")] == [True]
    assert "gennaker:destroying" not in group.tags  # the field says it, not a provider's tag

    lb = LoadBalancer(
        name="hello-lb",
        application="hello",
        account="local",
        region="local",
        listeners=(Listener(port=9001, protocol="TCP"), Listener(port=8080)),
    )
    assert cloud.load_balancer_address(lb) == "http://127.0.0.1:8080"
    assert cloud.load_balancer_address(lb.replace(dns_name="lb.example")) == "lb.example"


def test_the_default_inventory_reads_every_application_it_can_name() -> None:
    cloud = FakeProvider(account="acct")
    cloud.add_group("hello-prod-v001", desired=1)
    cloud.add_group("other-prod-v000", desired=1)
    image = cloud.add_image("hello-service", "1.0.0")
    cloud.groups["hello-prod-v001"] = cloud.groups["hello-prod-v001"].replace(image_id=image.id)
    found = cloud.inventory(["hello"])
    assert [g.name for g in found.server_groups] == ["hello-prod-v001"]  # "other" is named by nothing
    assert dict(found.images) == {image.id: image}
    assert found.load_balancers == () and found.firewalls == ()
