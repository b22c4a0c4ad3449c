"""The CloudProvider contract as one test suite every provider runs (as DB-API drivers share a compliance suite).

The rules are those of ``gennaker.cloud.provider`` and ``docs/cloud.md`` ("The contract every
provider keeps"): idempotent mutations under retries, names allocated in sequence and never
handed out while in use, capacities within ``min <= desired <= max`` and the provider's limits,
enable and disable, traffic guards, destroy, operations polled to an end, errors that say what
to do, images baked once per inputs, load balancers and firewalls.

A provider runs it by subclassing :class:`ProviderContract` in a test module::

    class TestLocalContract(ProviderContract):
        @pytest.fixture
        def provider(self, ...) -> CloudProvider: ...
        @pytest.fixture
        def releases(self, ...) -> tuple[BakeRequest, BakeRequest]: ...   # two versions of one package

and overrides the hooks where its cloud differs: :meth:`~ProviderContract.settle` (how long
an operation may take), :meth:`~ProviderContract.wait_up` (until instances are Up),
:meth:`~ProviderContract.spec_fields` (a health check, a subnet), :meth:`~ProviderContract.listener_port`,
:meth:`~ProviderContract.with_options` (the same account with traffic guards or capacity limits),
:meth:`~ProviderContract.failed_operation` (an operation that ends FAILED). Every test makes its
own cluster (a fresh stack), so one provider (and one home or account) can serve a whole module.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from gennaker.cloud.limits import CapacityLimitExceeded, Limits
from gennaker.cloud.model import (
    BakeRequest,
    Capacity,
    Firewall,
    FirewallRule,
    Health,
    Listener,
    LoadBalancer,
    Operation,
    OperationStatus,
    ServerGroup,
    ServerGroupSpec,
)
from gennaker.cloud.provider import CloudProvider, IdempotencyKey
from gennaker.errors import (
    CloudError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    OperationFailed,
    QuotaExceeded,
    TrafficGuardViolation,
)

APP = "hello"


@contextmanager
def raises_with_hint(cls: type[CloudError]) -> Iterator[None]:
    """Like ``pytest.raises(cls)``, and the error must say what to do (a non-empty hint)."""
    with pytest.raises(cls) as caught:
        yield
    error = caught.value
    assert error.hint, f"{type(error).__name__} without a hint: {error.message}"
    assert str(error).endswith(error.hint)


class ProviderContract:
    """The rules every :class:`CloudProvider` keeps; subclass it with a ``provider`` and a ``releases`` fixture."""

    SETTLE_SECONDS = 30.0
    """How long :meth:`settle` waits for an operation to end."""
    POLL_SECONDS = 0.1

    # ------------------------------------------------------------------ hooks a provider's suite supplies

    @pytest.fixture
    def provider(self) -> CloudProvider:
        """The provider under test (a subclass's fixture; any scope)."""
        raise NotImplementedError("a provider's contract suite supplies the provider fixture")

    @pytest.fixture
    def releases(self) -> tuple[BakeRequest, BakeRequest]:
        """Two bake requests of one package, older and newer version, that the provider can bake."""
        raise NotImplementedError("a provider's contract suite supplies two releases to bake")

    def settle(self, provider: CloudProvider, op: Operation) -> Operation:
        """The operation once it has ended (polled through ``provider.operation``)."""
        deadline = time.monotonic() + self.SETTLE_SECONDS
        while not op.done:
            assert time.monotonic() < deadline, f"{op.kind} {op.id} still {op.status} after {self.SETTLE_SECONDS:g} s"
            time.sleep(self.POLL_SECONDS)
            op = provider.operation(op.id)
        return op

    def wait_up(self, provider: CloudProvider, name: str, count: int) -> ServerGroup:
        """The group once it has ``count`` instances, all Up."""
        deadline = time.monotonic() + self.SETTLE_SECONDS
        while True:
            group = provider.get_server_group(name)
            if len(group.instances) == count and all(i.health is Health.UP for i in group.instances):
                return group
            shown = [(i.id, str(i.health)) for i in group.instances]
            assert time.monotonic() < deadline, f"{name}: not {count} Up instance(s): {shown}"
            time.sleep(self.POLL_SECONDS)

    def spec_fields(self) -> dict[str, Any]:
        """Fields every test's :class:`ServerGroupSpec` gets (a health check, a subnet...)."""
        return {}

    def listener_port(self) -> int:
        """A port a new load balancer may listen on."""
        return 8080

    def with_options(
        self, provider: CloudProvider, *, guarded: tuple[str, ...] = (), limits: Limits | None = None
    ) -> CloudProvider:
        """The same account, with traffic guards on ``guarded`` clusters and ``limits``; skip if it cannot."""
        pytest.skip(f"{type(provider).__name__}: no way to configure traffic guards or limits in this suite")

    def failed_operation(self, provider: CloudProvider, key: IdempotencyKey) -> Operation:
        """An operation that ends FAILED: by default, the bake of an artifact that does not exist."""
        request = BakeRequest(
            package="no-such-package",
            version="0.0.1",
            artifact=f"/nonexistent/{uuid.uuid4().hex}/no_such_package-0.0.1-py3-none-any.whl",
            application=APP,
            account=provider.account,
            region=provider.region,
        )
        return provider.bake(request, key)

    # ------------------------------------------------------------------ helpers

    @pytest.fixture
    def run(self) -> str:
        """A fresh run id per test: keys of one test never meet another's."""
        return f"run-{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def stack(self) -> str:
        """A fresh stack per test, so each test has clusters of its own."""
        return f"c{uuid.uuid4().hex[:8]}"

    @pytest.fixture
    def image(self, provider: CloudProvider, releases: tuple[BakeRequest, BakeRequest]) -> str:
        """The older release, baked (keyed once per provider: later tests find the first bake)."""
        op = self.settle(provider, provider.bake(releases[0], IdempotencyKey("contract", "setup", "bake", "older")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        return str(op.result["image_id"])

    @pytest.fixture(autouse=True)
    def _destroy_the_tests_groups(self, provider: CloudProvider, stack: str, run: str) -> Iterator[None]:
        """After each test, destroy the server groups it made (a real cloud's cost, a local machine's processes)."""
        yield
        for group in provider.list_server_groups(APP):
            if group.stack == stack:
                self.settle(provider, provider.destroy_server_group(group.name, self.key(run, f"cleanup-{group.name}")))

    def key(self, run: str, purpose: str) -> IdempotencyKey:
        return IdempotencyKey("contract", run, "task", purpose)

    def spec(self, provider: CloudProvider, image: str, stack: str, count: int = 1, **fields: Any) -> ServerGroupSpec:
        values = {
            "application": APP,
            "stack": stack,
            "account": provider.account,
            "region": provider.region,
            "image_id": image,
            "capacity": Capacity.fixed(count),
            **self.spec_fields(),
            **fields,
        }
        return ServerGroupSpec(**values)

    def create(self, provider: CloudProvider, spec: ServerGroupSpec, key: IdempotencyKey) -> str:
        op = self.settle(provider, provider.create_server_group(spec, key))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        return str(op.result["server_group"])

    def names(self, provider: CloudProvider, cluster: str) -> list[str]:
        return [g.name for g in provider.list_server_groups(APP, cluster=cluster)]

    # ------------------------------------------------------------------ idempotency

    def test_a_retried_create_finds_the_first_tries_server_group(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        spec = self.spec(provider, image, stack)
        key = self.key(run, "create")
        first = provider.create_server_group(spec, key)
        assert first.key == str(key) and first.result["server_group"] == f"{APP}-{stack}-v000"
        again = provider.create_server_group(spec, key)
        assert again.id == first.id and again.result["server_group"] == first.result["server_group"]
        self.settle(provider, again)
        assert self.names(provider, f"{APP}-{stack}") == [f"{APP}-{stack}-v000"]

    def test_a_retry_with_other_arguments_gets_the_first_calls_operation(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        key = self.key(run, "create")
        first = self.settle(provider, provider.create_server_group(self.spec(provider, image, stack, 1), key))
        again = provider.create_server_group(self.spec(provider, image, stack, 2), key)
        assert again.id == first.id
        (group,) = provider.list_server_groups(APP, cluster=f"{APP}-{stack}")
        assert group.capacity == Capacity.fixed(1)  # the first call's arguments win

    def test_one_key_for_two_kinds_of_operation_is_a_conflict(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        key = self.key(run, "create")
        name = self.create(provider, self.spec(provider, image, stack), key)
        with raises_with_hint(IdempotencyConflict):
            provider.resize_server_group(name, Capacity.fixed(1), key)
        with raises_with_hint(IdempotencyConflict):
            provider.disable_server_group(name, key)

    def test_a_repeated_mutation_does_not_act_again(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        name = self.create(provider, self.spec(provider, image, stack), self.key(run, "create"))
        disable = self.settle(provider, provider.disable_server_group(name, self.key(run, "disable")))
        self.settle(provider, provider.enable_server_group(name, self.key(run, "enable")))
        again = provider.disable_server_group(name, self.key(run, "disable"))  # a retry of the first disable
        assert again.id == disable.id and again.status is OperationStatus.SUCCEEDED
        assert provider.get_server_group(name).enabled is True

    # ------------------------------------------------------------------ names

    def test_names_follow_the_clusters_sequence(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        made = [
            self.create(provider, self.spec(provider, image, stack), self.key(run, f"create-{i}")) for i in range(3)
        ]
        assert made == [f"{APP}-{stack}-v000", f"{APP}-{stack}-v001", f"{APP}-{stack}-v002"]
        detailed = self.create(provider, self.spec(provider, image, stack, detail="canary"), self.key(run, "detail"))
        assert detailed == f"{APP}-{stack}-canary-v000"
        group = provider.get_server_group(detailed)
        assert (group.application, group.stack, group.detail, group.cluster, group.sequence) == (
            APP,
            stack,
            "canary",
            f"{APP}-{stack}-canary",
            0,
        )
        assert self.names(provider, f"{APP}-{stack}") == made  # oldest first, the other cluster apart

    def test_the_next_name_follows_the_newest_group(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        old = self.create(provider, self.spec(provider, image, stack), self.key(run, "create-0"))
        newer = self.create(provider, self.spec(provider, image, stack), self.key(run, "create-1"))
        self.settle(provider, provider.destroy_server_group(old, self.key(run, "destroy")))
        third = self.create(provider, self.spec(provider, image, stack), self.key(run, "create-2"))
        assert third == f"{APP}-{stack}-v002", "a gap left by a destroyed group is not filled"
        assert self.names(provider, f"{APP}-{stack}") == [newer, third]

    def test_a_group_being_destroyed_keeps_its_name(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        old = self.create(provider, self.spec(provider, image, stack), self.key(run, "create-0"))
        newest = self.create(provider, self.spec(provider, image, stack), self.key(run, "create-1"))
        destroying = provider.destroy_server_group(newest, self.key(run, "destroy"))
        if destroying.done:
            pytest.skip(f"{type(provider).__name__} destroyed {newest} at once: it was never being destroyed")
        third = self.create(provider, self.spec(provider, image, stack), self.key(run, "create-2"))
        assert third not in {old, newest}
        assert self.settle(provider, destroying).status is OperationStatus.SUCCEEDED
        assert self.names(provider, f"{APP}-{stack}") == [old, third]

    # ------------------------------------------------------------------ capacity

    def test_capacity_is_kept_and_resized(self, provider: CloudProvider, image: str, stack: str, run: str) -> None:
        spec = self.spec(provider, image, stack, capacity=Capacity(min=1, max=3, desired=1))
        name = self.create(provider, spec, self.key(run, "create"))
        assert provider.get_server_group(name).capacity == Capacity(min=1, max=3, desired=1)
        op = self.settle(
            provider, provider.resize_server_group(name, Capacity(min=1, max=3, desired=2), self.key(run, "resize"))
        )
        assert op.status is OperationStatus.SUCCEEDED, op.message
        assert provider.get_server_group(name).capacity == Capacity(min=1, max=3, desired=2)
        assert len(self.wait_up(provider, name, 2).instances) == 2

    def test_a_capacity_above_the_group_limit_is_refused_before_anything_is_made(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        limit = provider.limits.max_server_group_capacity
        if limit is None:
            pytest.skip("no per-group limit")
        key = self.key(run, "create")
        too_many = Capacity(min=0, max=limit + 1, desired=1)
        with raises_with_hint(CapacityLimitExceeded):
            provider.create_server_group(self.spec(provider, image, stack, capacity=too_many), key)
        assert self.names(provider, f"{APP}-{stack}") == []
        # Nothing was recorded for the key: the same key works once the request is fixed.
        name = self.create(provider, self.spec(provider, image, stack), key)
        with raises_with_hint(CapacityLimitExceeded):
            provider.resize_server_group(name, too_many, self.key(run, "resize"))
        assert provider.get_server_group(name).capacity == Capacity.fixed(1)

    def test_the_account_limit_counts_every_group(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        in_use = sum(g.capacity.desired for g in provider.list_server_groups(APP))  # earlier tests' groups
        limits = Limits(max_server_group_capacity=5, max_account_instances=in_use + 2)
        limited = self.with_options(provider, limits=limits)
        name = self.create(limited, self.spec(limited, image, stack, 2), self.key(run, "create"))
        with raises_with_hint(QuotaExceeded):
            limited.create_server_group(self.spec(limited, image, stack, 1), self.key(run, "create-more"))
        assert self.names(limited, f"{APP}-{stack}") == [name]
        op = self.settle(limited, limited.resize_server_group(name, Capacity.fixed(1), self.key(run, "shrink")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        self.create(limited, self.spec(limited, image, stack, 1), self.key(run, "create-more"))  # fits now

    # ------------------------------------------------------------------ enable, disable

    def test_enable_and_disable_move_the_enabled_flag(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        name = self.create(provider, self.spec(provider, image, stack, enabled=False), self.key(run, "create"))
        assert provider.get_server_group(name).enabled is False  # deployed dark
        self.wait_up(provider, name, 1)
        op = self.settle(provider, provider.enable_server_group(name, self.key(run, "enable")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        assert provider.get_server_group(name).enabled is True
        op = self.settle(provider, provider.disable_server_group(name, self.key(run, "disable")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        group = provider.get_server_group(name)
        assert group.enabled is False
        assert len(group.instances) == 1, "a disabled group keeps its instances"

    def test_acting_on_a_group_that_does_not_exist_is_not_found(
        self, provider: CloudProvider, stack: str, run: str
    ) -> None:
        name = f"{APP}-{stack}-v007"
        with raises_with_hint(NotFound):
            provider.get_server_group(name)
        with raises_with_hint(NotFound):
            provider.enable_server_group(name, self.key(run, "enable"))
        with raises_with_hint(NotFound):
            provider.resize_server_group(name, Capacity.fixed(1), self.key(run, "resize"))

    # ------------------------------------------------------------------ traffic guards

    def test_the_last_enabled_group_of_a_guarded_cluster_stays(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        cluster = f"{APP}-{stack}"
        guarded = self.with_options(provider, guarded=(cluster,))
        only = self.create(guarded, self.spec(guarded, image, stack), self.key(run, "create-0"))
        self.wait_up(guarded, only, 1)
        with raises_with_hint(TrafficGuardViolation):
            guarded.disable_server_group(only, self.key(run, "disable"))
        with raises_with_hint(TrafficGuardViolation):
            guarded.destroy_server_group(only, self.key(run, "destroy"))
        with raises_with_hint(TrafficGuardViolation):
            guarded.resize_server_group(only, Capacity.fixed(0), self.key(run, "resize"))
        group = guarded.get_server_group(only)
        assert group.enabled is True and group.capacity == Capacity.fixed(1)

        # With another enabled group Up, the same calls (the same keys: nothing was recorded) go through.
        other = self.create(guarded, self.spec(guarded, image, stack), self.key(run, "create-1"))
        self.wait_up(guarded, other, 1)
        op = self.settle(guarded, guarded.disable_server_group(only, self.key(run, "disable")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        assert guarded.get_server_group(only).enabled is False
        with raises_with_hint(TrafficGuardViolation):
            guarded.disable_server_group(other, self.key(run, "disable-other"))

    # ------------------------------------------------------------------ destroy

    def test_a_destroyed_group_is_gone_and_destroying_it_again_succeeds(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        name = self.create(provider, self.spec(provider, image, stack), self.key(run, "create"))
        op = self.settle(provider, provider.destroy_server_group(name, self.key(run, "destroy")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        with raises_with_hint(NotFound):
            provider.get_server_group(name)
        assert name not in self.names(provider, f"{APP}-{stack}")
        again = self.settle(provider, provider.destroy_server_group(name, self.key(run, "destroy-again")))
        assert again.status is OperationStatus.SUCCEEDED, again.message  # the goal is reached
        never = self.settle(provider, provider.destroy_server_group(f"{APP}-{stack}-v042", self.key(run, "never")))
        assert never.status is OperationStatus.SUCCEEDED, never.message

    def test_terminating_an_instance(self, provider: CloudProvider, image: str, stack: str, run: str) -> None:
        spec = self.spec(provider, image, stack, capacity=Capacity(min=0, max=2, desired=2))
        name = self.create(provider, spec, self.key(run, "create"))
        victim = self.wait_up(provider, name, 2).instances[0]
        with raises_with_hint(NotFound):
            provider.terminate_instance(name, "no-such-instance", self.key(run, "terminate-unknown"))
        op = self.settle(
            provider, provider.terminate_instance(name, victim.id, self.key(run, "terminate"), decrement=True)
        )
        assert op.status is OperationStatus.SUCCEEDED, op.message
        group = self.wait_up(provider, name, 1)
        assert group.capacity.desired == 1
        assert victim.id not in {i.id for i in group.instances}

    # ------------------------------------------------------------------ operations

    def test_an_unknown_operation_is_not_found(self, provider: CloudProvider) -> None:
        with raises_with_hint(NotFound):
            provider.operation(f"op-{uuid.uuid4().hex}")

    def test_a_failed_operation_says_why(self, provider: CloudProvider, run: str) -> None:
        op = self.settle(provider, self.failed_operation(provider, self.key(run, "fail")))
        assert op.status is OperationStatus.FAILED and op.done and not op.succeeded
        assert op.message, "a failed operation carries a message"
        with raises_with_hint(OperationFailed):
            provider.poll(op.id)
        try:
            provider.poll(op.id)
        except OperationFailed as error:
            assert op.message in str(error) and error.operation.id == op.id

    # ------------------------------------------------------------------ images

    def test_images_are_baked_once_per_inputs_and_found_newest_first(
        self, provider: CloudProvider, image: str, releases: tuple[BakeRequest, BakeRequest], run: str
    ) -> None:
        older, newer = releases
        key = self.key(run, "bake")
        first = self.settle(provider, provider.bake(older, key))
        assert first.status is OperationStatus.SUCCEEDED, first.message
        assert first.result["image_id"] == image  # the same inputs: the image baked already
        assert provider.bake(newer, key).id == first.id  # a retry's arguments are not compared
        baked = self.settle(provider, provider.bake(newer, self.key(run, "bake-newer")))
        assert baked.status is OperationStatus.SUCCEEDED, baked.message
        new_image = str(baked.result["image_id"])
        assert new_image != image
        got = provider.get_image(new_image)
        assert (got.package, got.version) == (newer.package, newer.version)
        found = [i.id for i in provider.find_images(package=older.package)]
        assert found[:2] == [new_image, image]  # newest first
        assert provider.find_images(package=f"no-such-{uuid.uuid4().hex[:6]}") == []
        with raises_with_hint(NotFound):
            provider.get_image(f"img-{uuid.uuid4().hex}")

    def test_a_server_group_of_an_unknown_image_is_refused(self, provider: CloudProvider, stack: str, run: str) -> None:
        with raises_with_hint(NotFound):
            provider.create_server_group(self.spec(provider, f"img-{uuid.uuid4().hex}", stack), self.key(run, "create"))
        assert self.names(provider, f"{APP}-{stack}") == []

    # ------------------------------------------------------------------ load balancers, firewalls

    def test_load_balancers_are_upserted_and_deleted(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        name = f"{APP}-{stack}"
        lb = LoadBalancer(
            name=name,
            application=APP,
            account=provider.account,
            region=provider.region,
            listeners=(Listener(port=self.listener_port()),),
        )
        op = self.settle(provider, provider.upsert_load_balancer(lb, self.key(run, "lb")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        assert [b.name for b in provider.list_load_balancers(application=APP) if b.name == name] == [name]
        changed = lb.replace(clusters=(name,))
        op = self.settle(provider, provider.upsert_load_balancer(changed, self.key(run, "lb-update")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        (found,) = [b for b in provider.list_load_balancers(application=APP) if b.name == name]
        assert found.clusters == (name,)

        group = self.create(
            provider, self.spec(provider, image, stack, load_balancers=(name,)), self.key(run, "create")
        )
        with raises_with_hint(InvalidRequest):
            provider.delete_load_balancer(name, self.key(run, "delete"))
        self.settle(provider, provider.destroy_server_group(group, self.key(run, "destroy")))
        op = self.settle(provider, provider.delete_load_balancer(name, self.key(run, "delete")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        assert name not in {b.name for b in provider.list_load_balancers(application=APP)}
        again = self.settle(provider, provider.delete_load_balancer(name, self.key(run, "delete-again")))
        assert again.status is OperationStatus.SUCCEEDED, again.message

    def test_firewalls_are_upserted_and_deleted(
        self, provider: CloudProvider, image: str, stack: str, run: str
    ) -> None:
        name = f"{APP}-{stack}"
        fw = Firewall(
            name=name,
            application=APP,
            account=provider.account,
            region=provider.region,
            rules=(FirewallRule(cidr="10.0.0.0/8", port_from=80, port_to=80),),
        )
        op = self.settle(provider, provider.upsert_firewall(fw, self.key(run, "fw")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        wider = fw.replace(rules=(*fw.rules, FirewallRule(cidr="127.0.0.1/32")))
        self.settle(provider, provider.upsert_firewall(wider, self.key(run, "fw-update")))
        (found,) = [f for f in provider.list_firewalls(application=APP) if f.name == name]
        assert found.rules == wider.rules  # replaced, not added to

        group = self.create(provider, self.spec(provider, image, stack, firewalls=(name,)), self.key(run, "create"))
        with raises_with_hint(InvalidRequest):
            provider.delete_firewall(name, self.key(run, "delete"))
        self.settle(provider, provider.destroy_server_group(group, self.key(run, "destroy")))
        op = self.settle(provider, provider.delete_firewall(name, self.key(run, "delete")))
        assert op.status is OperationStatus.SUCCEEDED, op.message
        assert name not in {f.name for f in provider.list_firewalls(application=APP)}
