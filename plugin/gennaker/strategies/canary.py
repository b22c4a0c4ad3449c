"""The canary stage's plans: its baseline and canary clusters, and the windows it judges.

Pure: the canary stage (:mod:`gennaker.operators.canary`) carries them out, and the
factory names the clusters its cleanup task sweeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

ROLES = ("baseline", "canary")


def role_detail(detail: str, role: str) -> str:
    """The detail of the baseline's or canary's cluster: ``baseline``, or ``<detail>-baseline``."""
    return f"{detail}-{role}" if detail else role


def role_clusters(application: str, stack: str, detail: str) -> list[str]:
    """The baseline and canary clusters of a live cluster (``hello-prod`` -> ``hello-prod-baseline``, ...)."""
    from gennaker.cloud.naming import cluster_name

    return [cluster_name(application, stack, role_detail(detail, role)) for role in ROLES]


@dataclass(frozen=True)
class Window:
    """The data of judgement ``index`` (1-based): the baseline's (control) and the canary's (experiment)."""

    index: int
    control_start: datetime
    control_end: datetime
    experiment_start: datetime
    experiment_end: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (ISO times), for the stage's result."""
        return {
            "index": self.index,
            "controlStart": self.control_start.isoformat(),
            "controlEnd": self.control_end.isoformat(),
            "experimentStart": self.experiment_start.isoformat(),
            "experimentEnd": self.experiment_end.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        """Back from :meth:`to_dict`."""
        return cls(
            index=int(data["index"]),
            control_start=datetime.fromisoformat(data["controlStart"]),
            control_end=datetime.fromisoformat(data["controlEnd"]),
            experiment_start=datetime.fromisoformat(data["experimentStart"]),
            experiment_end=datetime.fromisoformat(data["experimentEnd"]),
        )

    @property
    def due(self) -> datetime:
        """When both windows have ended."""
        return max(self.control_end, self.experiment_end)

    def describe(self) -> str:
        """``12:05:00-12:10:00`` (and the baseline's when it is shifted)."""
        text = f"{self.experiment_start:%H:%M:%S}-{self.experiment_end:%H:%M:%S}"
        if self.control_start != self.experiment_start:
            text += f" (baseline {self.control_start:%H:%M:%S}-{self.control_end:%H:%M:%S})"
        return text


def plan_windows(
    start: datetime,
    *,
    lifetime: timedelta,
    interval: timedelta,
    warmup: timedelta = timedelta(0),
    lookback: timedelta | None = None,
    baseline_offset: timedelta = timedelta(0),
) -> list[Window]:
    """The judgements of a real-time canary that starts at ``start``.

    The judge's :func:`gennaker.canary.plan_intervals` (Orca's ``RunCanaryIntervalsStage``)
    to the second instead of the minute: ``floor(lifetime / interval)`` judgements (an
    unset or too long interval means one); judgement ``i`` ends at ``start + warmup + i *
    interval`` and starts at ``start + warmup`` (growing) or ``lookback`` before its end
    (sliding); the baseline's window is shifted back by ``baseline_offset``. For whole
    minutes the windows are exactly ``plan_intervals``'.
    """
    if lifetime <= timedelta(0):
        raise ValueError("the canary lifetime must be positive")
    if interval <= timedelta(0) or interval > lifetime:
        interval = lifetime
    first = start + warmup
    windows = []
    for index in range(1, lifetime // interval + 1):
        end = first + index * interval
        begin = end - lookback if lookback else first
        windows.append(
            Window(
                index=index,
                control_start=begin - baseline_offset,
                control_end=end - baseline_offset,
                experiment_start=begin,
                experiment_end=end,
            )
        )
    return windows


def duration_words(seconds: float) -> str:
    """``90`` -> ``1m30s``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m" + (f"{rest}s" if rest else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h" + (f"{minutes}m" if minutes else "")


__all__ = ["ROLES", "Window", "duration_words", "plan_windows", "role_clusters", "role_detail"]
