"""The provider registry: gennaker's own entries, planned extras, and a provider a package adds by an entry point."""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gennaker.canary.sources import LocalMetricSource, MetricSourceError, metric_source
from gennaker.cloud import registry
from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.registry import AccountNotSupported, Planned, ProviderNotInstalled
from gennaker.hooks.cluster import ClusterHook
from gennaker.provider_info import get_provider_info
from gennaker.spec.models import EnableServerGroupStage, MetricSource
from gennaker.web.accounts import environment_accounts

REPO = Path(__file__).resolve().parents[2]

# A third-party package, as pip would install it: its module and its dist-info with entry_points.txt.
ACME_MODULE = """
from datetime import timedelta

from fakecloud import FakeProvider
from gennaker.canary.sources import MetricSource, Series


class AcmeProvider(FakeProvider):
    kind = "acme"
    connection_label = "Acme cloud"
    connection_form = {
        "ui-field-behaviour": {"hidden-fields": ["schema", "port"], "relabeling": {}},
        "conn-fields": {"zone": {"label": "Zone", "schema": {"type": ["string", "null"]}}},
    }

    @classmethod
    def from_connection(cls, conn_id, conn, region):
        zone = conn.extra_dejson.get("zone") if conn is not None else None
        return cls(conn_id, region or zone or "acme-1")


class AcmeMetrics(MetricSource):
    kind = "acme"
    default_step = timedelta(seconds=60)

    def __init__(self, provider):
        self.provider = provider

    @classmethod
    def check_spec(cls, spec):
        return "acme metrics come from the account: no endpoint" if spec.get("endpoint") else None

    @classmethod
    def from_spec(cls, spec, provider):
        return cls(provider())

    def describe(self):
        return "acme metrics"

    def fetch(self, query, scope, start, end, step):
        return Series(start, step.total_seconds(), ())
"""

ACME_ENTRY_POINTS = """
[gennaker.providers]
acme_cloud = acme_gennaker:AcmeProvider
broken_cloud = acme_gennaker_missing:Provider
gennaker_local = acme_gennaker:AcmeProvider

[gennaker.metric_sources]
acme = acme_gennaker:AcmeMetrics
"""


