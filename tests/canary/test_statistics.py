"""Unit tests the reference cases do not cover: the rank statistic, zeroin, classifier inputs, import cost."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from gennaker.canary.classifier import Direction, Label, MannWhitneyClassifier, MeanInequalityClassifier
from gennaker.canary.mannwhitney import MannWhitneyError, WilcoxonShift, mann_whitney, zeroin
from gennaker.canary.preprocess import NanStrategy, OutlierStrategy, iqr_outlier_mask, preprocess
from gennaker.canary.stats import cles, cohen_d, mean_ratio, percentile, summary_stats


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    sorted_values = values[order]
    start = 0
    while start < values.size:
        stop = start
        while stop + 1 < values.size and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def _wdiff_by_ranking(x: np.ndarray, y: np.ndarray, d: float, zq: float) -> float:
    """R's wdiff written out literally: rank the pooled sample, count the ties."""
    pooled = np.concatenate([x - d, y])
    ranks = _average_ranks(pooled)
    nx, ny = float(x.size), float(y.size)
    dz = ranks[: x.size].sum() - nx * (nx + 1) / 2 - nx * ny / 2
    _, ties = np.unique(pooled, return_counts=True)
    ties = ties.astype(float)
    sigma = math.sqrt((nx * ny / 12) * ((nx + ny + 1) - (ties**3 - ties).sum() / ((nx + ny) * (nx + ny - 1))))
    correction = math.copysign(0.5, dz) if dz != 0 else 0.0
    return (dz - correction) / sigma - zq


@pytest.mark.parametrize("seed", range(5))
def test_rank_statistic_equals_ranking_the_pooled_sample(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Rounded values: many ties within and across the samples.
    x = np.round(rng.normal(3.0, 2.0, 40 + seed), 0)
    y = np.round(rng.normal(2.5, 2.0, 33), 0)
    wdiff = WilcoxonShift(x, y)
    for d in (-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 7.0):
        for zq in (0.0, 1.959963984540054):
            assert wdiff(d, zq) == pytest.approx(_wdiff_by_ranking(x, y, d, zq), abs=1e-12)


def test_zeroin_finds_a_smooth_root() -> None:
    root = zeroin(lambda v: v**3 - 2 * v - 5, 2.0, 3.0, -1.0, 16.0, tol=1e-10)
    assert root == pytest.approx(2.0945514815423265, abs=1e-9)
    assert zeroin(lambda v: v - 1.0, 1.0, 2.0, 0.0, 1.0) == 1.0  # a root at an end point
    calls = []

    def counting(v: float) -> float:
        calls.append(v)
        return math.copysign(1.0, v - 0.3)  # a step: only bisection-like progress

    zeroin(counting, 0.0, 1.0, -1.0, 1.0, tol=1e-4, max_iterations=5)
    assert len(calls) == 6  # max_iterations + 1 steps, as R


def test_estimate_is_close_to_hodges_lehmann_and_p_value_matches_r() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(10.0, 2.0, 60)
    y = rng.normal(9.0, 2.0, 50)
    result = mann_whitney(x, y, 0.95)
    hodges_lehmann = float(np.median(np.subtract.outer(x, y)))
    assert result.estimate == pytest.approx(hodges_lehmann, abs=0.05)
    assert result.ci_lower < result.estimate < result.ci_upper
    from scipy.stats import mannwhitneyu

    reference = mannwhitneyu(x, y, use_continuity=True, alternative="two-sided", method="asymptotic")
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)


