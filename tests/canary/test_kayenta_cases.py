"""Every case of the Kayenta / Orca reference vectors in shared/kayenta-cases/, at the stated tolerance.

The case files are Kayenta's and Orca's own unit tests converted to JSON (see their
README.md). Each case runs as one test, with the id ``<file>::<case name>``. Where a case
states no tolerance, floats are compared to 1e-9 (that is, exactly up to the last few
bits of a double). None is skipped or expected to fail.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gennaker.canary.classifier import Label, MannWhitneyClassifier, MeanInequalityClassifier
from gennaker.canary.intervals import aggregate_interval_scores, plan_intervals
from gennaker.canary.judge import judge_canary
from gennaker.canary.mannwhitney import WilcoxonShift, mann_whitney, wilcoxon_diff, z_quantile, zeroin
from gennaker.canary.preprocess import (
    iqr_outlier_mask,
    ksigma_outlier_mask,
    remove_nans,
    remove_outliers,
    replace_nans,
)
from gennaker.canary.scorer import ScoredMetric, ScoreThresholds, score_results
from gennaker.canary.stats import cles, cohen_d, mean_ratio, percentile, summary_stats

# The shared, read-only reference cases sit next to the repository (../shared/kayenta-cases);
# GENNAKER_KAYENTA_CASES points elsewhere (a checkout that is not a sibling of shared/).
CASES_DIR = Path(
    os.environ.get("GENNAKER_KAYENTA_CASES") or Path(__file__).resolve().parents[2].parent / "shared" / "kayenta-cases"
)
assert CASES_DIR.is_dir(), (
    f"the Kayenta reference cases are missing: {CASES_DIR} (set GENNAKER_KAYENTA_CASES to their folder)"
)

DEFAULT_TOL = 1e-9


def _load(prefix: str) -> tuple[str, dict[str, Any]]:
    (path,) = sorted(CASES_DIR.glob(f"{prefix}_*.json"))
    return path.stem, json.loads(path.read_text())


def _num(value: Any) -> float:
    return math.nan if value == "NaN" else float(value)


def _close(actual: float, expected: Any, tol: float = DEFAULT_TOL) -> bool:
    expected_value = _num(expected)
    if math.isnan(expected_value):
        return math.isnan(actual)
    return abs(actual - expected_value) <= tol


def _params(file_stem: str, cases: list[dict[str, Any]], label: str = "") -> Iterator[Any]:
    for index, case in enumerate(cases):
        name = case.get("name") or f"{label}#{index + 1}"
        yield pytest.param(case, id=f"{file_stem}::{name}")


# --- 01-05: metric classifiers ----------------------------------------------------------

CLASSIFIER_FILES = [_load(prefix) for prefix in ("01", "02", "03", "04", "05")]
CLASSIFIER_CASES = [param for stem, data in CLASSIFIER_FILES for param in _params(stem, data["cases"])]


@pytest.mark.parametrize("case", CLASSIFIER_CASES)
def test_classifier_case(case: dict[str, Any]) -> None:
    params = case["classifierParams"]
    args = case["classifyArgs"]
    classifier: MannWhitneyClassifier | MeanInequalityClassifier
    if case["classifier"] == "MannWhitneyClassifier":
        classifier = MannWhitneyClassifier(
            tolerance=params["tolerance"],
            conf_level=params["confLevel"],
            effect_size_thresholds=tuple(params["effectSizeThresholds"]),
            critical_thresholds=tuple(params["criticalThresholds"]),
            effect_size_measure=params["effectSizeMeasure"],
        )
    else:
        assert case["classifier"] == "MeanInequalityClassifier"
        classifier = MeanInequalityClassifier()
    result = classifier.classify(
        case["input"]["control"],
        case["input"]["experiment"],
        args["direction"],
        args["nanStrategy"],
        args["isCriticalMetric"],
        args["isDataRequired"],
        metric_name="test-metric",
    )
    expected = case["expected"]
    assert set(expected) <= {"classification", "critical", "deviation", "reasonNonEmpty"}
    if "classification" in expected:
        assert result.label == Label(expected["classification"])
    if "critical" in expected:
        assert result.critical is expected["critical"]
    if "deviation" in expected:
        assert _close(result.deviation, expected["deviation"])
    if expected.get("reasonNonEmpty"):
        assert result.reason


# --- 06: Mann-Whitney CI and estimate --------------------------------------------------

MW_STEM, MW_FILE = _load("06")


@pytest.mark.parametrize("case", list(_params(MW_STEM, MW_FILE["cases"])))
def test_mann_whitney_case(case: dict[str, Any]) -> None:
    if "checks" in case and "x" in case:  # wilcoxonDiff(mu, quantile, x, y)
        for check in case["checks"]:
            call = re.fullmatch(r"wilcoxonDiff\(mu=([-\d.]+), quantile=([-\d.]+), x, y\)", check["call"])
            assert call, check["call"]
            value = wilcoxon_diff(float(call[1]), float(call[2]), case["x"], case["y"])
            assert _close(value, check["expected"], check["abs_tol"]), (check["call"], value)
    elif "checks" in case:  # the normal quantile
        for check in case["checks"]:
            call = re.fullmatch(
                r"NormalDistribution\(0,1\)\.inverseCumulativeProbability\(([\d.]+)/(\d+)\)", check["call"]
            )
            assert call, check["call"]
            assert _close(z_quantile(float(call[1]) / float(call[2])), check["expected"], check["abs_tol"])
    elif "experiment" in case:  # CI and estimate
        result = mann_whitney(case["experiment"], case["control"], case["confidenceLevel"])
        expected, tol = case["expected"], case["abs_tol"]
        assert _close(result.ci_lower, expected["ciLower"], tol["ci"]), result
        assert _close(result.ci_upper, expected["ciUpper"], tol["ci"]), result
        assert _close(result.estimate, expected["estimate"], tol["estimate"]), result
    else:  # the intermediate values of one CI computation
        x, y, expected, tol = case["x"], case["y"], case["expected"], case["abs_tol"]
        wdiff = WilcoxonShift(x, y)
        mu_min, mu_max = min(x) - max(y), max(x) - min(y)
        alpha = 1 - case["confidenceLevel"]
        zq_lower, zq_upper = -z_quantile(alpha / 2), z_quantile(alpha / 2)
        f_lower1, f_upper1 = wdiff(mu_min, zq_lower), wdiff(mu_max, zq_lower)
        f_lower2, f_upper2 = wdiff(mu_min, zq_upper), wdiff(mu_max, zq_upper)
        actual = {
            "rMumin": mu_min,
            "rMumax": mu_max,
            "rZqLower": zq_lower,
            "rZqUpper": zq_upper,
            "rFlower1": f_lower1,
            "rFupper1": f_upper1,
            "rFlower2": f_lower2,
            "rFupper2": f_upper2,
            "rCil": zeroin(lambda d: wdiff(d, zq_lower), mu_min, mu_max, f_lower1, f_upper1),
            "rCiu": zeroin(lambda d: wdiff(d, zq_upper), mu_min, mu_max, f_lower2, f_upper2),
            "rEst": zeroin(wdiff, mu_min, mu_max, wdiff(mu_min), wdiff(mu_max)),
        }
        assert set(actual) == set(expected)
        for key, value in actual.items():
            assert _close(value, expected[key], tol), (key, value, expected[key])
        # The public entry point gives the same interval and estimate.
        result = mann_whitney(x, y, case["confidenceLevel"])
        assert (result.ci_lower, result.ci_upper, result.estimate) == (actual["rCil"], actual["rCiu"], actual["rEst"])


# --- 07: weighted-sum scorer -------------------------------------------------------------

SCORER_STEM, SCORER_FILE = _load("07")


@pytest.mark.parametrize("case", list(_params(SCORER_STEM, SCORER_FILE["cases"])))
def test_scorer_case(case: dict[str, Any]) -> None:
    results = [
        ScoredMetric(
            name=metric["name"],
            label=Label(metric["classification"]),
            groups=tuple(metric["groups"]),
            critical=metric["critical"],
            reason=f"{metric['name']} was classified as {metric['classification']}",
        )
        for metric in case["metricResults"]
    ]
    scored = score_results(results, case["groupWeights"])
    assert scored.score == case["expected"]["summaryScore"]
    if "groupScoresSorted" in case["expected"]:
        assert sorted(group.score for group in scored.group_scores) == case["expected"]["groupScoresSorted"]


# --- 08: thresholds and the verdict over intervals ---------------------------------------

VERDICT_STEM, VERDICT_FILE = _load("08")


def _thresholds(data: dict[str, Any]) -> ScoreThresholds:
    return ScoreThresholds(marginal=data.get("marginal"), pass_score=data.get("pass"))


@pytest.mark.parametrize(
    "case",
    list(_params(VERDICT_STEM, VERDICT_FILE["orcaAggregateCanaryResults"]["cases"], "orcaAggregateCanaryResults")),
)
def test_orca_aggregate_case(case: dict[str, Any]) -> None:
    verdict = aggregate_interval_scores(case["intervalScores"], _thresholds(case["scoreThresholds"]))
    assert verdict.status == case["expectedStageStatus"], verdict.message


@pytest.mark.parametrize(
    "case", list(_params(VERDICT_STEM, VERDICT_FILE["orcaIndependentStages"]["cases"], "orcaIndependentStages"))
)
def test_orca_independent_stages_case(case: dict[str, Any]) -> None:
    thresholds = _thresholds(case["scoreThresholds"])
    assert aggregate_interval_scores(case["stage1IntervalScores"], thresholds).status == case["expectedStage1Status"]
    assert aggregate_interval_scores(case["stage2IntervalScores"], thresholds).status == case["expectedStage2Status"]


@pytest.mark.parametrize(
    "case",
    list(
        _params(
            VERDICT_STEM,
            VERDICT_FILE["kayentaStandaloneGetAggregatedJudgment"]["cases"],
            "kayentaStandaloneGetAggregatedJudgment",
        )
    ),
)
def test_standalone_aggregated_judgment_case(case: dict[str, Any]) -> None:
    verdict = aggregate_interval_scores([case["finalCanaryScore"]], _thresholds(case))
    assert verdict.passed is case["expectedDidPassThresholds"], verdict.message


def _uniform(rng: np.random.Generator, bounds: list[float], points: int) -> list[float]:
    low, high = bounds
    return rng.uniform(low, high, points).tolist() if high > low else [float(low)] * points


@pytest.mark.parametrize(
    "case", list(_params(VERDICT_STEM, VERDICT_FILE["kayentaIntegrationTests"]["cases"], "kayentaIntegrationTests"))
)
@pytest.mark.parametrize("seed", [1, 2, 3], ids=lambda seed: f"seed{seed}")
def test_integration_case(case: dict[str, Any], seed: int) -> None:
    """End to end with gauges drawn uniformly as in Kayenta's integration tests (seeded here)."""
    request = case["request"]
    points = request["lifetimeDurationMins"] * 60 // request["step_seconds"]
    rng = np.random.default_rng(seed)
    config = case["canaryConfig"]
    metric_names = {metric["query"]["metricName"].replace("_", "."): metric["name"] for metric in config["metrics"]}
    data = {
        metric_names[series]: {
            "control": _uniform(rng, case["generatedMetrics"]["control"][series]["uniformRandom"], points),
            "experiment": _uniform(rng, case["generatedMetrics"]["experiment"][series]["uniformRandom"], points),
        }
        for series in case["generatedMetrics"]["control"]
    }
    thresholds = ScoreThresholds.from_mapping(request["thresholds"])
    intervals = request["lifetimeDurationMins"] // request["analysisIntervalMins"]
    results = [judge_canary(config, thresholds, data) for _ in range(intervals)]
    verdict = aggregate_interval_scores([result.score for result in results], thresholds)

    expected = case["expected"]
    assert verdict.status == expected["executionStatus"], verdict.message
    assert verdict.passed is expected["didPassThresholds"]
    assert bool(results[-1].warnings) is expected["hasWarnings"]
    if "canaryScoreMessage" in expected:
        assert verdict.message == expected["canaryScoreMessage"]
    for name, label in expected["metricClassifications"].items():
        assert results[-1].result(name).label == Label(label)