@pytest.fixture(autouse=True)
def fresh_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test reads the entry points anew, and leaves no package of its own behind."""
    monkeypatch.setenv("GENNAKER_HOME", str(tmp_path / "gennaker-home"))
    registry.clear_cache()
    yield
    sys.modules.pop("acme_gennaker", None)
    registry.clear_cache()


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package ``acme-gennaker`` installed in a folder on sys.path (importlib.metadata finds it there)."""
    site = tmp_path / "site"
    (site / "acme_gennaker-1.0.dist-info").mkdir(parents=True)
    (site / "acme_gennaker.py").write_text(textwrap.dedent(ACME_MODULE))
    (site / "acme_gennaker-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-gennaker\nVersion: 1.0\n"
    )
    (site / "acme_gennaker-1.0.dist-info" / "entry_points.txt").write_text(ACME_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    registry.clear_cache()
    return site


def connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn_type: str, **extra: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": conn_type, "extra": extra}))


# --------------------------------------------------------------------------- a package adds a provider


def test_a_package_adds_a_provider_by_an_entry_point(acme: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, "shop", "acme_cloud", zone="acme-eu")
    provider = ClusterHook("shop").get_provider()
    assert type(provider).__name__ == "AcmeProvider"
    assert (provider.kind, provider.account, provider.region) == ("acme", "shop", "acme-eu")
    assert ClusterHook("shop", region="acme-us").get_provider().region == "acme-us"

    assert "acme_cloud" in registry.connection_types()
    assert "shop" in [account.name for account in environment_accounts()]

    types = {entry["connection-type"]: entry for entry in get_provider_info()["connection-types"]}
    assert set(types) == {"gennaker_local", "acme_cloud"}  # broken_cloud cannot be imported: left out
    entry = types["acme_cloud"]
    assert entry["hook-name"] == "Acme cloud"
    assert set(entry["conn-fields"]) == {"zone"}
    assert entry["hook-class-name"] == "gennaker.hooks.cluster.ClusterHook_acme_cloud"


def test_the_hook_airflow_builds_for_the_new_connection_type(acme: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow._shared.module_loading import import_string  # what Airflow's providers manager calls

    hook_class = import_string("gennaker.hooks.cluster.ClusterHook_acme_cloud")
    assert issubclass(hook_class, ClusterHook)
    # Airflow takes a hook's conn_type over the provider info's: it must be the new type.
    assert (hook_class.conn_type, hook_class.hook_name) == ("acme_cloud", "Acme cloud")
    connection(monkeypatch, "shop", "acme_cloud")
    assert hook_class(conn_id="shop").get_provider().region == "acme-1"


def test_specs_may_name_the_new_provider_and_metric_source(acme: Path) -> None:
    stage = EnableServerGroupStage.model_validate({"id": "on", "type": "enableServerGroup", "provider": "acme"})
    assert stage.provider == "acme"
    assert MetricSource.model_validate({"type": "acme"}).type == "acme"
    with pytest.raises(ValueError, match="acme metrics come from the account: no endpoint"):  # its own settings check
        MetricSource.model_validate({"type": "acme", "endpoint": "http://acme"})
    source = metric_source({"type": "acme"}, lambda: LocalProvider())
    assert type(source).__name__ == "AcmeMetrics" and source.describe() == "acme metrics"


def test_a_package_cannot_replace_gennakers_own_provider(acme: Path) -> None:
    provider = ClusterHook().get_provider()
    assert isinstance(provider, LocalProvider)


def test_a_declared_provider_that_cannot_be_imported(acme: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, "odd", "broken_cloud")
    with pytest.raises(ProviderNotInstalled) as caught:
        ClusterHook("odd").get_provider()
    assert "account 'odd': the provider of connection type 'broken_cloud' (acme_gennaker_missing:Provider)" in str(
        caught.value
    )
    assert caught.value.hint == "reinstall acme-gennaker, which declares it"


# --------------------------------------------------------------------------- extras and planned providers


def test_a_planned_provider_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, "prod", "aws")
    with pytest.raises(
        AccountNotSupported, match=r"AWS provider is not built yet \(when it is: pip install 'gennaker\[aws\]'\)"
    ):
        ClusterHook("prod").get_provider()


def test_a_provider_whose_extra_is_not_installed(acme: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As gennaker_local would be if it were an extra whose packages are missing.
    planned = Planned("acme_cloud", "Acme", "acme", "acme", requires=("acme_sdk_that_is_not_installed",))
    monkeypatch.setitem(registry.PLANNED_PROVIDERS, "acme_cloud", planned)
    connection(monkeypatch, "shop", "acme_cloud")
    with pytest.raises(ProviderNotInstalled) as caught:
        ClusterHook("shop").get_provider()
    assert str(caught.value).startswith("account 'shop' is a Acme connection: pip install 'gennaker[acme]'")
    assert "acme_sdk_that_is_not_installed" in str(caught.value)
    ok, message = ClusterHook("shop").test_connection()
    assert not ok and "pip install 'gennaker[acme]'" in message


def test_an_unknown_connection_type_lists_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, "db", "postgres")
    with pytest.raises(AccountNotSupported) as caught:
        ClusterHook("db").get_provider()
    assert caught.value.message == (
        "account 'db' is a connection of type 'postgres', which is not a cloud account gennaker knows "
        "(gennaker_local; aws and google_cloud_platform are not built yet)"
    )


def test_spec_validation_refuses_a_provider_nothing_installed_runs() -> None:
    with pytest.raises(
        ValueError, match=r"the aws provider is not built yet \(when it is: pip install 'gennaker\[aws\]'\)"
    ):
        EnableServerGroupStage.model_validate({"id": "on", "type": "enableServerGroup", "provider": "aws"})
    with pytest.raises(ValueError, match="unknown provider 'acme'; installed: local"):
        EnableServerGroupStage.model_validate({"id": "on", "type": "enableServerGroup", "provider": "acme"})
    with pytest.raises(ValueError, match="unknown metric source 'datadog'; gennaker has local or prometheus"):
        MetricSource.model_validate({"type": "datadog"})
    with pytest.raises(MetricSourceError, match="unknown metric source 'datadog'; gennaker has local or prometheus"):
        metric_source({"type": "datadog"}, lambda: LocalProvider())


def test_a_built_metric_source_whose_extra_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.PLANNED_METRIC_SOURCES, "local", Planned("local", "Local", "local", "local", requires=("no_such_sdk",))
    )
    with pytest.raises(ValueError, match=r"metric source 'local' needs pip install 'gennaker\[local\]' \(no_such_sdk"):
        MetricSource.model_validate({"type": "local"})


# --------------------------------------------------------------------------- gennaker's own entries


def test_gennakers_entry_points_are_the_builtin_table() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    declared = parser["options.entry_points"]

    def lines(group: str) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in declared[group].strip().splitlines())
        return {name.strip(): value.strip() for name, value in pairs}

    assert lines(registry.PROVIDERS_GROUP) == registry.BUILTIN_PROVIDERS
    assert lines(registry.METRIC_SOURCES_GROUP) == registry.BUILTIN_METRIC_SOURCES
    for group, table in (
        (registry.PROVIDERS_GROUP, registry.BUILTIN_PROVIDERS),
        (registry.METRIC_SOURCES_GROUP, registry.BUILTIN_METRIC_SOURCES),
    ):
        for name, value in table.items():
            assert registry.Entry(name, value, "gennaker").load() is not None, (group, name)
    assert (
        registry.Entry("gennaker_local", registry.BUILTIN_PROVIDERS["gennaker_local"], "gennaker").load()
        is LocalProvider
    )
    assert LocalProvider.kind == registry.BUILTIN_KINDS["gennaker_local"]
    assert registry.Entry("local", registry.BUILTIN_METRIC_SOURCES["local"], "gennaker").load() is LocalMetricSource


def test_the_installed_metadata_declares_them() -> None:
    # The dev venv is refreshed after a setup.cfg change (uv pip install -e .): see docs/adding-a-provider.md.
    found = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group=registry.PROVIDERS_GROUP)
        if ep.dist is not None and ep.dist.name == "gennaker"
    }
    assert found == registry.BUILTIN_PROVIDERS


def test_without_metadata_the_builtin_table_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    # A source checkout whose installed metadata predates the entry points.
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda: importlib.metadata.EntryPoints([]))
    registry.clear_cache()
    assert registry.connection_types() == ["gennaker_local"]
    assert registry.metric_source_types() == ["local", "prometheus"]
    assert isinstance(ClusterHook().get_provider(), LocalProvider)
    assert isinstance(metric_source({"type": "local"}, lambda: LocalProvider()), LocalMetricSource)
