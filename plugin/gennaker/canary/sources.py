"""Metric sources: where a canary judgement reads the baseline's and the canary's series.

A source answers one question: the values of one metric query for one server group
(its *scope*) from ``start`` to ``end`` (end excluded), one sample every ``step``::

    source.fetch(query, scope, start, end, step) -> Series   # values[i] at start + i * step; None = no data

=================  ==============================================================================
source             what a query is
=================  ==============================================================================
``local``          the name of a series the local load balancers record per server group and
                   second (``CloudProvider.metrics()`` of the stage's account): ``requests``,
                   ``errors``, ``error_rate``, ``latency_mean``, ``latency_p50``, ``latency_p90``,
                   ``latency_p99`` (:data:`LOCAL_SERIES`). Only the local provider has them;
                   CloudWatch and Cloud Monitoring arrive with the AWS and GCP providers.
``prometheus``     PromQL, sent to a Prometheus-compatible HTTP API (``GET /api/v1/query_range``:
                   Prometheus, Thanos, Cortex, Mimir, VictoriaMetrics). The query must give one
                   series (aggregate with ``sum(...)`` etc.); no series is no data.
=================  ==============================================================================

**Placeholders.** As in Kayenta's query templates, a query names the scope it is asked
for: ``${scope}`` and ``${serverGroup}`` (the server group, e.g. ``hello-prod-canary-v003``),
``${cluster}``, ``${application}``, ``${account}``, ``${region}`` and ``${location}`` (the
region). So one query serves the baseline and the canary::

    sum(rate(http_requests_total{server_group="${scope}", code=~"5.."}[1m]))
      / sum(rate(http_requests_total{server_group="${scope}"}[1m]))

Another ``${name}`` is refused when the spec is loaded (and by :func:`render_query`).

**Kayenta canary configs.** :func:`kayenta_config` turns a spec's metrics into a Kayenta
canary config (what the judge reads), and :func:`queries_from_kayenta` reads the queries
back out of one, ours or Kayenta's own (``customInlineTemplate`` ``PromQL:...``, else
``metricName``), so a config exported from Spinnaker is used as is.

Nothing here imports numpy or a cloud SDK; the Prometheus source uses the standard library
(``urllib``).
"""

from __future__ import annotations

import abc
import json
import math
import re
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from gennaker import safehttp
from gennaker.errors import MetricSourceError
from gennaker.redact import redact_text, redact_url
from gennaker.safehttp import credential_request, split_userinfo
from gennaker.spec.models import CANARY_QUERY_VARIABLES

if TYPE_CHECKING:
    from gennaker.cloud.provider import CloudProvider

__all__ = [
    "LOCAL_SERIES",
    "LocalMetricSource",
    "MetricSource",
    "MetricSourceError",
    "PrometheusMetricSource",
    "Scope",
    "Series",
    "kayenta_config",
    "metric_source",
    "queries_from_kayenta",
    "render_query",
    "step_of",
]

LOCAL_SERIES = ("requests", "errors", "error_rate", "latency_mean", "latency_p50", "latency_p90", "latency_p99")
"""The series the local load balancers record (``gennaker.cloud.local.provider.LOCAL_METRICS``)."""

_PLACEHOLDER = re.compile(r"\$\{\s*([^}]*?)\s*\}")
_PROMQL_PREFIX = "PromQL:"


# --------------------------------------------------------------------------- scope and series


@dataclass(frozen=True)
class Scope:
    """What a query is asked about: one server group (the baseline's or the canary's)."""

    server_group: str
    cluster: str
    application: str
    account: str
    region: str

    def variables(self) -> dict[str, str]:
        """The values of the query placeholders."""
        return {
            "scope": self.server_group,
            "serverGroup": self.server_group,
            "cluster": self.cluster,
            "application": self.application,
            "account": self.account,
            "region": self.region,
            "location": self.region,
        }


def render_query(template: str, scope: Scope) -> str:
    """The query with its ``${...}`` placeholders filled in for ``scope``."""
    values = scope.variables()
    assert set(values) == set(CANARY_QUERY_VARIABLES), "the placeholders and the spec's list must agree"

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            known = ", ".join("${" + n + "}" for n in values)
            raise MetricSourceError(f"unknown placeholder ${{{name}}} in query {template!r}; known: {known}")
        return values[name]

    return _PLACEHOLDER.sub(fill, template)


@dataclass(frozen=True)
class Series:
    """Evenly spaced samples: ``values[i]`` at ``start + i * step``; None where there is no data."""

    start: datetime
    step: float
    values: tuple[float | None, ...] = ()

    @property
    def points(self) -> int:
        """How many samples have data."""
        return sum(1 for v in self.values if v is not None and not math.isnan(v))


