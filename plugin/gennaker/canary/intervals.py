"""Interval planning and the final verdict over intervals (Orca's ``kayentaCanary`` stage).

Planning (``RunCanaryIntervalsStage``): the analysis ``lifetime`` (the time from the
start to ``end`` when an end is given - a retrospective analysis - else the configured
lifetime) is split into ``floor(lifetime / interval)`` judgements; an unset, zero or
too long interval means one judgement over the whole lifetime. Judgement ``i`` covers

* real time (no end): ``[start + warmup, start + warmup + i * interval]``, each judgement
  after a wait of one interval (and the warm-up wait before the first);
* retrospective (end given): ``[start, start + i * interval]``, no waits (Orca still adds
  the warm-up wait, but it does not shift the windows);

so windows grow from the start, unless ``lookback > 0``, which makes them slide:
``[end_i - lookback, end_i]``. The control (baseline) window is the experiment window
shifted back by ``baseline offset``. Everything is in whole minutes, as in Orca.

Verdict (``MonitorKayentaCanaryTask`` + ``AggregateCanaryResultsTask``): a judgement
scoring ``<= marginal`` stops the stage at once (later intervals never run); otherwise
only the **last** score decides, and it must be ``> marginal`` and ``>= pass``. Earlier
scores between marginal and pass are tolerated. Scores are never averaged. Unset
thresholds are not checked ("No score thresholds were specified.").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gennaker.canary.scorer import ScoreThresholds

__all__ = [
    "ORCA_DEFAULT_THRESHOLDS",
    "AnalysisWindow",
    "CanaryVerdict",
    "IntervalPlan",
    "aggregate_interval_scores",
    "interval_continues",
    "plan_intervals",
]

#: Orca's ``scoreThresholds`` when a stage omits them entirely.
ORCA_DEFAULT_THRESHOLDS = ScoreThresholds(marginal=50.0, pass_score=75.0)

_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class AnalysisWindow:
    """The data windows of judgement ``index`` (1-based, Orca's ``Run Canary #index``).

    ``wait_before`` is how long the stage waits before running this judgement (one
    interval in real time, nothing retrospectively; the warm-up wait is the plan's).
    """

    index: int
    control_start: datetime
    control_end: datetime
    experiment_start: datetime
    experiment_end: datetime
    wait_before: timedelta


@dataclass(frozen=True)
class IntervalPlan:
    """The judgements of one canary stage, in order."""

    lifetime: timedelta
    interval: timedelta
    warmup: timedelta
    lookback: timedelta
    baseline_offset: timedelta
    realtime: bool
    windows: tuple[AnalysisWindow, ...]


def _minutes(value: int | None, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number of minutes, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def plan_intervals(
    start: datetime,
    *,
    end: datetime | None = None,
    lifetime: timedelta | None = None,
    interval_mins: int | None = None,
    begin_after_mins: int | None = None,
    lookback_mins: int | None = None,
    baseline_offset_mins: int | None = None,
) -> IntervalPlan:
    """Orca's window planning. ``start`` is the scope's start time, or now for a real-time analysis.

    ``end`` given makes the analysis retrospective and defines the lifetime; otherwise
    ``lifetime`` is required. ``None`` and 0 mean unset for the minute parameters
    (``canaryAnalysisIntervalMins``, ``beginCanaryAnalysisAfterMins``, ``lookbackMins``,
    ``baselineAnalysisOffsetInMins``). Durations are truncated to whole minutes.
    """
    if end is not None:
        if end <= start:
            raise ValueError(f"the end time ({end.isoformat()}) must be after the start time ({start.isoformat()})")
        lifetime_mins = (end - start) // _MINUTE
    elif lifetime is not None:
        lifetime_mins = lifetime // _MINUTE
    else:
        raise ValueError("a canary analysis needs a lifetime or an end time")
    if lifetime_mins <= 0:
        raise ValueError("the canary lifetime must be at least one minute")
    interval = _minutes(interval_mins, "the analysis interval")
    warmup = _minutes(begin_after_mins, "the warm-up (beginCanaryAnalysisAfterMins)")
    lookback = _minutes(lookback_mins, "the lookback")
    offset = _minutes(baseline_offset_mins, "the baseline offset")
    if interval == 0 or interval > lifetime_mins:
        interval = lifetime_mins

    realtime = end is None
    first = start + warmup * _MINUTE if realtime else start
    windows = []
    for index in range(1, lifetime_mins // interval + 1):
        window_end = first + index * interval * _MINUTE
        window_start = window_end - lookback * _MINUTE if lookback > 0 else first
        windows.append(
            AnalysisWindow(
                index=index,
                control_start=window_start - offset * _MINUTE,
                control_end=window_end - offset * _MINUTE,
                experiment_start=window_start,
                experiment_end=window_end,
                wait_before=interval * _MINUTE if realtime else timedelta(0),
            )
        )
    return IntervalPlan(
        lifetime=lifetime_mins * _MINUTE,
        interval=interval * _MINUTE,
        warmup=warmup * _MINUTE,
        lookback=lookback * _MINUTE,
        baseline_offset=offset * _MINUTE,
        realtime=realtime,
        windows=tuple(windows),
    )


def interval_continues(score: float, thresholds: ScoreThresholds) -> bool:
    """Whether the stage goes on after a judgement scoring ``score``: it must be above marginal (if set)."""
    return thresholds.marginal is None or score > thresholds.marginal


@dataclass(frozen=True)
class CanaryVerdict:
    """The stage's outcome over its interval scores.

    ``scores`` are the scores that counted (up to and including the one that stopped
    the stage); ``stopped_at`` is the 1-based index of a judgement before the last that
    scored at or below marginal, else None.
    """

    passed: bool
    message: str
    final_score: float
    scores: tuple[float, ...]
    stopped_at: int | None = None

    @property
    def status(self) -> str:
        """Orca's stage status: ``SUCCEEDED`` or ``TERMINAL``."""
        return "SUCCEEDED" if self.passed else "TERMINAL"


def _format(score: float) -> str:
    return repr(float(score))


def aggregate_interval_scores(scores: Sequence[float], thresholds: ScoreThresholds) -> CanaryVerdict:
    """The final verdict over the interval scores, in interval order (see the module docstring).

    A score at or below marginal before the last stops the stage there (the later
    scores are ignored, as those judgements would never have run).
    """
    if not scores:
        raise ValueError("a canary verdict needs at least one interval score")
    values = tuple(float(score) for score in scores)
    if any(math.isnan(score) for score in values):
        raise ValueError(f"interval scores must be numbers, got {list(scores)!r}")
    for index, score in enumerate(values[:-1], start=1):
        if not interval_continues(score, thresholds):
            message = (
                f"Canary score {_format(score)} of interval {index} of {len(values)} "
                "is not above the marginal score threshold."
            )
            return CanaryVerdict(False, message, score, values[:index], stopped_at=index)
    final = values[-1]
    if thresholds.marginal is None and thresholds.pass_score is None:
        return CanaryVerdict(True, "No score thresholds were specified.", final, values)
    if thresholds.marginal is not None and final <= thresholds.marginal:
        message = f"Final canary score {_format(final)} is not above the marginal score threshold."
        return CanaryVerdict(False, message, final, values)
    if thresholds.pass_score is None:
        return CanaryVerdict(True, "No pass score threshold was specified.", final, values)
    if final < thresholds.pass_score:
        message = f"Final canary score {_format(final)} is below the pass score threshold."
        return CanaryVerdict(False, message, final, values)
    message = f"Final canary score {_format(final)} met or exceeded the pass score threshold."
    return CanaryVerdict(True, message, final, values)
