"""Metric sources: the local load balancers' series through the provider, and PromQL against a real HTTP server
that speaks the Prometheus HTTP API (``/api/v1/query_range``); Kayenta canary configs in and out."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fakecloud import FakeProvider

from gennaker.canary import CanaryConfig
from gennaker.canary.sources import (
    LOCAL_SERIES,
    LocalMetricSource,
    MetricSourceError,
    PrometheusMetricSource,
    Scope,
    kayenta_config,
    metric_source,
    queries_from_kayenta,
    render_query,
    step_of,
)
from gennaker.cloud.model import MetricSeries
from gennaker.cloud.provider import NotFound

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
SCOPE = Scope("hello-prod-canary-v003", "hello-prod-canary", "hello", "local", "eu-1")
SECOND = timedelta(seconds=1)


def test_placeholders_are_filled_for_the_scope() -> None:
    query = 'sum(rate(req{sg="${scope}",c="${cluster}",r="${ location }"}[1m])) by (${serverGroup}) ${account}'
    assert render_query(query, SCOPE) == (
        'sum(rate(req{sg="hello-prod-canary-v003",c="hello-prod-canary",r="eu-1"}[1m])) '
        "by (hello-prod-canary-v003) local"
    )
    with pytest.raises(MetricSourceError, match=r"unknown placeholder \$\{pod\}.*known: \$\{scope\}"):
        render_query("up{pod='${pod}'}", SCOPE)


# --------------------------------------------------------------------------- local


class MetricsProvider(FakeProvider):
    def __init__(self, kind: str = "local") -> None:
        super().__init__()
        self.kind = kind  # type: ignore[misc]
        self.asked: list[tuple[str, tuple[str, ...], datetime, datetime, timedelta, str | None]] = []

    def metrics(
        self,
        server_group: str,
        names: Sequence[str],
        start: datetime,
        end: datetime,
        step: timedelta,
        *,
        region: str | None = None,
    ) -> dict[str, MetricSeries]:
        self.asked.append((server_group, tuple(names), start, end, step, region))
        if server_group == "gone-v000":
            raise NotFound("server group gone-v000 does not exist")
        return {
            n: MetricSeries(name=n, server_group=server_group, start=start, step_seconds=1, values=(0.1, None, 0.3))
            for n in names
        }


def test_the_local_source_reads_the_providers_series() -> None:
    from gennaker.cloud.local.provider import LOCAL_METRICS

    assert LOCAL_SERIES == LOCAL_METRICS
    provider = MetricsProvider()
    source = LocalMetricSource(provider)
    series = source.fetch("error_rate", SCOPE, T0, T0 + 3 * SECOND, SECOND)
    assert (series.start, series.step, series.values, series.points) == (T0, 1.0, (0.1, None, 0.3), 2)
    assert provider.asked == [(SCOPE.server_group, ("error_rate",), T0, T0 + 3 * SECOND, SECOND, "eu-1")]
    with pytest.raises(MetricSourceError, match="has no series 'cpu'; it has requests, errors, error_rate"):
        source.fetch("cpu", SCOPE, T0, T0 + 3 * SECOND, SECOND)
    gone = Scope("gone-v000", "gone", "gone", "local", "eu-1")
    with pytest.raises(MetricSourceError, match="cannot read latency_p50 of gone-v000: server group gone-v000"):
        source.fetch("latency_p50", gone, T0, T0 + 3 * SECOND, SECOND)


def test_choosing_a_source() -> None:
    local = MetricsProvider()
    assert isinstance(metric_source({"type": "local"}, lambda: local), LocalMetricSource)
    prom = metric_source({"type": "prometheus", "endpoint": "http://p:9090/", "timeout": "5s"}, lambda: local)
    assert isinstance(prom, PrometheusMetricSource) and (prom.endpoint, prom.timeout) == ("http://p:9090", 5.0)
    assert step_of({"type": "local"}, LocalMetricSource(local)) == SECOND
    assert step_of({"type": "prometheus", "step": "30s"}, prom) == timedelta(seconds=30)
    assert step_of({}, prom) == timedelta(seconds=15)
    with pytest.raises(MetricSourceError, match="'cloudwatch' is not available yet: CloudWatch metrics arrive with"):
        metric_source({"type": "cloudwatch"}, lambda: local)
    aws = MetricsProvider("aws")
    with pytest.raises(MetricSourceError, match="is a 'aws' account; CloudWatch metrics arrive with the AWS provider"):
        metric_source({"type": "local"}, lambda: aws)


# --------------------------------------------------------------------------- prometheus, for real over HTTP


class FakePrometheus:
    """A small HTTP server that answers /api/v1/query_range like Prometheus, from ``answers`` by query."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.requests: list[dict[str, str]] = []
        self.failures: list[int] = []  # status codes to answer with first
        self.redirect_to = ""  # if set: answer every request with a redirect to this base URL
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                owner.requests.append({"path": url.path, **params, "auth": self.headers.get("Authorization") or ""})
                if owner.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", owner.redirect_to + self.path)
                    self.end_headers()
                    return
                if owner.failures:
                    self._send(owner.failures.pop(0), {"status": "error", "errorType": "unavailable", "error": "busy"})
                    return
                if url.path != "/api/v1/query_range":
                    self._send(404, {"status": "error", "error": "not found"})
                    return
                answer = owner.answers.get(params.get("query", ""))
                if answer is None:
                    self._send(400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 4"})
                    return
                self._send(200, {"status": "success", "data": {"resultType": "matrix", "result": answer(params)}})

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.close()


def _samples(params: dict[str, str], value: Any, skip: Sequence[int] = ()) -> list[list[Any]]:
    start, end, step = float(params["start"]), float(params["end"]), float(params["step"])
    out, t, i = [], start, 0
    while t <= end + 1e-9:
        if i not in skip:
            out.append([t, str(value(i) if callable(value) else value)])
        t, i = t + step, i + 1
    return out


QUERY = 'sum(rate(http_requests_total{server_group="${scope}",code=~"5.."}[1m]))'
RENDERED = 'sum(rate(http_requests_total{server_group="hello-prod-canary-v003",code=~"5.."}[1m]))'


def test_prometheus_range_query(prometheus: FakePrometheus) -> None:
    prometheus.answers[RENDERED] = lambda p: [
        {"metric": {}, "values": _samples(p, lambda i: "NaN" if i == 2 else i / 10, skip=[3])}
    ]
    source = PrometheusMetricSource(prometheus.url + "/", headers={"Authorization": "Bearer t"})
    series = source.fetch(QUERY, SCOPE, T0, T0 + timedelta(seconds=60), timedelta(seconds=10))
    assert series.step == 10.0 and series.start == T0
    assert series.values == (0.0, 0.1, None, None, 0.4, 0.5)  # NaN and a missing sample: no data
    (request,) = prometheus.requests
    assert request == {
        "path": "/api/v1/query_range",
        "query": RENDERED,
        "start": f"{T0.timestamp():.3f}",
        "end": f"{(T0 + timedelta(seconds=50)).timestamp():.3f}",  # [start, end): the last sample before end
        "step": "10",
        "auth": "Bearer t",
    }


def test_prometheus_without_a_series_is_no_data(prometheus: FakePrometheus) -> None:
    prometheus.answers[RENDERED] = lambda p: []
    series = PrometheusMetricSource(prometheus.url).fetch(QUERY, SCOPE, T0, T0 + 30 * SECOND, 10 * SECOND)
    assert series.values == (None, None, None) and series.points == 0


def test_prometheus_refuses_several_series(prometheus: FakePrometheus) -> None:
    prometheus.answers[RENDERED] = lambda p: [
        {"metric": {"instance": f"i{n}"}, "values": _samples(p, 1)} for n in range(5)
    ]
    with pytest.raises(MetricSourceError, match=r"gave 5 series \(\{\"instance\": \"i0\"\}.*aggregate it"):
        PrometheusMetricSource(prometheus.url).fetch(QUERY, SCOPE, T0, T0 + 30 * SECOND, 10 * SECOND)


def test_prometheus_bad_query_is_not_retried(prometheus: FakePrometheus) -> None:
    with pytest.raises(MetricSourceError, match=r"Prometheus refused query 'nonsense' .* bad_data: parse error"):
        PrometheusMetricSource(prometheus.url).fetch("nonsense", SCOPE, T0, T0 + 30 * SECOND, 10 * SECOND)
    assert len(prometheus.requests) == 1


def test_prometheus_retries_when_busy(prometheus: FakePrometheus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gennaker.canary.sources.time.sleep", lambda s: None)
    prometheus.answers[RENDERED] = lambda p: [{"metric": {}, "values": _samples(p, 2)}]
    prometheus.failures = [503]
    series = PrometheusMetricSource(prometheus.url).fetch(QUERY, SCOPE, T0, T0 + 20 * SECOND, 10 * SECOND)
    assert series.values == (2.0, 2.0) and len(prometheus.requests) == 2
    prometheus.failures = [503, 503, 503]
    with pytest.raises(MetricSourceError, match=r"\(3 attempts\): HTTP 503: unavailable: busy"):
        PrometheusMetricSource(prometheus.url).fetch(QUERY, SCOPE, T0, T0 + 20 * SECOND, 10 * SECOND)


def test_prometheus_unreachable() -> None:
    from localcloud import free_port

    source = PrometheusMetricSource(f"http://127.0.0.1:{free_port()}", retries=0, timeout=2)
    with pytest.raises(
        MetricSourceError,
        match=r"cannot read query .* from http://127\.0\.0\.1:\d+ \(1 attempt\): URLError: .*Connection refused",
    ):
        source.fetch(QUERY, SCOPE, T0, T0 + 20 * SECOND, 10 * SECOND)


def test_prometheus_through_an_airflow_connection(prometheus: FakePrometheus, monkeypatch: pytest.MonkeyPatch) -> None:
    host = prometheus.url.removeprefix("http://")
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROM",
        json.dumps(
            {
                "conn_type": "http",
                "host": host.split(":")[0],
                "port": int(host.split(":")[1]),
                "login": "ada",
                "password": "s3cret",
                "extra": {"headers": {"X-Scope-OrgID": "team"}},
            }
        ),
    )
    source = metric_source({"type": "prometheus", "connection": "prom"}, lambda: MetricsProvider())
    assert isinstance(source, PrometheusMetricSource) and source.endpoint == prometheus.url
    assert source.headers == {"Authorization": "Basic YWRhOnMzY3JldA==", "X-Scope-OrgID": "team"}
    prometheus.answers[RENDERED] = lambda p: [{"metric": {}, "values": _samples(p, 1)}]
    source.fetch(QUERY, SCOPE, T0, T0 + 10 * SECOND, 10 * SECOND)
    assert prometheus.requests[-1]["auth"] == "Basic YWRhOnMzY3JldA=="


# --------------------------------------------------------------------------- credentials stay with their host


def prometheus_connection(monkeypatch: pytest.MonkeyPatch, url: str, **fields: Any) -> None:
    """AIRFLOW_CONN_PROM: ``url``'s host and port, login ada, password s3cret."""
    host, port = url.removeprefix("http://").split(":")
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROM",
        json.dumps(
            {"conn_type": "http", "host": host, "port": int(port), "login": "ada", "password": "s3cret", **fields}
        ),
    )


