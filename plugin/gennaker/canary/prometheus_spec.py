"""A ``prometheus`` metricSource of a spec -> a :class:`PrometheusMetricSource` (its endpoint, or a connection's).

A connection (HTTP) gives the URL (``host`` with its scheme, or ``schema`` + ``host`` + ``port``)
and the credentials (``login``/``password`` as basic auth, extra ``headers``); they are sent to
the connection's own host only, so an ``endpoint`` on another host is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gennaker.canary.sources import MetricSourceError, PrometheusMetricSource
from gennaker.canary.sources import _seconds as seconds_of
from gennaker.redact import redact_url
from gennaker.safehttp import origin


@dataclass
class _ConnectionParts:
    endpoint: str
    headers: dict[str, str] = field(default_factory=dict)


def _from_connection(conn_id: str) -> _ConnectionParts:
    """An Airflow connection's URL and credentials (host with scheme, or schema + host + port; login/password)."""
    import base64

    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as error:
        raise MetricSourceError(f"cannot read Airflow connection {conn_id!r} for Prometheus: {error}") from error
    host = (conn.host or "").rstrip("/")
    if not host:
        raise MetricSourceError(f"Airflow connection {conn_id!r} has no host (the Prometheus URL)")
    if "://" not in host:
        scheme = conn.schema or "http"
        host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    headers: dict[str, str] = {}
    if conn.login:
        token = base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    extra = conn.extra_dejson.get("headers") if conn.extra else None
    if isinstance(extra, Mapping):
        headers.update({str(k): str(v) for k, v in extra.items()})
    return _ConnectionParts(host, headers)


def prometheus_source(spec: Mapping[str, Any]) -> PrometheusMetricSource:
    """A ``prometheus`` metricSource: its endpoint, or its Airflow connection's (credentials to that host only)."""
    timeout = seconds_of(spec.get("timeout"), 30.0)
    if spec.get("connection"):
        parts = _from_connection(str(spec["connection"]))
        endpoint = str(spec.get("endpoint") or parts.endpoint)
        if origin(endpoint) != origin(parts.endpoint):
            # The connection's credentials belong to its host: never send them to another one.
            raise MetricSourceError(
                f"metric source endpoint {redact_url(endpoint)} is not on the host of Airflow connection "
                f"{spec['connection']!r} ({redact_url(parts.endpoint)}), and a connection's credentials are sent "
                f"to its own host only: drop 'endpoint' (or give its path on the connection's host), or use a "
                f"connection for that host"
            )
        return PrometheusMetricSource(endpoint, headers=parts.headers, timeout=timeout)
    if not spec.get("endpoint"):
        raise MetricSourceError("a prometheus metric source needs an endpoint (or an Airflow connection)")
    return PrometheusMetricSource(str(spec["endpoint"]), timeout=timeout)