# --- 09: preprocessing and statistics ------------------------------------------------------

PRE_STEM, PRE_FILE = _load("09")


@pytest.mark.parametrize("case", list(_params(PRE_STEM, PRE_FILE["detectors"])))
def test_detector_case(case: dict[str, Any]) -> None:
    if case["detector"] == "KSigmaDetector":
        mask = ksigma_outlier_mask(case["input"], case["param"]["k"])
    else:
        assert case["detector"] == "IQRDetector"
        mask = iqr_outlier_mask(case["input"], case["param"]["factor"], reduce_sensitivity=False)
    assert mask.tolist() == case["expectedOutlierMask"]


@pytest.mark.parametrize("case", list(_params(PRE_STEM, PRE_FILE["transforms"])))
def test_transform_case(case: dict[str, Any]) -> None:
    values = [_num(value) for value in case["input"]]
    op = case["op"]
    if op == "removeNaNs":
        actual = remove_nans(values)
    elif op == "replaceNaNs(value=0.0)":
        actual = replace_nans(values, 0.0)
    elif op == "removeOutliers(IQRDetector, 1.5)":
        actual = remove_outliers(values, lambda array: iqr_outlier_mask(array, 1.5))
    elif op == "removeOutliers(KSigmaDetector, 3.0)":
        actual = remove_outliers(values, lambda array: ksigma_outlier_mask(array, 3.0))
    else:
        raise AssertionError(f"unknown transform {op}")
    assert actual.tolist() == case["expected"]


