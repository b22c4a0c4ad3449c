"""Helpers of the Clusters API tests and benchmark: the API client, pipeline rows, records-only server groups.

:func:`write_records` writes server groups straight into a local provider's state: records
only, nothing runs for them (the read tests, and ``tests/benchmarks/clusters_api.py`` with
1,000 server groups and 10,000 instances). Everything is written in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import (
    Capacity,
    CreatedBy,
    Firewall,
    FirewallRule,
    Health,
    Instance,
    Listener,
    LoadBalancer,
    ServerGroup,
)

USERS = {"admin": ("admin", "admin"), "viewer": ("viewer", "viewer"), "deployer": ("user", "deployer")}
"""user -> (simple auth manager role, password)."""
API = "/gennaker/api"

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
HEALTHS = (Health.UP, Health.UP, Health.UP, Health.DOWN, Health.STARTING, Health.UP, Health.OUT_OF_SERVICE)


def write_records(
    home: Path,
    application: str,
    *,
    clusters: int = 2,
    groups_per_cluster: int = 3,
    instances_per_group: int = 2,
    account: str = "local",
    region: str = "local",
    image_id: str = "img-records",
) -> list[ServerGroup]:
    """``application``'s clusters ``<app>-s<N>`` with groups v000.. (the newest enabled), a load balancer, a firewall.

    Group ``k`` of a cluster was made by run ``manual__<k>`` of DAG ``<app>.deploy``, task ``deploy``.
    Instance healths cycle through Up, Down, Starting and OutOfService.
    """
    store = StateStore(home / "local" / "state.db")
    made = []
    try:
        with store.transaction():
            for c in range(clusters):
                cluster = f"{application}-s{c}"
                for v in range(groups_per_cluster):
                    name = f"{cluster}-v{v:03d}"
                    group = ServerGroup(
                        name=name,
                        account=account,
                        region=region,
                        image_id=image_id,
                        capacity=Capacity.fixed(instances_per_group),
                        enabled=v == groups_per_cluster - 1,
                        load_balancers=(f"{application}-lb",),
                        firewalls=(f"{application}-fw",),
                        created=T0 + timedelta(minutes=c * groups_per_cluster + v),
                        created_by=CreatedBy(dag_id=f"{application}.deploy", run_id=f"manual__{v}", task_id="deploy"),
                    )
                    store.put_server_group(group)
                    for i in range(instances_per_group):
                        store.put_instance(
                            Instance(
                                id=f"i-{application}-{c}-{v}-{i}",
                                server_group=name,
                                host="127.0.0.1",
                                port=20000 + i,
                                health=HEALTHS[i % len(HEALTHS)],
                                health_since=T0,
                                launched=T0,
                            ),
                            account=account,
                            region=region,
                        )
                    made.append(group)
            store.put_load_balancer(
                LoadBalancer(
                    name=f"{application}-lb",
                    application=application,
                    account=account,
                    region=region,
                    listeners=(Listener(port=18080),),
                    clusters=(f"{application}-s0",),
                )
            )
            store.put_firewall(
                Firewall(
                    name=f"{application}-fw",
                    application=application,
                    account=account,
                    region=region,
                    rules=(FirewallRule(port_from=80, port_to=80, cidr="10.0.0.0/8"),),
                )
            )
    finally:
        store.close()
    return made


@dataclass
class Api:
    """The in-process Airflow API server and the calls the tests make."""

    client: TestClient
    home: Path
    tokens: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] | None = None

    def token(self, user: str) -> str:
        if user not in self.tokens:
            password = USERS[user][1]
            r = self.client.post("/auth/token", json={"username": user, "password": password})
            assert r.status_code == 201, r.text
            self.tokens[user] = r.json()["access_token"]
        return self.tokens[user]

    def headers(self, user: str | None) -> dict[str, str]:
        return {} if user is None else {"Authorization": f"Bearer {self.token(user)}"}

    def get(self, path: str, user: str | None = "admin", **kwargs: Any) -> Any:
        return self.client.get(f"{API}{path}", headers=self.headers(user), **kwargs)

    def post(self, path: str, body: Any = None, user: str | None = "admin", **kwargs: Any) -> Any:
        return self.client.post(f"{API}{path}", headers=self.headers(user), json={} if body is None else body, **kwargs)

    def conforms(self, template: str, method: str, status: int, body: Any) -> None:
        """``body`` is what /gennaker/openapi.json says ``method template`` answers with ``status``."""
        import jsonschema

        if self.spec is None:
            self.spec = self.client.get("/gennaker/openapi.json").json()
        operation = self.spec["paths"][template][method.lower()]
        schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(body, {**schema, "components": self.spec["components"]})

    def ok(self, path: str, user: str = "admin") -> Any:
        r = self.get(path, user)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()


def add_pipeline(dag_id: str, tags: list[str], *, stale: bool = False) -> None:
    """A DAG row as the DAG processor writes one for a gennaker pipeline (no parse needed)."""
    from airflow.models.dag import DagModel, DagTag
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    with create_session() as session:
        if session.get(DagBundleModel, "gennaker-web-tests") is None:
            session.add(DagBundleModel(name="gennaker-web-tests"))
            session.flush()
        session.merge(
            DagModel(
                dag_id=dag_id,
                bundle_name="gennaker-web-tests",
                fileloc="/dags/gennaker_pipelines.py",
                relative_fileloc="gennaker_pipelines.py",
                is_stale=stale,
                is_paused=False,
            )
        )
        for tag in tags:
            session.merge(DagTag(name=tag, dag_id=dag_id))
