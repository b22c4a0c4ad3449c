"""Scoring: Kayenta's ``ScoringHelper`` -> ``WeightedSumScorer`` -> ``ThresholdScoreClassifier``.

1. Muted results are dropped (they stay in the judge's report).
2. Each group scores ``100 * #Pass / (#Pass + #High + #Low + #NodataFailMetric)``; a
   metric in several groups counts in each. ``Nodata`` and ``Error`` are not counted. A
   group with nothing to count is "no data": reported as 0.0 but worth 100.
3. The summary is ``sum(group score * weight / 100)``. A group without a configured
   weight gets an equal share of ``100 - sum(configured weights)``; weights are not
   renormalised, so a configured group with no metrics simply loses its share.
4. Automatic zero: any critical result that is not ``Pass`` ("Canary Failed: <reason>"),
   or 50 % or more of the results ``Nodata``.
5. The summary is rounded HALF_UP to 2 decimal places (commons-math ``Precision.round``).

Thresholds (``ScoreThresholds``) turn a score into ``Pass`` / ``Marginal`` / ``Fail``.
**Boundary choice**: Kayenta's judge calls a score equal to ``marginal`` "Marginal",
while Orca and Kayenta's standalone API fail a stage whose score is ``<= marginal``. We
use one rule everywhere: a score must be *strictly above* ``marginal`` not to fail, and
``>= pass`` to pass. So ``Fail`` iff ``score <= marginal``, ``Pass`` iff ``score >= pass``
(and above marginal), ``Marginal`` in between. See docs/canary.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from typing import Any, Protocol

from gennaker.canary.classifier import Label

__all__ = [
    "NODATA_THRESHOLD_PERCENT",
    "GroupScore",
    "ScorableResult",
    "ScoreClassification",
    "ScoreResult",
    "ScoreThresholds",
    "ScoredMetric",
    "classify_score",
    "round_half_up",
    "score_results",
]

#: ``NODATA_THRESHOLD``: this share (in %) of Nodata results or more zeroes the score.
NODATA_THRESHOLD_PERCENT = 50.0
_NODATA_REASON = "Canary Failed: 50% or more metrics returned NODATA"


class ScoreClassification(str, Enum):
    """The judgement of a whole canary run."""

    PASS = "Pass"
    MARGINAL = "Marginal"
    FAIL = "Fail"


@dataclass(frozen=True)
class ScoreThresholds:
    """``scoreThresholds {marginal, pass}`` (0-100). Either may be unset (None) for interval aggregation.

    ``pass`` must not be below ``marginal``.
    """

    marginal: float | None = None
    pass_score: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("marginal", self.marginal), ("pass", self.pass_score)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise TypeError(f"the {name} score threshold must be a number, got {value!r}")
            if value is not None and math.isnan(value):
                raise ValueError(f"the {name} score threshold must be a number, got NaN")
        if self.marginal is not None and self.pass_score is not None and self.pass_score < self.marginal:
            raise ValueError(
                f"the pass score threshold ({self.pass_score}) must not be below the marginal one ({self.marginal})"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> ScoreThresholds:
        """From Kayenta's / Orca's ``{"marginal": ..., "pass": ...}`` (missing keys are unset)."""
        data = data or {}
        unknown = set(data) - {"marginal", "pass"}
        if unknown:
            raise ValueError(f"unknown score threshold keys: {', '.join(sorted(unknown))} (expected marginal, pass)")
        return cls(marginal=data.get("marginal"), pass_score=data.get("pass"))

    def to_dict(self) -> dict[str, float | None]:
        return {"marginal": self.marginal, "pass": self.pass_score}


def classify_score(score: float, thresholds: ScoreThresholds) -> ScoreClassification:
    """``Fail`` when ``score <= marginal``, else ``Pass`` when ``score >= pass``, else ``Marginal``.

    Kayenta's ``ThresholdScoreClassifier`` says ``Marginal`` for ``score == marginal``; we
    follow Orca, which fails the stage there (see the module docstring). Both thresholds
    are required here, as Kayenta requires them of a judge execution.
    """
    if thresholds.marginal is None or thresholds.pass_score is None:
        raise ValueError("classifying a canary score needs both the marginal and the pass threshold")
    if score <= thresholds.marginal:
        return ScoreClassification.FAIL
    if score >= thresholds.pass_score:
        return ScoreClassification.PASS
    return ScoreClassification.MARGINAL


def round_half_up(value: float, places: int = 2) -> float:
    """commons-math ``Precision.round(value, places)``: HALF_UP on the value's shortest decimal form."""
    if math.isnan(value) or math.isinf(value):
        return value
    quantum = Decimal(1).scaleb(-places)
    return float(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP))