def _slots(start: datetime, end: datetime, step: float) -> int:
    return max(math.ceil((end - start).total_seconds() / step - 1e-9), 0)


# --------------------------------------------------------------------------- sources


class MetricSource(abc.ABC):
    """Answers metric queries for server groups (see the module docstring)."""

    kind: ClassVar[str]
    default_step: ClassVar[timedelta]
    known_queries: ClassVar[tuple[str, ...] | None] = None
    """The only queries this source answers (checked when the spec is built), or ``None`` for any text."""
    settle: ClassVar[float] = 0.0
    """Seconds after a window ends before its last samples are in (the stage waits this much longer)."""

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: Mapping[str, Any], provider: Callable[[], CloudProvider]) -> MetricSource:
        """The source a stage's ``metricSource`` (a dict with the spec's keys) describes.

        ``provider`` builds the stage account's provider, for a source that reads through it.
        Raise :class:`MetricSourceError` for settings that cannot work.
        """

    @abc.abstractmethod
    def fetch(self, query: str, scope: Scope, start: datetime, end: datetime, step: timedelta) -> Series:
        """The samples of ``query`` for ``scope`` in ``[start, end)``, one every ``step``."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The source in a few words, for the log."""

    @classmethod
    def check_spec(cls, spec: Mapping[str, Any]) -> str | None:
        """What is wrong with a ``metricSource``'s settings (spec keys) for this source, when specs are validated."""
        return None

    def check(self, query: str) -> None:  # noqa: B027 - optional: most sources accept any text
        """Raise :class:`MetricSourceError` if ``query`` can never be answered (before anything is deployed)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class LocalMetricSource(MetricSource):
    """The local load balancers' per-server-group series, through ``CloudProvider.metrics()``."""

    kind: ClassVar[str] = "local"
    default_step: ClassVar[timedelta] = timedelta(seconds=1)
    settle: ClassVar[float] = 2.0  # the proxies flush their per-second counts every second
    known_queries: ClassVar[tuple[str, ...] | None] = LOCAL_SERIES

    def __init__(self, provider: CloudProvider) -> None:
        self.provider = provider

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], provider: Callable[[], CloudProvider]) -> LocalMetricSource:
        """The local series of the stage's account, which must be a local one."""
        from gennaker.cloud import registry

        chosen = provider()
        if chosen.kind != cls.kind:
            later = registry.planned_metric_source_of(chosen.kind)
            why = f"; {later.later}" if later is not None and later.later else ""
            raise MetricSourceError(
                f"metric source 'local' reads the local load balancers, but account {chosen.account!r} is a "
                f"{chosen.kind!r} account{why}: use a prometheus metric source meanwhile"
            )
        return cls(chosen)

    @classmethod
    def check_spec(cls, spec: Mapping[str, Any]) -> str | None:
        if spec.get("endpoint") or spec.get("connection"):
            return "the local metric source reads the local load balancers: it takes no endpoint"
        return None

    def describe(self) -> str:
        return f"the local load balancers of account {self.provider.account!r}"

    def check(self, query: str) -> None:
        if query not in LOCAL_SERIES:
            raise MetricSourceError(
                f"the local metric source has no series {query!r}; it has {', '.join(LOCAL_SERIES)}"
            )

    def fetch(self, query: str, scope: Scope, start: datetime, end: datetime, step: timedelta) -> Series:
        from gennaker.errors import CloudError

        self.check(query)
        seconds = max(step.total_seconds(), 1.0)
        try:
            found = self.provider.metrics(
                scope.server_group, [query], start, end, timedelta(seconds=seconds), region=scope.region
            )
        except CloudError as error:
            raise MetricSourceError(f"cannot read {query} of {scope.server_group}: {error}") from error
        series = found.get(query)
        if series is None:
            return Series(start, seconds, (None,) * _slots(start, end, seconds))
        return Series(series.start, series.step_seconds, tuple(series.values))


