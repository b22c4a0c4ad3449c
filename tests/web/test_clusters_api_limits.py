"""The Clusters API's bounds: every string a caller sends has a length limit, capacities have limits (422 / 409)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusters_helpers import Api, write_records

LONG = "x" * 256
SHORT = {
    "application": "limits",
    "account": "local",
    "region": "local",
    "cluster": "limits-s0",
    "serverGroup": "limits-s0-v000",
    "instanceId": "i-1",
    "operationId": "op-1",
}
SG = "/applications/{application}/serverGroups/{account}/{region}/{serverGroup}"
ROUTES = [
    ("GET", "/applications/{application}/clusters"),
    ("GET", "/applications/{application}/clusters/{account}/{cluster}"),
    ("GET", "/applications/{application}/clusters/{account}/{cluster}/history"),
    ("POST", "/applications/{application}/clusters/{account}/{cluster}/rollback"),
    ("GET", SG),
    ("POST", SG + "/resize"),
    ("POST", SG + "/enable"),
    ("POST", SG + "/disable"),
    ("POST", SG + "/destroy"),
    ("POST", SG + "/instances/{instanceId}/terminate"),
    ("GET", "/applications/{application}/loadBalancers"),
    ("GET", "/applications/{application}/firewalls"),
    ("GET", "/applications/{application}/audit"),
    ("GET", "/applications/{application}/operations/{account}/{operationId}"),
]
BODIES: dict[str, Any] = {"resize": {"capacity": {"min": 0, "max": 1, "desired": 1}}}


def _cases() -> list[Any]:
    """Each route with each of its path parameters over-long in turn."""
    cases = []
    for method, template in ROUTES:
        for name in re.findall(r"{(\w+)}", template):
            path = template.format(**{**SHORT, name: LONG})
            cases.append(pytest.param(method, path, id=f"{method} {template} {name}"))
    return cases


def _send(api: Api, method: str, path: str, **kwargs: Any) -> Any:
    if method == "GET":
        return api.get(path, **kwargs)
    return api.post(path, BODIES.get(path.rsplit("/", 1)[-1], {}), **kwargs)


@pytest.mark.parametrize(("method", "path"), _cases())
def test_an_over_long_path_parameter_is_a_422(api: Api, method: str, path: str) -> None:
    response = _send(api, method, path)
    assert response.status_code == 422, response.text
    assert "at most 255 characters" in response.text


@pytest.mark.parametrize("query", [f"cluster={LONG}", f"serverGroup={LONG}", f"before={2**63}"])
def test_over_long_or_huge_query_parameters_are_a_422(api: Api, query: str) -> None:
    assert api.get(f"/applications/limits/audit?{query}").status_code == 422
    if query.startswith("before"):
        assert api.get(f"/applications/limits/clusters/local/limits-s0/history?{query}").status_code == 422


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("enable", {"reason": "r" * 501}),
        ("resize", {"capacity": {"min": 0, "max": 1, "desired": 1}, "reason": "r" * 501}),
        ("resize", {"capacity": {"min": 0, "max": 1_000_000_000, "desired": 1_000_000_000}}),
    ],
)
def test_over_long_reasons_and_huge_capacities_are_a_422(api: Api, action: str, body: dict[str, Any]) -> None:
    response = api.post(SG.format(**SHORT) + f"/{action}", body)
    assert response.status_code == 422, response.text
    assert ("at most 500 characters" if "reason" in body else "less than or equal to 10000") in response.text


@pytest.mark.parametrize("field", ["region", "target"])
def test_over_long_rollback_fields_are_a_422(api: Api, field: str) -> None:
    response = api.post("/applications/limits/clusters/local/limits-s0/rollback", {field: LONG})
    assert response.status_code == 422 and "at most 255 characters" in response.text


@pytest.fixture
def limited(api: Api, service: Any, tmp_path: Path) -> Iterator[Path]:
    """A gennaker_local account of its own home, at most 3 instances per group and 5 in all."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    home = tmp_path / "limited-home"
    extra = {"home": str(home), "max_server_group_capacity": 3, "max_account_instances": 5}
    with create_session() as session:
        session.add(Connection(conn_id="limited", conn_type="gennaker_local", extra=json.dumps(extra)))
    service.accounts.clear()
    yield home
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == "limited").delete()
    service.accounts.clear()
    service.cache.clear()


def test_the_account_limits_refuse_a_resize_with_a_clear_409(api: Api, limited: Path) -> None:
    # Records only (nothing runs): 3 + 3 instances, already above the account's 5.
    write_records(limited, "capped", clusters=1, groups_per_cluster=2, instances_per_group=3, account="limited")
    base = "/applications/capped/serverGroups/limited/local/capped-s0-v000"
    over_group = api.post(f"{base}/resize", {"capacity": {"min": 0, "max": 4, "desired": 4}})
    assert over_group.status_code == 409, over_group.text
    body = over_group.json()
    assert body["type"] == "CapacityLimitExceeded"
    assert "exceeds the limit of 3 instances per server group" in body["detail"]
    assert "max_server_group_capacity" in body["hint"]
    over_account = api.post(f"{base}/resize", {"capacity": {"min": 0, "max": 3, "desired": 3}})
    assert over_account.status_code == 409, over_account.text
    assert "would bring account limited to 6, above its limit of 5 instances" in over_account.json()["detail"]