class ScorableResult(Protocol):
    """What the scorer reads of a metric result."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> Label: ...

    @property
    def critical(self) -> bool: ...

    @property
    def groups(self) -> Sequence[str]: ...

    @property
    def muted(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True)
class ScoredMetric:
    """A minimal scorable result (the judge's ``MetricResult`` is one too)."""

    name: str
    label: Label
    groups: tuple[str, ...]
    critical: bool = False
    muted: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class GroupScore:
    """A group's score; ``no_data`` groups report 0.0 but count as 100 in the summary."""

    name: str
    score: float
    no_data: bool
    counts: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "score": self.score, "noData": self.no_data, "counts": dict(self.counts)}


@dataclass(frozen=True)
class ScoreResult:
    """The summary score (rounded), its unrounded value, the group scores and an override reason."""

    score: float
    raw_score: float
    group_scores: tuple[GroupScore, ...]
    reason: str | None


_COUNTED = (Label.PASS, Label.HIGH, Label.LOW, Label.NODATA_FAIL_METRIC)


def _group_scores(results: Sequence[ScorableResult]) -> list[GroupScore]:
    counts: dict[str, dict[str, int]] = {}
    for result in results:
        for group in dict.fromkeys(result.groups):
            group_counts = counts.setdefault(group, {label.value: 0 for label in Label})
            group_counts[Label(result.label).value] += 1
    scores = []
    for group in sorted(counts):
        group_counts = counts[group]
        denominator = sum(group_counts[label.value] for label in _COUNTED)
        if denominator == 0:
            scores.append(GroupScore(group, 0.0, True, group_counts))
        else:
            scores.append(GroupScore(group, 100.0 * group_counts[Label.PASS.value] / denominator, False, group_counts))
    return scores


def score_results(results: Iterable[ScorableResult], group_weights: Mapping[str, float] | None = None) -> ScoreResult:
    """Score metric results as Kayenta's ``ScoringHelper`` does (muted ones are left out)."""
    weights = dict(group_weights or {})
    for group, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or math.isnan(weight):
            raise ValueError(f"the weight of group {group!r} must be a number, got {weight!r}")
    scored = [result for result in results if not result.muted]
    group_scores = _group_scores(scored)

    unweighted = [group.name for group in group_scores if group.name not in weights]
    share = (100.0 - sum(weights.values())) / len(unweighted) if unweighted else 0.0
    raw = 0.0
    for group_score in group_scores:
        effective = 100.0 if group_score.no_data else group_score.score
        weight = weights.get(group_score.name, share)
        raw += effective * weight / 100.0

    for result in scored:
        if result.critical and Label(result.label) is not Label.PASS:
            return ScoreResult(0.0, 0.0, tuple(group_scores), f"Canary Failed: {result.reason or result.name}")
    if scored:
        nodata = sum(1 for result in scored if Label(result.label) is Label.NODATA)
        if 100.0 * nodata / len(scored) >= NODATA_THRESHOLD_PERCENT:
            return ScoreResult(0.0, 0.0, tuple(group_scores), _NODATA_REASON)
    else:
        return ScoreResult(0.0, 0.0, tuple(group_scores), "Canary Failed: no (unmuted) metric results to score")
    return ScoreResult(round_half_up(raw), raw, tuple(group_scores), None)