class PrometheusMetricSource(MetricSource):
    """PromQL over a Prometheus-compatible HTTP API (``GET <endpoint>/api/v1/query_range``)."""

    kind: ClassVar[str] = "prometheus"
    default_step: ClassVar[timedelta] = timedelta(seconds=15)

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        opener: Callable[..., Any] | None = None,
    ) -> None:
        # Userinfo in the endpoint becomes a header: the endpoint itself is shown (logs, XCom, the report).
        bare, from_userinfo = split_userinfo(endpoint.strip())
        self.endpoint = bare.rstrip("/")
        self.headers = {**from_userinfo, **dict(headers or {})}
        """Sent to the endpoint's own scheme, host and port only (credentials: not along a redirect elsewhere)."""
        self.timeout = timeout
        self.retries = retries
        self._open = opener or safehttp.opener().open
        self._shown = redact_url(self.endpoint)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], provider: Callable[[], CloudProvider]) -> PrometheusMetricSource:
        """The ``endpoint`` (or the Airflow ``connection``) and ``timeout`` of the spec."""
        from gennaker.canary.prometheus_spec import prometheus_source

        return prometheus_source(spec)

    @classmethod
    def check_spec(cls, spec: Mapping[str, Any]) -> str | None:
        if not (spec.get("endpoint") or spec.get("connection")):
            return "a prometheus metric source needs 'endpoint' (or an Airflow 'connection')"
        return None

    def describe(self) -> str:
        return f"Prometheus at {self._shown}"

    def fetch(self, query: str, scope: Scope, start: datetime, end: datetime, step: timedelta) -> Series:
        promql = render_query(query, scope)
        seconds = step.total_seconds()
        if seconds <= 0:
            raise MetricSourceError(f"the step must be positive, got {step}")
        count = _slots(start, end, seconds)
        if count == 0:
            return Series(start, seconds, ())
        # query_range includes its end: ask for the samples start, start + step, ..., the last one before end.
        last = start + timedelta(seconds=seconds * (count - 1))
        params = {
            "query": promql,
            "start": _unix(start),
            "end": _unix(last),
            "step": f"{seconds:g}",
        }
        data = self._get("/api/v1/query_range", params, promql, scope)
        result_type = data.get("resultType")
        results = data.get("result") or []
        if result_type != "matrix":
            raise MetricSourceError(
                f"Prometheus answered query {promql!r} with a {result_type!r}, not a range (matrix): "
                f"is it a range query's expression?"
            )
        values: list[float | None] = [None] * count
        if not results:
            return Series(start, seconds, tuple(values))
        if len(results) > 1:
            labels = "; ".join(json.dumps(r.get("metric") or {}, sort_keys=True) for r in results[:3])
            raise MetricSourceError(
                f"query {promql!r} for {scope.server_group} gave {len(results)} series ({labels}"
                f"{'; ...' if len(results) > 3 else ''}): a canary metric needs one; aggregate it, "
                f"e.g. sum(...) or sum by () (...)"
            )
        origin = start.timestamp()
        for pair in results[0].get("values") or []:
            try:
                ts, text = float(pair[0]), str(pair[1])
            except (TypeError, ValueError, IndexError):
                raise MetricSourceError(f"Prometheus sent a sample that is not [time, value]: {pair!r}") from None
            i = round((ts - origin) / seconds)
            if 0 <= i < count:
                values[i] = _number(text)
        return Series(start, seconds, tuple(values))

    def _get(self, path: str, params: Mapping[str, str], promql: str, scope: Scope) -> dict[str, Any]:
        url = f"{self.endpoint}{path}?{urllib.parse.urlencode(params)}"
        request = credential_request(url, headers={"Accept": "application/json"}, credentials=self.headers)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._open(request, timeout=self.timeout) as response:
                    body = json.loads(response.read().decode("utf-8"))
                break
            except urllib.error.HTTPError as error:
                detail: Any = _error_detail(error)
                if error.code in (400, 422):  # a bad query: asking again gives the same answer
                    raise MetricSourceError(
                        f"Prometheus refused query {promql!r} for {scope.server_group}: {detail}"
                    ) from None
                problem = f"HTTP {error.code}: {detail}"
            except (urllib.error.URLError, OSError, ValueError) as error:
                problem = f"{type(error).__name__}: {redact_text(str(getattr(error, 'reason', error)))}"
            if attempt > self.retries:
                raise MetricSourceError(
                    f"cannot read query {promql!r} for {scope.server_group} from {self._shown} "
                    f"({attempt} attempt{'' if attempt == 1 else 's'}): {problem}"
                )
            time.sleep(min(2.0**attempt, 10.0))
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else body
            raise MetricSourceError(f"Prometheus answered query {promql!r} with an error: {detail}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise MetricSourceError(f"Prometheus answered query {promql!r} without data: {body!r}")
        return data


def _unix(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read().decode("utf-8", "replace"))
    except (ValueError, OSError):
        return str(error.reason)
    if isinstance(body, dict) and body.get("error"):
        return f"{body.get('errorType') or 'error'}: {body['error']}"
    return str(error.reason)


# --------------------------------------------------------------------------- choosing a source


def metric_source(spec: Mapping[str, Any], provider: Callable[[], CloudProvider]) -> MetricSource:
    """The source a stage's ``metricSource`` (a dict with the spec's keys) names.

    Its ``type`` picks the class from the registry (entry point group ``gennaker.metric_sources``,
    :mod:`gennaker.cloud.registry`), which builds itself (``from_spec``). ``provider`` builds
    the stage account's provider (only a source that reads through it calls it).
    """
    from gennaker.cloud import registry

    kind = str(spec.get("type") or "local")
    try:
        source: type[MetricSource] = registry.metric_source_class(kind)
    except registry.MetricSourceUnavailable as error:
        raise MetricSourceError(error.message) from None
    return source.from_spec(spec, provider)


def _seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float):
        return float(value)
    from gennaker.durations import parse_duration

    return parse_duration(value).total_seconds()