ADA = "Basic YWRhOnMzY3JldA=="  # ada:s3cret


def test_the_description_never_shows_credentials(prometheus: FakePrometheus, monkeypatch: pytest.MonkeyPatch) -> None:
    prometheus.answers[RENDERED] = lambda p: [{"metric": {}, "values": _samples(p, 1)}]
    with_userinfo = prometheus.url.replace("http://", "http://ada:s3cret@")
    source = PrometheusMetricSource(with_userinfo, retries=0)
    assert source.describe() == f"Prometheus at {prometheus.url}"
    source.fetch(QUERY, SCOPE, T0, T0 + 10 * SECOND, 10 * SECOND)
    assert prometheus.requests[-1]["auth"] == ADA  # the userinfo still authenticates
    prometheus.failures = [503]
    with pytest.raises(MetricSourceError) as info:
        source.fetch(QUERY, SCOPE, T0, T0 + 10 * SECOND, 10 * SECOND)
    assert "s3cret" not in str(info.value) and "ada" not in str(info.value)

    # A connection whose host is a whole URL with userinfo, and one with login/password.
    prometheus_connection(monkeypatch, prometheus.url, host=with_userinfo, port=None, login=None, password=None)
    described = metric_source({"type": "prometheus", "connection": "prom"}, lambda: MetricsProvider()).describe()
    prometheus_connection(monkeypatch, prometheus.url)
    described += metric_source({"type": "prometheus", "connection": "prom"}, lambda: MetricsProvider()).describe()
    assert described == f"Prometheus at {prometheus.url}" * 2


