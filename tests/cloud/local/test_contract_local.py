"""The provider contract (tests/cloud/contract.py) run against the local provider: real bakes, real processes.

One home for the module: the demo service 1.0.0 and 2.0.0 are built once, 1.0.0 is baked by the
first test that needs an image and found again by every later one. Each test makes one-instance
groups of its own cluster and destroys them afterwards (the contract's cleanup), so few processes
run at once. Every process the provider starts carries a mark; the module's teardown stops the
supervisors and proxies of the home and fails if anything carrying the mark is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from contract import APP, ProviderContract
from localcloud import (
    ACCOUNT,
    FAST_HEALTH,
    PYTHON_BASE,
    REGION,
    Cloud,
    bounded_to,
    build_hello,
    free_port,
    provider_env,
)

from gennaker.cloud.limits import Limits
from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.model import BakeRequest
from gennaker.cloud.provider import CloudProvider

if not Path("/proc/self/environ").exists():  # pragma: no cover - leftovers are found through /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

TEST_SECONDS = 90


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """The module's home with the provider's environment; at the end every process it started is stopped."""
    home = tmp_path_factory.mktemp("contract") / "gennaker"
    with provider_env(home, tmp_path_factory.mktemp("bake-tools")) as mark:
        cloud = Cloud(home, mark)
        try:
            yield cloud
        finally:
            problems = cloud.close()
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hello-dist")
    return {version: build_hello(version, out) for version in ("1.0.0", "2.0.0")}


class TestLocalProviderContract(ProviderContract):
    @pytest.fixture(autouse=True)
    def bounded(self) -> Iterator[None]:
        with bounded_to(TEST_SECONDS):
            yield

    @pytest.fixture
    def provider(self, lab: Cloud) -> LocalProvider:
        return lab.provider()

    @pytest.fixture
    def releases(self, wheels: dict[str, Path]) -> tuple[BakeRequest, BakeRequest]:
        older, newer = (
            BakeRequest(
                package="hello-service",
                version=version,
                artifact=str(wheels[version]),
                application=APP,
                base=PYTHON_BASE,
                account=ACCOUNT,
                region=REGION,
            )
            for version in ("1.0.0", "2.0.0")
        )
        return older, newer

    def spec_fields(self) -> dict[str, object]:
        return {"health_check": FAST_HEALTH}

    def listener_port(self) -> int:
        return free_port()

    def with_options(
        self, provider: CloudProvider, *, guarded: tuple[str, ...] = (), limits: Limits | None = None
    ) -> CloudProvider:
        assert isinstance(provider, LocalProvider)
        other = LocalProvider(
            provider.account, provider.region, home=provider.home, guarded_clusters=guarded, limits=limits
        )
        self._others.append(other)
        return other

    @pytest.fixture(autouse=True)
    def _close_others(self) -> Iterator[None]:
        self._others: list[LocalProvider] = []
        yield
        for other in self._others:
            other.close()
