"""The provider contract (tests/cloud/contract.py) run against the in-memory fake the stage tests use.

Destroys are slow here (``FakeProvider.slow``): a group is tagged and stays until :meth:`settle`
polls its operation, as a real cloud's does while it deletes the group.
"""

from __future__ import annotations

import pytest
from contract import APP, ProviderContract
from fakecloud import FakeProvider

from gennaker.cloud.limits import Limits
from gennaker.cloud.model import BakeRequest, Operation, OperationKind, OperationStatus, ServerGroup
from gennaker.cloud.provider import CloudProvider, IdempotencyKey


class TestFakeProviderContract(ProviderContract):
    SETTLE_SECONDS = 1.0
    POLL_SECONDS = 0.0

    @pytest.fixture
    def provider(self) -> FakeProvider:
        fake = FakeProvider("acct", "here")
        fake.slow.add(OperationKind.DESTROY_SERVER_GROUP)
        return fake

    @pytest.fixture
    def releases(self) -> tuple[BakeRequest, BakeRequest]:
        return tuple(  # type: ignore[return-value]
            BakeRequest(package="hello-service", version=v, application=APP, account="acct", region="here")
            for v in ("1.0.0", "2.0.0")
        )

    def settle(self, provider: CloudProvider, op: Operation) -> Operation:
        assert isinstance(provider, FakeProvider)
        op = provider.operation(op.id)
        if op.kind is OperationKind.DESTROY_SERVER_GROUP and not op.done:  # the cloud finishes deleting it
            provider.groups.pop(str(op.request["server_group"]), None)
            provider.finish(op.id)
        return super().settle(provider, op)

    def wait_up(self, provider: CloudProvider, name: str, count: int) -> ServerGroup:
        # The fake starts no instances on a resize: its tests set health. Here the test plays the cloud.
        assert isinstance(provider, FakeProvider)
        if len(provider.groups[name].instances) != count:
            provider.set_health(name, up=count)
        return super().wait_up(provider, name, count)

    def with_options(
        self, provider: CloudProvider, *, guarded: tuple[str, ...] = (), limits: Limits | None = None
    ) -> CloudProvider:
        assert isinstance(provider, FakeProvider)
        other = FakeProvider(provider.account, provider.region, guarded=guarded, limits=limits)
        # The same account: the same groups, images, operations and counters.
        other.__dict__.update({k: v for k, v in vars(provider).items() if k not in ("guarded", "_limits")})
        return other

    def failed_operation(self, provider: CloudProvider, key: IdempotencyKey) -> Operation:
        assert isinstance(provider, FakeProvider)
        provider.slow.add(OperationKind.BAKE)
        op = provider.bake(BakeRequest(package="broken", version="1", account="acct", region="here"), key)
        provider.finish(op.id, OperationStatus.FAILED, "bake failed: the artifact is not a wheel")
        return provider.operation(op.id)