@pytest.mark.parametrize("case", list(_params(PRE_STEM, PRE_FILE["statistics"])))
def test_statistic_case(case: dict[str, Any]) -> None:
    name = case["name"]
    if "checks" in case:
        for check in case["checks"]:
            value = percentile(case["input"], check["p"])
            assert _close(value, check["expected"], check.get("abs_tol", DEFAULT_TOL)), (check, value)
    elif name.startswith("Summary Statistics"):
        stats = summary_stats(case["input"])
        expected = case["expected"]
        assert stats.count == expected["count"]
        for key in ("min", "max", "mean"):
            assert _close(getattr(stats, key), expected[key]), key
        assert _close(stats.std, expected["std"], case.get("abs_tol_std", DEFAULT_TOL))
    else:
        function = {"Effect Size: Mean Ratio": mean_ratio, "Effect Size: Cohen's D": cohen_d, "CLES Effect Size": cles}
        (key,) = [key for key in function if name.startswith(key)]
        value = function[key](case["control"], case["experiment"])
        assert _close(value, case["expected"], case.get("abs_tol", DEFAULT_TOL)), value


# --- 10: Orca interval planning ------------------------------------------------------------

PLAN_STEM, PLAN_FILE = _load("10")
PLAN_SECTIONS = [key for key, value in PLAN_FILE.items() if isinstance(value, dict) and "cases" in value]
START = datetime(2025, 4, 8, 12, 0, tzinfo=timezone.utc)