def test_mann_whitney_input_errors() -> None:
    with pytest.raises(MannWhitneyError, match="at least one value"):
        mann_whitney([], [1.0, 2.0])
    with pytest.raises(MannWhitneyError, match="NaN or infinite"):
        mann_whitney([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence level"):
        mann_whitney([1.0, 2.0], [1.0, 3.0], conf_level=1.0)
    with pytest.raises(MannWhitneyError, match="all observations are tied"):
        mann_whitney([2.0, 2.0], [2.0, 2.0])


def test_classifier_parameter_validation() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        MannWhitneyClassifier(tolerance=-0.1)
    with pytest.raises(ValueError, match="confidence level"):
        MannWhitneyClassifier(conf_level=0.0)
    with pytest.raises(ValueError, match="pair"):
        MannWhitneyClassifier(effect_size_thresholds=(1.0,))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MannWhitneyClassifier(effect_size_measure="cohen")
    with pytest.raises(ValueError):
        MannWhitneyClassifier().classify([1.0], [2.0], direction="up")


def test_classifier_reasons_and_critical_low() -> None:
    classifier = MannWhitneyClassifier(tolerance=0.1)
    control = [20.0, 22.0, 21.0, 25.0, 30.0]
    experiment = [1.0, 2.2, 1.1, 2.5, 3.0]
    low = classifier.classify(control, experiment, metric_name="rps")
    assert (low.label, low.reason, low.critical) == (Label.LOW, "rps was classified as Low", False)
    critical = classifier.classify(control, experiment, is_critical=True, metric_name="rps")
    assert (critical.label, critical.critical) == (Label.LOW, True)
    assert critical.reason == "The metric rps was classified as Low (Critical)"
    assert classifier.classify(control, experiment, Direction.INCREASE).label is Label.PASS
    identical = classifier.classify([1.0, 2.0], [2.0, 1.0])
    assert identical.reason == "The Canary and Baseline data are identical"


def test_degenerate_jitter_is_seeded() -> None:
    first = MannWhitneyClassifier().classify([1.0] * 5, [10.0] * 5)
    again = MannWhitneyClassifier().classify([1.0] * 5, [10.0] * 5)
    other_seed = MannWhitneyClassifier(jitter_seed=42).classify([1.0] * 5, [10.0] * 5)
    assert first == again
    assert first.test != other_seed.test
    assert first.label is other_seed.label is Label.HIGH
    # Negative values get noise of scale |v|. (Their mean ratio, 10, would block Low: use CLES.)
    negative = MannWhitneyClassifier(effect_size_measure="cles").classify([-1.0] * 5, [-10.0] * 5)
    assert (negative.label, negative.effect_size) == (Label.LOW, 0.0)


def test_mean_inequality_classifier_directions_and_nodata() -> None:
    classifier = MeanInequalityClassifier()
    assert classifier.classify([1.0], [2.0], Direction.DECREASE).label is Label.PASS
    assert classifier.classify([], [2.0], is_data_required=True).label is Label.NODATA_FAIL_METRIC
    assert classifier.classify([], [2.0], nan_strategy=NanStrategy.REPLACE).label is Label.PASS


def test_statistics_edge_cases() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert math.isnan(mean_ratio([], [1.0]))
    assert math.isnan(mean_ratio([1.0], [0.0]))
    assert math.isnan(cohen_d([1.0], [1.0]))
    assert math.isnan(cles([], [1.0]))
    assert cles([1.0, 2.0], [2.0, 3.0]) == pytest.approx(0.875)  # 1 tie (1/2) + 3 wins out of 4
    assert summary_stats([2.0, 4.0]).to_dict() == {
        "count": 2,
        "mean": 3.0,
        "std": math.sqrt(2.0),
        "min": 2.0,
        "max": 4.0,
    }


def test_reduced_sensitivity_keeps_the_outer_percent() -> None:
    values = np.concatenate([np.full(98, 10.0), [10.5, 11.0]])
    # Tukey fences collapse to [10, 10] (IQR = 0), so both upper points are outliers...
    assert iqr_outlier_mask(values, 3.0).sum() == 2
    # ...but P99 widens the upper fence: only the point above the 99th percentile goes.
    assert iqr_outlier_mask(values, 3.0, reduce_sensitivity=True).tolist()[-2:] == [False, True]
    kept = preprocess(values, NanStrategy.REMOVE, OutlierStrategy.REMOVE, 3.0)
    assert kept.size == 99


def test_importing_the_package_is_cheap() -> None:
    code = (
        "import sys, gennaker.canary, gennaker.canary.judge, gennaker.canary.intervals;"
        "gennaker.canary.ScoreThresholds; gennaker.canary.plan_intervals;"
        "assert 'numpy' not in sys.modules and 'scipy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
