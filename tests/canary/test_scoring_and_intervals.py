"""Scorer, thresholds, interval planning and the verdict beyond the reference cases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gennaker.canary.classifier import Label
from gennaker.canary.intervals import (
    ORCA_DEFAULT_THRESHOLDS,
    aggregate_interval_scores,
    interval_continues,
    plan_intervals,
)
from gennaker.canary.scorer import (
    ScoreClassification,
    ScoredMetric,
    ScoreThresholds,
    classify_score,
    round_half_up,
    score_results,
)

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)


def _m(label: str, *groups: str, critical: bool = False, muted: bool = False) -> ScoredMetric:
    return ScoredMetric(
        name=f"{label}-{'-'.join(groups)}", label=Label(label), groups=groups, critical=critical, muted=muted
    )


# --- scorer ----------------------------------------------------------------------------------


def test_half_up_rounding() -> None:
    assert round_half_up(2.675) == 2.68  # round() gives 2.67 (binary 2.67499...)
    assert round_half_up(0.125) == 0.13  # round() gives 0.12 (banker's rounding)
    assert round_half_up(100 / 3) == 33.33
    assert round_half_up(-1.005) == -1.01


def test_unweighted_groups_share_the_rest_and_weights_are_not_renormalised() -> None:
    results = [_m("Pass", "a"), _m("High", "b"), _m("Pass", "c"), _m("Pass", "d")]
    # a (weight 40) scores 100, b (weight 30) 0; c and d share (100 - 40 - 30) / 2 = 15 each.
    assert score_results(results, {"a": 40, "b": 30}).score == 40 + 0 + 15 + 15
    # A configured group with no metrics loses its share.
    assert score_results([_m("Pass", "a")], {"a": 60, "missing": 40}).score == 60.0
    # Weights over 100 leave the unweighted groups a negative share.
    assert score_results([_m("Pass", "a"), _m("Pass", "b")], {"a": 120}).score == 100.0


def test_metric_in_several_groups_counts_in_each() -> None:
    scored = score_results([_m("High", "a", "b"), _m("Pass", "a")], {"a": 50, "b": 50})
    assert {group.name: group.score for group in scored.group_scores} == {"a": 50.0, "b": 0.0}
    assert scored.score == 25.0


def test_error_and_muted_results_are_not_counted() -> None:
    scored = score_results([_m("Pass", "g"), _m("Error", "g"), _m("High", "g", muted=True, critical=True)])
    assert scored.score == 100.0
    assert scored.reason is None
    (group,) = scored.group_scores
    assert group.counts["Error"] == 1 and group.counts["High"] == 0


def test_no_data_group_counts_as_full_marks() -> None:
    scored = score_results([_m("Pass", "a"), _m("Pass", "a"), _m("Error", "b")], {"a": 50, "b": 50})
    assert scored.score == 100.0
    assert [(group.name, group.score, group.no_data) for group in scored.group_scores] == [
        ("a", 100.0, False),
        ("b", 0.0, True),
    ]


def test_nothing_to_score() -> None:
    scored = score_results([_m("High", "a", muted=True)])
    assert scored.score == 0.0
    assert scored.reason and "no (unmuted) metric" in scored.reason


def test_critical_override_comes_before_nodata() -> None:
    scored = score_results([_m("Nodata", "g"), _m("Low", "g", critical=True)])
    assert scored.score == 0.0
    assert scored.reason == "Canary Failed: Low-g"


# --- thresholds and the boundary choice -------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (74.99, ScoreClassification.FAIL),
        (75.0, ScoreClassification.FAIL),  # = marginal: Fail (Kayenta's judge alone: Marginal)
        (75.01, ScoreClassification.MARGINAL),
        (94.99, ScoreClassification.MARGINAL),
        (95.0, ScoreClassification.PASS),
        (100.0, ScoreClassification.PASS),
    ],
)
def test_classify_score_boundaries(score: float, expected: ScoreClassification) -> None:
    assert classify_score(score, ScoreThresholds(marginal=75, pass_score=95)) is expected


def test_pass_equal_to_marginal_fails_at_the_threshold() -> None:
    thresholds = ScoreThresholds(marginal=80, pass_score=80)
    assert classify_score(80.0, thresholds) is ScoreClassification.FAIL
    assert classify_score(80.01, thresholds) is ScoreClassification.PASS
    assert not aggregate_interval_scores([80.0], thresholds).passed


def test_judge_and_stage_agree_at_the_marginal_boundary() -> None:
    """One rule: a score at marginal fails both the judgement and the stage, at any interval."""
    thresholds = ScoreThresholds(marginal=75, pass_score=95)
    assert classify_score(75.0, thresholds) is ScoreClassification.FAIL
    assert not interval_continues(75.0, thresholds)
    last = aggregate_interval_scores([99.0, 75.0], thresholds)
    assert (last.status, last.message) == (
        "TERMINAL",
        "Final canary score 75.0 is not above the marginal score threshold.",
    )
    early = aggregate_interval_scores([75.0, 99.0], thresholds)
    assert early.status == "TERMINAL" and early.stopped_at == 1 and early.scores == (75.0,)
    assert interval_continues(75.01, thresholds)


def test_thresholds_validation() -> None:
    with pytest.raises(ValueError, match="must not be below"):
        ScoreThresholds(marginal=90, pass_score=80)
    with pytest.raises(TypeError):
        ScoreThresholds(marginal=True)
    with pytest.raises(ValueError, match="both"):
        classify_score(50.0, ScoreThresholds(pass_score=50))
    assert ScoreThresholds.from_mapping(None) == ScoreThresholds()
    assert ORCA_DEFAULT_THRESHOLDS == ScoreThresholds(marginal=50, pass_score=75)


# --- verdict over intervals -----------------------------------------------------------------


def test_last_interval_decides_and_nothing_is_averaged() -> None:
    thresholds = ScoreThresholds(marginal=50, pass_score=90)
    verdict = aggregate_interval_scores([60.0, 70.0, 95.0], thresholds)
    assert verdict.passed and verdict.final_score == 95.0 and verdict.stopped_at is None
    assert verdict.message == "Final canary score 95.0 met or exceeded the pass score threshold."
    # The average (95) would pass; the last score (85) does not.
    failed = aggregate_interval_scores([100.0, 100.0, 85.0], thresholds)
    assert failed.message == "Final canary score 85.0 is below the pass score threshold."


def test_first_score_at_or_below_marginal_stops() -> None:
    verdict = aggregate_interval_scores([80.0, 40.0, 99.0], ScoreThresholds(marginal=50, pass_score=90))
    assert not verdict.passed
    assert verdict.stopped_at == 2
    assert verdict.scores == (80.0, 40.0)
    assert verdict.message == "Canary score 40.0 of interval 2 of 3 is not above the marginal score threshold."


def test_verdict_input_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        aggregate_interval_scores([], ScoreThresholds())
    with pytest.raises(ValueError, match="must be numbers"):
        aggregate_interval_scores([float("nan")], ScoreThresholds())


# --- interval planning ----------------------------------------------------------------------


def test_realtime_plan_waits_and_baseline_offset() -> None:
    plan = plan_intervals(
        START, lifetime=timedelta(hours=3), interval_mins=60, begin_after_mins=10, baseline_offset_mins=30
    )
    assert plan.realtime and plan.warmup == 10 * MINUTE and plan.interval == 60 * MINUTE
    assert len(plan.windows) == 3
    third = plan.windows[2]
    assert (third.experiment_start, third.experiment_end) == (START + 10 * MINUTE, START + 190 * MINUTE)
    assert (third.control_start, third.control_end) == (START - 20 * MINUTE, START + 160 * MINUTE)
    assert all(window.wait_before == 60 * MINUTE for window in plan.windows)


def test_retrospective_plan_has_no_waits_and_floors_intervals() -> None:
    plan = plan_intervals(START, end=START + timedelta(minutes=100), interval_mins=30, lookback_mins=45)
    assert not plan.realtime
    assert [(w.experiment_start - START, w.experiment_end - START) for w in plan.windows] == [
        (-15 * MINUTE, 30 * MINUTE),  # the lookback reaches before the start, as in Orca
        (15 * MINUTE, 60 * MINUTE),
        (45 * MINUTE, 90 * MINUTE),
    ]
    assert all(window.wait_before == timedelta(0) for window in plan.windows)


def test_lifetime_is_truncated_to_minutes() -> None:
    plan = plan_intervals(START, lifetime=timedelta(minutes=59, seconds=59), interval_mins=30)
    assert plan.lifetime == 59 * MINUTE and len(plan.windows) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "lifetime or an end time"),
        ({"lifetime": timedelta(seconds=30)}, ValueError, "at least one minute"),
        ({"end": START}, ValueError, "must be after"),
        ({"lifetime": timedelta(hours=1), "interval_mins": -5}, ValueError, "must not be negative"),
        ({"lifetime": timedelta(hours=1), "lookback_mins": 1.5}, TypeError, "whole number of minutes"),
    ],
)
def test_plan_validation(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        plan_intervals(START, **kwargs)  # type: ignore[arg-type]