def test_a_connections_credentials_are_not_sent_to_another_host(
    prometheus: FakePrometheus, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = FakePrometheus()
    try:
        other.answers[RENDERED] = lambda p: [{"metric": {}, "values": _samples(p, 1)}]
        prometheus_connection(monkeypatch, prometheus.url, extra={"headers": {"X-Api-Key": "k3y"}})
        # A query endpoint on another host than the connection's: refused, not sent the password.
        with pytest.raises(MetricSourceError, match="a connection's credentials are sent to its own host only") as info:
            metric_source(
                {"type": "prometheus", "connection": "prom", "endpoint": other.url}, lambda: MetricsProvider()
            )
        assert "s3cret" not in str(info.value)
        # A path on the connection's own host is fine.
        on_host = metric_source(
            {"type": "prometheus", "connection": "prom", "endpoint": prometheus.url + "/prom"},
            lambda: MetricsProvider(),
        )
        assert isinstance(on_host, PrometheusMetricSource) and on_host.endpoint == prometheus.url + "/prom"
        # The connection's host redirects elsewhere: the query follows, its credentials do not.
        prometheus.redirect_to = other.url
        source = metric_source({"type": "prometheus", "connection": "prom"}, lambda: MetricsProvider())
        assert source.fetch(QUERY, SCOPE, T0, T0 + 10 * SECOND, 10 * SECOND).values == (1.0,)
        assert prometheus.requests[-1]["auth"] == ADA
        assert [r["auth"] for r in other.requests] == [""]
    finally:
        other.close()


# --------------------------------------------------------------------------- Kayenta configs


def test_spec_metrics_become_a_kayenta_config_and_back() -> None:
    metrics = [
        {
            "name": "error rate",
            "query": QUERY,
            "group": "errors",
            "direction": "increase",
            "critical": True,
            "effectSize": {"measure": "meanRatio", "allowedIncrease": None, "criticalIncrease": 2.0},
            "outliers": {"strategy": "remove", "factor": 2.5},
            "nanStrategy": "replace",
        },
        {"name": "p50", "query": "histogram_quantile(0.5, x)", "group": "latency"},
    ]
    config = kayenta_config(metrics, group_weights={"errors": 60, "latency": 40}, name="c", source="prometheus")
    first = config["metrics"][0]
    assert first["query"] == {
        "type": "prometheus",
        "serviceType": "prometheus",
        "customInlineTemplate": "PromQL:" + QUERY,
    }
    assert first["analysisConfigurations"]["canary"] == {
        "direction": "increase",
        "critical": True,
        "mustHaveData": False,
        "muted": False,
        "nanStrategy": "replace",
        "outliers": {"strategy": "remove", "outlierFactor": 2.5},
        "effectSize": {"measure": "meanRatio", "criticalIncrease": 2.0},
    }
    parsed = CanaryConfig.from_kayenta(config)
    assert parsed.group_weights == {"errors": 60.0, "latency": 40.0}
    assert parsed.metric("error rate").critical_thresholds == (1.0, 2.0)
    assert queries_from_kayenta(config) == {"error rate": QUERY, "p50": "histogram_quantile(0.5, x)"}
    local = kayenta_config([{"name": "e", "query": "error_rate"}], source="local")
    assert queries_from_kayenta(local) == {"e": "error_rate"}


def test_queries_of_a_kayenta_config_from_spinnaker() -> None:
    config = {
        "metrics": [
            {"name": "cpu", "query": {"type": "prometheus", "customInlineTemplate": "PromQL: avg(cpu{g='${scope}'})"}},
            {"name": "mem", "query": {"type": "prometheus", "metricName": "memory_bytes"}},
        ]
    }
    assert queries_from_kayenta(config) == {"cpu": "avg(cpu{g='${scope}'})", "mem": "memory_bytes"}
    with pytest.raises(ValueError, match="metric 'x' has no query gennaker can run"):
        queries_from_kayenta({"metrics": [{"name": "x", "query": {"type": "stackdriver"}}]})
    with pytest.raises(ValueError, match="no metrics"):
        queries_from_kayenta({"metrics": []})


def test_the_report_page_shows_no_credentials_of_a_source() -> None:
    from gennaker.canary.report import render_report

    page = render_report(
        {
            "stage": "canary",
            "status": "succeeded",
            "baseline": {"serverGroup": "hello-prod-baseline-v001"},
            "canary": {"serverGroup": "hello-prod-canary-v002"},
            "source": "Prometheus at http://ada:s3cret@prom.example:9090/?token=t0ken&org=team",
            "error": "cannot read from https://ada:s3cret@prom.example/api?X-Amz-Signature=f00d",
        }
    )
    assert "s3cret" not in page and "t0ken" not in page and "f00d" not in page
    assert "metrics from Prometheus at http://***@prom.example:9090/?token=***&amp;org=team" in page
