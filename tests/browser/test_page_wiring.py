"""How the Clusters page is wired into Airflow: the nav entry (react_apps), the bundle's route, the task link.

The page itself runs in a browser in tests/integration/test_clusters_page.py; these check the
pieces Airflow reads without one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gennaker.plugin import GennakerPlugin, bundle_version
from gennaker.web.links import ServerGroupLink, clusters_page_url

STATIC = Path(__file__).resolve().parents[2] / "plugin" / "gennaker" / "web" / "static"


def test_the_plugin_puts_clusters_in_airflows_navigation() -> None:
    from airflow.api_fastapi.core_api.datamodels.plugins import ReactAppResponse

    (app,) = GennakerPlugin.react_apps
    served = ReactAppResponse.model_validate(app)  # what GET /api/v2/plugins hands to the UI
    assert (served.name, served.url_route, served.destination, served.nav_top_level) == (
        "Clusters",
        "clusters",
        "nav",
        True,
    )
    # Relative to the UI's <base href>, so an [api] base_url with a path works; the version busts caches.
    assert served.bundle_url == f"gennaker/static/clusters.js?v={bundle_version()}"
    assert re.fullmatch(r"[0-9a-f]{12}", bundle_version())
    assert bundle_version() in (STATIC / "clusters.js").read_text()[:300]
    for icon in (served.icon, served.icon_dark_mode):
        assert icon is not None and icon.startswith("gennaker/static/")
        assert (STATIC / icon.removeprefix("gennaker/static/")).read_text().startswith("<svg")


def test_the_clusters_api_app_serves_the_bundle_as_javascript() -> None:
    from fastapi.testclient import TestClient

    from gennaker.web.app import create_app

    client = TestClient(create_app())
    r = client.get("/static/clusters.js", params={"v": bundle_version()})
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] in {"text/javascript", "application/javascript"}
    assert r.content == (STATIC / "clusters.js").read_bytes()
    assert client.get("/static/clusters.svg").headers["content-type"].startswith("image/svg+xml")
    assert client.get("/static/nothing.js").status_code == 404


@pytest.mark.parametrize(
    ("output", "url"),
    [
        (
            {"serverGroup": "hello-prod-v003", "cluster": "hello-prod", "account": "local", "region": "local"},
            "plugin/clusters?application=hello&serverGroup=hello-prod-v003&sgAccount=local&sgRegion=local",
        ),
        (
            {"serverGroup": "hello--canary-v010", "account": "aws-prod"},
            "plugin/clusters?application=hello&serverGroup=hello--canary-v010&sgAccount=aws-prod",
        ),
        (None, ""),  # the task failed before it returned
        ({"phase": "waiting"}, ""),
        ({"serverGroup": "not a name!"}, ""),
    ],
)
def test_the_link_of_a_task_output(output: Any, url: str) -> None:
    assert clusters_page_url(output) == url


def test_deploy_and_promote_tasks_link_to_their_server_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time import xcom

    from gennaker.operators.deploy import DeployOperator, PromoteOperator

    for operator in (DeployOperator, PromoteOperator):
        assert [type(link) for link in operator.operator_extra_links] == [ServerGroupLink]
    assert GennakerPlugin.operator_extra_links == [ServerGroupLink()]

    asked: list[tuple[Any, str]] = []

    def get_value(*, ti_key: Any, key: str) -> Any:
        asked.append((ti_key, key))
        return {"serverGroup": "hello-prod-v004", "cluster": "hello-prod", "account": "local", "region": "local"}

    monkeypatch.setattr(xcom.XCom, "get_value", get_value)
    link = ServerGroupLink()
    assert link.name == "Server group"
    assert link.get_link(None, ti_key="the-ti") == (  # type: ignore[arg-type]
        "plugin/clusters?application=hello&serverGroup=hello-prod-v004&sgAccount=local&sgRegion=local"
    )
    assert asked == [("the-ti", "return_value")]
