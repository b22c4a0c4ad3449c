"""The canary report: the HTML page (statistics, inline SVG charts, escaping) and the FastAPI router serving it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gennaker.canary import report as report_mod
from gennaker.canary.report import canary_report_router, render_report, report_path, report_url, thin


def _result(name: str, label: str, control: list[float | None], experiment: list[float | None]) -> dict[str, Any]:
    return {
        "name": name,
        "classification": label,
        "classificationReason": f"{name} went up" if label != "Pass" else None,
        "critical": name == "error_rate",
        "muted": False,
        "direction": "increase",
        "resultMetadata": {
            "effectSize": 4.2,
            "effectSizeMeasure": "meanRatio",
            "ciLower": 0.1,
            "ciUpper": 0.3,
            "estimate": 0.2,
            "ratio": 4.2,
        },
        "controlMetadata": {"stats": {"count": 5, "mean": 0.05, "std": 0.01, "min": 0.0, "max": 0.1}},
        "experimentMetadata": {"stats": {"count": 5, "mean": 0.21, "std": 0.02, "min": 0.19, "max": 0.25}},
    }


def _report(**more: Any) -> dict[str, Any]:
    control = [0.0, 0.1, None, 0.05, 0.05]
    experiment = [0.2, 0.21, 0.19, None, 0.25]
    return {
        "stage": "canary",
        "dagId": "hello.deploy-prod",
        "runId": "manual__1",
        "taskId": "canary",
        "status": "failed",
        "verdict": "Fail",
        "score": 0.0,
        "message": "Final canary score 0.0 is not above the marginal score threshold.",
        "thresholds": {"pass": 75, "marginal": 50},
        "live": "hello-prod-v001",
        "trafficPercent": 10,
        "source": "the local load balancers of account 'local'",
        "startedAt": "2026-03-01T12:00:00+00:00",
        "planned": 3,
        "plan": {"lifetime": "3m", "interval": "1m", "warmup": "0s", "lookback": "growing"},
        "queries": {"error_rate": "error_rate", "<b>x</b>": "latency_p50"},
        "baseline": {"serverGroup": "hello-prod-baseline-v000", "image": "hello-service 1.0.0 (img-1)", "note": ""},
        "canary": {"serverGroup": "hello-prod-canary-v000", "image": "hello-service 2.0.0 (img-2)", "note": ""},
        "intervals": [
            {
                "index": 1,
                "score": 0.0,
                "classification": "Fail",
                "window": "12:00:00-12:01:00",
                "metrics": {"error_rate": "High", "<b>x</b>": "Pass"},
            },
        ],
        "last": {
            "results": [_result("error_rate", "High", control, experiment), _result("<b>x</b>", "Pass", [], [])],
            "series": {
                "error_rate": {
                    "control": {"start": "2026-03-01T12:00:00+00:00", "step": 1.0, "values": control},
                    "experiment": {"start": "2026-03-01T12:00:00+00:00", "step": 1.0, "values": experiment},
                }
            },
        },
        "warnings": ["One of the metrics returned fewer than 50 data points"],
        **more,
    }


def test_the_report_page() -> None:
    page = render_report(_report())
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert '<span class="badge fail">Fail</span>' in page
    assert "Final score <b>0</b> (pass 75, marginal 50)" in page
    assert "<code>hello-prod-baseline-v000</code>" in page and "hello-service 2.0.0 (img-2)" in page
    assert "10% of the live traffic to each" in page
    assert "Intervals (1 of 3 judged)" in page
    # Statistics of both series, the effect size and the interval.
    assert "<td class='num'>0.05</td><td class='num'>0.01</td>" in page
    assert "<td class='num'>0.21</td>" in page
    assert "effect size (meanRatio) 4.2" in page and "98% CI [0.1, 0.3]" in page
    # The chart: both series, each broken where a point is missing.
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count('<polyline fill="none" stroke="#1f77b4"') == 2  # two stretches around the gap
    assert svg.count('<polyline fill="none" stroke="#ff7f0e"') == 1 and '<circle cx="750.0"' in svg  # a lone point
    assert "No data points to chart." in page  # the second metric has none
    # Names are escaped everywhere, and the page does not reload itself once the canary is over.
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "http-equiv='refresh'" not in page


def test_a_running_canary_page_reloads() -> None:
    page = render_report({"stage": "canary", "status": "running", "planned": 2, "intervals": []})
    assert "http-equiv='refresh'" in page and "No interval judged yet (of 2)" in page


def test_thinning_keeps_the_shape() -> None:
    assert thin([1.0, None, 3.0]) == ([1.0, None, 3.0], 1)
    values, every = thin([float(i) for i in range(1000)] + [None] * 5, limit=100)
    assert every == 11 and len(values) == 92 and values[0] == 5.0
    assert thin([None] * 30, limit=10) == ([None] * 10, 3)


def test_the_report_url() -> None:
    assert report_path("hello.deploy-prod", "manual__2026-03-01T12:00:00+00:00", "canary") == (
        "/gennaker/canary/reports/hello.deploy-prod/manual__2026-03-01T12%3A00%3A00%2B00%3A00/canary"
    )
    assert report_url("d", "r", "t", 2, base_url="http://localhost:8080/") == (
        "http://localhost:8080/gennaker/canary/reports/d/r/t?map_index=2"
    )


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    from airflow.api_fastapi.core_api.security import get_user

    stored = {("hello.deploy-prod", "manual__2026-03-01T12:00:00+00:00", "canary", -1): _report()}
    allowed = {"hello.deploy-prod"}
    monkeypatch.setattr(report_mod, "_may_read", lambda user, dag_id: user == "ada" and dag_id in allowed)
    app = FastAPI()
    app.include_router(canary_report_router(lambda d, r, t, m: stored.get((d, r, t, m))))
    app.dependency_overrides[get_user] = lambda: "ada"
    return TestClient(app)


def test_the_router_serves_the_page_and_the_data(client: TestClient) -> None:
    path = report_path("hello.deploy-prod", "manual__2026-03-01T12:00:00+00:00", "canary").removeprefix("/gennaker")
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Canary <code>canary</code>" in page.text
    data = client.get(path + "/json")
    assert data.status_code == 200 and data.json()["verdict"] == "Fail"
    missing = client.get(path.rsplit("/", 1)[0] + "/nope")
    assert missing.status_code == 404 and "no canary report for task 'nope'" in missing.json()["detail"]
    refused = client.get("/canary/reports/secret.dag/r/canary")
    assert refused.status_code == 403


def test_the_router_needs_a_user() -> None:
    app = FastAPI()
    app.include_router(canary_report_router(lambda d, r, t, m: None))
    answer = TestClient(app).get("/canary/reports/d/r/t")
    assert answer.status_code == 401  # Airflow's get_user: no token, no cookie