def step_of(spec: Mapping[str, Any], source: MetricSource) -> timedelta:
    """The sample spacing of a ``metricSource``: its ``step``, else the source's default."""
    value = spec.get("step")
    if value is None:
        return source.default_step
    return timedelta(seconds=_seconds(value, source.default_step.total_seconds()))


# --------------------------------------------------------------------------- Kayenta canary configs


def kayenta_config(
    metrics: Sequence[Mapping[str, Any]],
    *,
    group_weights: Mapping[str, float] | None = None,
    name: str = "",
    source: str = "local",
) -> dict[str, Any]:
    """A Kayenta canary config from a spec's ``metrics`` (each a dict with the spec's camelCase keys).

    Unset effect-size thresholds are left out, so the judge applies Kayenta's defaults.
    """
    out = []
    for metric in metrics:
        effect = {k: v for k, v in dict(metric.get("effectSize") or {}).items() if v is not None}
        outliers = dict(metric.get("outliers") or {})
        query = str(metric["query"])
        if source == "prometheus":
            query_config: dict[str, Any] = {
                "type": "prometheus",
                "serviceType": "prometheus",
                "customInlineTemplate": _PROMQL_PREFIX + query,
            }
        else:
            query_config = {"type": source, "serviceType": source, "metricName": query}
        out.append(
            {
                "name": str(metric["name"]),
                "query": query_config,
                "groups": [str(metric.get("group") or "default")],
                "analysisConfigurations": {
                    "canary": {
                        "direction": metric.get("direction", "either"),
                        "critical": bool(metric.get("critical", False)),
                        "mustHaveData": bool(metric.get("mustHaveData", False)),
                        "muted": bool(metric.get("muted", False)),
                        "nanStrategy": metric.get("nanStrategy", "remove"),
                        "outliers": {
                            "strategy": outliers.get("strategy", "keep"),
                            "outlierFactor": outliers.get("factor", 3.0),
                        },
                        "effectSize": effect,
                    }
                },
                "scopeName": "default",
            }
        )
    return {
        "name": name,
        "judge": {"name": "NetflixACAJudge-v1.0", "judgeConfigurations": {}},
        "metrics": out,
        "classifier": {"groupWeights": dict(group_weights or {})},
    }


def queries_from_kayenta(config: Mapping[str, Any]) -> dict[str, str]:
    """Metric name -> query of a Kayenta canary config.

    The query is ``query.customInlineTemplate`` (without its ``PromQL:`` prefix), else
    ``query.metricName``, else ``query`` itself when it is text. Raises ``ValueError``
    naming the metric that has none.
    """
    metrics = config.get("metrics")
    if not isinstance(metrics, Sequence) or isinstance(metrics, str) or not metrics:
        raise ValueError("the canary config has no metrics")
    out: dict[str, str] = {}
    for i, metric in enumerate(metrics):
        if not isinstance(metric, Mapping) or not metric.get("name"):
            raise ValueError(f"metrics[{i}] has no name")
        name = str(metric["name"])
        query = metric.get("query")
        text: Any = None
        if isinstance(query, str):
            text = query
        elif isinstance(query, Mapping):
            inline = query.get("customInlineTemplate")
            if isinstance(inline, str) and inline.strip():
                text = inline.strip()
                if text.startswith(_PROMQL_PREFIX):
                    text = text[len(_PROMQL_PREFIX) :].strip()
            elif query.get("metricName"):
                text = query["metricName"]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"metric {name!r} has no query gennaker can run (a customInlineTemplate 'PromQL:...' or a metricName)"
            )
        out[name] = text.strip()
    return out
