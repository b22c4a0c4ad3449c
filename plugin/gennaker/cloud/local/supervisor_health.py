"""Health checks of local instances: the settings a server group's ``health_check`` gives, and one probe.

``group.health_check`` is the spec's HealthCheck as a dict (camelCase or snake_case keys): ``type`` http
(default) | tcp | none; ``path`` (``/health``); ``interval`` (2 s); ``timeout`` (2 s); ``healthyThreshold`` (1);
``gracePeriod`` (0); durations as the spec writes them (``2s``, ``PT2S``, numbers of seconds). ``port`` is
ignored: every local instance has its own. One probe is :func:`instance_health`: ``GET
http://127.0.0.1:<port><path>``, 2xx and 3xx pass; reasons in plain words ("connection refused on
127.0.0.1:41234", "HTTP 503 on /health", "no answer within 2s on 127.0.0.1:41234").
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

from gennaker.cloud.local.processes import LOCALHOST
from gennaker.durations import format_duration, parse_duration
from gennaker.errors import InvalidRequest


@dataclass(frozen=True)
class HealthCheckSettings:
    """The spec's HealthCheck, read from a server group's ``health_check`` dict (times in seconds)."""

    type: str = "http"
    path: str = "/health"
    interval: float = 2.0
    timeout: float = 2.0
    healthy_threshold: int = 1
    grace_period: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> HealthCheckSettings:
        """Read camelCase or snake_case keys; raises :class:`InvalidRequest` on bad values."""
        data = dict(data or {})

        def pick(*keys: str) -> Any:
            for key in keys:
                if data.get(key) is not None:
                    return data[key]
            return None

        def seconds(default: float, *keys: str) -> float:
            value = pick(*keys)
            if value is None:
                return default
            try:
                return parse_duration(value).total_seconds()
            except ValueError as error:
                raise InvalidRequest(f"health check {keys[0]}: {error}") from error

        kind = str(pick("type") or "http").lower()
        if kind not in ("http", "tcp", "none"):
            raise InvalidRequest(f"health check type {kind!r} is not http, tcp or none")
        path = str(pick("path") or "/health")
        threshold = pick("healthyThreshold", "healthy_threshold")
        try:
            threshold = 1 if threshold is None else int(threshold)
        except (TypeError, ValueError) as error:
            raise InvalidRequest(f"health check healthyThreshold {threshold!r} is not a number") from error
        return cls(
            type=kind,
            path=path if path.startswith("/") else f"/{path}",
            interval=seconds(2.0, "interval"),
            timeout=max(seconds(2.0, "timeout"), 0.01),
            healthy_threshold=max(threshold, 1),
            grace_period=seconds(0.0, "gracePeriod", "grace_period"),
        )


class Probe(NamedTuple):
    """One health check: did it pass, and what happened, in plain words."""

    ok: bool
    reason: str


def instance_health(
    port: int | None,
    health_check: HealthCheckSettings | Mapping[str, Any] | None = None,
    *,
    host: str = LOCALHOST,
) -> Probe:
    """Check one instance once: HTTP GET of the health path (2xx/3xx pass), a TCP connect, or nothing (``none``)."""
    settings = (
        health_check if isinstance(health_check, HealthCheckSettings) else HealthCheckSettings.from_dict(health_check)
    )
    if settings.type == "none":
        return Probe(True, "no health check")
    if port is None:
        return Probe(False, "no port")
    where = f"{host}:{port}"
    if settings.type == "tcp":
        try:
            with socket.create_connection((host, port), timeout=settings.timeout):
                return Probe(True, f"TCP connect to {where}")
        except OSError as error:
            return Probe(False, _network_reason(error, where, settings.timeout))
    conn = http.client.HTTPConnection(host, port, timeout=settings.timeout)
    try:
        conn.request("GET", settings.path, headers={"User-Agent": "gennaker-supervisor", "Connection": "close"})
        response = conn.getresponse()
        response.read(65536)
        status = response.status
    except http.client.HTTPException as error:
        return Probe(False, f"no valid HTTP answer on {settings.path} at {where} ({type(error).__name__})")
    except OSError as error:
        return Probe(False, _network_reason(error, where, settings.timeout))
    finally:
        conn.close()
    if 200 <= status < 400:
        return Probe(True, f"HTTP {status} on {settings.path}")
    return Probe(False, f"HTTP {status} on {settings.path}")


def _network_reason(error: OSError, where: str, timeout: float) -> str:
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused on {where}"
    if isinstance(error, TimeoutError | socket.timeout):
        return f"no answer within {seconds_text(timeout)} on {where}"
    if isinstance(error, ConnectionResetError):
        return f"connection reset on {where}"
    return f"{error.strerror or error} on {where}"


def seconds_text(value: float) -> str:
    """Seconds as the spec writes them (``2s``, ``1m30s``)."""
    return format_duration(timedelta(seconds=value))


__all__ = ["HealthCheckSettings", "Probe", "instance_health", "seconds_text"]