def _orca_minutes(value: str | None) -> int | None:
    """Orca's stage context values: null, '' and '0' all mean unset."""
    return int(value) if value else None


def _duration(iso: str) -> timedelta:
    match = re.fullmatch(r"PT(\d+)H", iso)
    assert match, iso
    return timedelta(hours=int(match[1]))


def _end(scope: dict[str, Any]) -> datetime | None:
    if scope["endTimeIso"] is None:
        return None
    assert scope["startTimeIso"] == "now"
    match = re.fullmatch(r"now\+(\d+)h", scope["endTimeIso"])
    assert match, scope["endTimeIso"]
    return START + timedelta(hours=int(match[1]))


@pytest.mark.parametrize(
    ("section", "case"),
    [
        pytest.param(section, case, id=f"{PLAN_STEM}::{section}#{index + 1}")
        for section in PLAN_SECTIONS
        for index, case in enumerate(PLAN_FILE[section]["cases"])
    ],
)
def test_interval_planning_case(section: str, case: dict[str, Any]) -> None:
    setup = PLAN_FILE[section]
    end = _end(setup["scope"])
    plan = plan_intervals(
        START,
        end=end,
        lifetime=None if end is not None else _duration(setup["lifetimeDuration"]),
        interval_mins=_orca_minutes(case["canaryAnalysisIntervalMins"]),
        begin_after_mins=_orca_minutes(case["beginCanaryAnalysisAfterMins"]),
        lookback_mins=_orca_minutes(case["lookbackMins"]),
    )
    ranges = [
        [(window.control_start - START) // timedelta(minutes=1), (window.control_end - START) // timedelta(minutes=1)]
        for window in plan.windows
    ]
    assert ranges == case["expectedControlScopeRangesMin"]
    assert [window.index for window in plan.windows] == list(range(1, len(ranges) + 1))


# --- every case is run ---------------------------------------------------------------------


def _count_cases(data: dict[str, Any]) -> int:
    """Cases in one file: its top-level lists of cases and the ``cases`` of its sections."""
    count = 0
    for key, value in data.items():
        if key in ("cases", "detectors", "transforms", "statistics"):
            count += len(value)
        elif isinstance(value, dict) and "cases" in value:
            count += len(value["cases"])
    return count


def test_every_case_is_parametrized() -> None:
    """The parametrized lists above cover every case in every file (nothing silently dropped)."""
    files = sorted(CASES_DIR.glob("*.json"))
    assert [path.name[:2] for path in files] == [f"{n:02d}" for n in range(1, 11)]
    in_files = sum(_count_cases(json.loads(path.read_text())) for path in files)
    verdict_sections = [key for key, value in VERDICT_FILE.items() if isinstance(value, dict) and "cases" in value]
    parametrized = (
        len(CLASSIFIER_CASES)
        + len(MW_FILE["cases"])
        + len(SCORER_FILE["cases"])
        + sum(len(VERDICT_FILE[key]["cases"]) for key in verdict_sections)
        + sum(len(PRE_FILE[key]) for key in ("detectors", "transforms", "statistics"))
        + sum(len(PLAN_FILE[section]["cases"]) for section in PLAN_SECTIONS)
    )
    assert len(verdict_sections) == 4
    assert parametrized == in_files == 37 + 7 + 13 + (27 + 4 + 5 + 3) + (6 + 5 + 18) + (17 + 16)
