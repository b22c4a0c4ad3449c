"""ClusterHook: the stage's account (an Airflow connection id) -> the cloud provider."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gennaker.cloud.local.provider import LocalProvider
from gennaker.errors import InvalidRequest, NotFound
from gennaker.hooks.cluster import AccountNotFound, AccountNotSupported, ClusterHook, provider_for


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The embedded account keeps its state here, never in a real home."""
    folder = tmp_path / "gennaker-home"
    monkeypatch.setenv("GENNAKER_HOME", str(folder))
    return folder


def connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn_type: str, **extra: object) -> None:
    """An Airflow connection the way a deployment sets one without a database: AIRFLOW_CONN_<ID> as JSON."""
    value = {"conn_type": conn_type, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


def test_local_without_any_connection_is_the_embedded_provider(home: Path) -> None:
    provider = ClusterHook().get_provider()
    assert isinstance(provider, LocalProvider)
    assert (provider.account, provider.region) == ("local", "local")
    assert provider.home == home
    assert provider.guarded_clusters == frozenset()


def test_the_stage_region_is_the_provider_default(home: Path) -> None:
    assert ClusterHook("local", region="eu").get_provider().region == "eu"
    assert provider_for("local", "us").region == "us"


def test_the_provider_is_cached_per_hook() -> None:
    hook = ClusterHook()
    assert hook.get_provider() is hook.get_provider()
    assert hook.get_conn() is hook.get_provider()
    assert ClusterHook().get_provider() is not hook.get_provider()


def test_a_gennaker_local_connection_sets_home_region_and_guards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection(
        monkeypatch,
        "staging",
        "gennaker_local",
        home=str(tmp_path / "staging"),
        region="eu",
        traffic_guards=["hello-prod", "shop-prod"],
    )
    provider = ClusterHook("staging").get_provider()
    assert isinstance(provider, LocalProvider)
    assert provider.account == "staging"
    assert provider.region == "eu"
    assert provider.home == tmp_path / "staging"
    assert provider.guarded_clusters == frozenset({"hello-prod", "shop-prod"})
    assert ClusterHook("staging", region="us").get_provider().region == "us"  # the stage's region wins


def test_the_local_connection_itself_can_be_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, "local", "gennaker_local", traffic_guards=["hello-prod"])
    provider = ClusterHook().get_provider()
    assert provider.guarded_clusters == frozenset({"hello-prod"})  # type: ignore[attr-defined]
    assert provider.region == "local"


@pytest.mark.parametrize(
    "guards",
    ["hello-prod, hello-staging", '["hello-prod", "hello-staging"]', ["hello-prod", "hello-staging", ""]],
)
def test_traffic_guards_as_the_form_or_json_writes_them(monkeypatch: pytest.MonkeyPatch, guards: object) -> None:
    connection(monkeypatch, "staging", "gennaker_local", traffic_guards=guards)
    provider = ClusterHook("staging").get_provider()
    assert provider.guarded_clusters == frozenset({"hello-prod", "hello-staging"})  # type: ignore[attr-defined]


def test_form_fields_saved_with_their_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"extra__gennaker_local__home": str(tmp_path / "x"), "extra__gennaker_local__traffic_guards": "a-b"}
    connection(monkeypatch, "staging", "gennaker_local", **extra)
    provider = ClusterHook("staging").get_provider()
    assert provider.home == tmp_path / "x"  # type: ignore[attr-defined]
    assert provider.guarded_clusters == frozenset({"a-b"})  # type: ignore[attr-defined]


def test_bad_traffic_guards_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, "staging", "gennaker_local", traffic_guards={"hello-prod": True})
    with pytest.raises(AccountNotSupported, match="connection 'staging': traffic_guards must be a list"):
        ClusterHook("staging").get_provider()


@pytest.mark.parametrize(("conn_type", "cloud"), [("aws", "AWS"), ("google_cloud_platform", "Google Cloud")])
def test_aws_and_gcp_accounts_are_not_built_yet(monkeypatch: pytest.MonkeyPatch, conn_type: str, cloud: str) -> None:
    connection(monkeypatch, "prod", conn_type)
    with pytest.raises(AccountNotSupported) as caught:
        ClusterHook("prod").get_provider()
    assert isinstance(caught.value, InvalidRequest)  # not retryable
    assert str(caught.value).startswith(
        f"account 'prod' is a {cloud} connection (type {conn_type!r}): gennaker's {cloud} provider is not built yet"
    )


def test_another_connection_type_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, "db", "postgres")
    with pytest.raises(AccountNotSupported, match="account 'db' is a connection of type 'postgres', which is not"):
        ClusterHook("db").get_provider()


def test_an_account_without_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AccountNotFound) as caught:
        ClusterHook("nowhere").get_provider()
    assert isinstance(caught.value, NotFound)
    assert "account 'nowhere': there is no Airflow connection 'nowhere'" in str(caught.value)
    assert "type gennaker_local" in str(caught.value)


def test_test_connection_describes_the_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, "staging", "gennaker_local", home=str(tmp_path / "s"), traffic_guards="hello-prod")
    ok, message = ClusterHook("staging").test_connection()
    assert ok, message
    assert message == f"staging: local account, region local, home {tmp_path / 's'}, traffic guards on hello-prod"
    connection(monkeypatch, "prod", "aws")
    ok, message = ClusterHook("prod").test_connection()
    assert not ok and "not built yet" in message


def test_the_connection_type_is_registered() -> None:
    from gennaker.provider_info import get_provider_info

    (entry,) = get_provider_info()["connection-types"]
    assert entry["hook-class-name"] == "gennaker.hooks.cluster.ClusterHook"
    assert entry["connection-type"] == ClusterHook.conn_type == "gennaker_local"
    assert entry["hook-name"] == ClusterHook.hook_name
    assert set(entry["conn-fields"]) == {"home", "region", "traffic_guards"}
    assert (ClusterHook.conn_name_attr, ClusterHook.default_conn_name) == ("conn_id", "local")


def test_airflow_builds_the_hook_from_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseHook

    connection(monkeypatch, "staging", "gennaker_local", region="eu")
    hook = BaseHook.get_hook("staging")
    assert isinstance(hook, ClusterHook)
    assert hook.conn_id == "staging"
    assert hook.get_provider().region == "eu"


def test_each_connection_type_has_its_hook_class() -> None:
    from gennaker.hooks import cluster

    assert cluster.hook_class("gennaker_local") is ClusterHook
    # A type no installed provider serves has no hook: hasattr() and Airflow's import_string see AttributeError.
    assert not hasattr(cluster, "ClusterHook_postgres")
    with pytest.raises(AttributeError, match="'postgres', which is not a cloud account gennaker knows"):
        cluster.ClusterHook_postgres  # noqa: B018
