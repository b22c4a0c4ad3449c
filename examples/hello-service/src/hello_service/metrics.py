"""The instance's metrics in the Prometheus text format (version 0.0.4), without a client library.

==============================  =========  ==================================================
metric                          type       labels
==============================  =========  ==================================================
requests_total                  counter    path, code: every answered request
errors_total                    counter    path: answers with a 5xx status
request_duration_seconds        histogram  path: time from request line to response sent
process_start_time_seconds      gauge      when the process started (Unix time)
build_info                      gauge      version (always 1)
behaviour_latency_seconds       gauge      the release's added latency
behaviour_error_rate            gauge      the release's error rate
==============================  =========  ==================================================

``path`` is one of the service's routes, or ``other`` (so a scanner cannot blow up the
number of series).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left

ROUTES = ("/", "/version", "/health", "/metrics")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def route_label(path: str) -> str:
    """The ``path`` label for a request path (query string ignored)."""
    path = path.split("?", 1)[0]
    return path if path in ROUTES else "other"


class Metrics:
    """Thread-safe counters and a latency histogram, rendered by :meth:`render`."""

    def __init__(self, *, version: str, started: float, latency_ms: float = 0.0, error_rate: float = 0.0) -> None:
        self.version = version
        self.started = started
        self.latency_ms = latency_ms
        self.error_rate = error_rate
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        # The routes that can fail start at 0, so rate() and ratios work from the first scrape.
        self._errors: dict[str, int] = {"/": 0, "/version": 0}
        self._buckets: dict[str, list[int]] = {}
        self._sum: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def observe(self, path: str, code: int, seconds: float) -> None:
        """Count one answered request."""
        label = route_label(path)
        with self._lock:
            key = (label, str(code))
            self._requests[key] = self._requests.get(key, 0) + 1
            if code >= 500:
                self._errors[label] = self._errors.get(label, 0) + 1
            buckets = self._buckets.setdefault(label, [0] * len(BUCKETS))
            index = bisect_left(BUCKETS, seconds)  # the first bucket with le >= seconds
            if index < len(BUCKETS):
                buckets[index] += 1
            self._sum[label] = self._sum.get(label, 0.0) + seconds
            self._count[label] = self._count.get(label, 0) + 1

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format."""
        with self._lock:
            requests = dict(self._requests)
            errors = dict(self._errors)
            buckets = {label: list(counts) for label, counts in self._buckets.items()}
            sums, counts = dict(self._sum), dict(self._count)
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        family("requests_total", "counter", "HTTP requests answered, by route and status code.")
        for (path, code), value in sorted(requests.items()):
            lines.append(f"requests_total{_labels(path=path, code=code)} {value}")
        family("errors_total", "counter", "HTTP requests answered with a 5xx status, by route.")
        for path, value in sorted(errors.items()):
            lines.append(f"errors_total{_labels(path=path)} {value}")
        family("request_duration_seconds", "histogram", "Time to answer a request, by route.")
        for path in sorted(buckets):
            cumulative = 0
            for index, bound in enumerate(BUCKETS):
                cumulative += buckets[path][index]
                lines.append(f"request_duration_seconds_bucket{_labels(path=path, le=_number(bound))} {cumulative}")
            lines.append(f"request_duration_seconds_bucket{_labels(path=path, le='+Inf')} {counts[path]}")
            lines.append(f"request_duration_seconds_sum{_labels(path=path)} {_number(sums[path])}")
            lines.append(f"request_duration_seconds_count{_labels(path=path)} {counts[path]}")
        family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds.")
        lines.append(f"process_start_time_seconds {_number(self.started)}")
        family("build_info", "gauge", "The running release (always 1).")
        lines.append(f"build_info{_labels(version=self.version)} 1")
        family("behaviour_latency_seconds", "gauge", "Latency the release adds to / and /version.")
        lines.append(f"behaviour_latency_seconds {_number(self.latency_ms / 1000)}")
        family("behaviour_error_rate", "gauge", "Fraction of requests to / and /version the release fails.")
        lines.append(f"behaviour_error_rate {_number(self.error_rate)}")
        return "\n".join(lines) + "\n"


def _labels(**labels: str) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
