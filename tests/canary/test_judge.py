"""The judge end to end: config parsing and defaults, groups and weights, overrides, validation errors."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import pytest

from gennaker.canary import (
    CanaryConfig,
    CanaryJudgeError,
    Direction,
    EffectSizeMeasure,
    Label,
    MetricConfig,
    MetricSetPair,
    NanStrategy,
    OutlierStrategy,
    ScoreClassification,
    ScoreThresholds,
    judge_canary,
)
from gennaker.canary.classifier import MannWhitneyClassifier
from gennaker.canary.judge import JUDGE_CONF_LEVEL, JUDGE_TOLERANCE, LOW_DATA_WARNING

THRESHOLDS = {"marginal": 75, "pass": 95}


def _metric(name: str, groups: list[str], **canary: Any) -> dict[str, Any]:
    return {
        "name": name,
        "query": {"type": "prometheus", "metricName": name.replace(" ", "_")},
        "groups": groups,
        "analysisConfigurations": {"canary": canary},
        "scopeName": "default",
    }


def _config(*metrics: dict[str, Any], weights: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "name": "test-config",
        "judge": {"name": "NetflixACAJudge-v1.0", "judgeConfigurations": {}},
        "metrics": list(metrics),
        "classifier": {"groupWeights": weights or {}},
    }


def _latency(rng: np.random.Generator, n: int = 300, scale: float = 1.0) -> list[float]:
    return (rng.lognormal(mean=math.log(120.0), sigma=0.25, size=n) * scale).tolist()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# --- configuration -------------------------------------------------------------------------


def test_metric_defaults_are_kayentas() -> None:
    metric = MetricConfig.from_kayenta({"name": "m", "groups": ["g"]})
    assert metric.direction is Direction.EITHER
    assert metric.nan_strategy is NanStrategy.REMOVE
    assert metric.outlier_strategy is OutlierStrategy.KEEP
    assert metric.outlier_factor == 3.0
    assert (metric.critical, metric.must_have_data, metric.muted) == (False, False, False)
    assert metric.effect_size_measure is EffectSizeMeasure.MEAN_RATIO
    assert metric.effect_size_thresholds == (1.0, 1.0)
    assert metric.critical_thresholds == (1.0, 1.0)


def test_cles_thresholds_default_to_one_half() -> None:
    metric = MetricConfig.from_kayenta(_metric("m", ["g"], effectSize={"measure": "cles", "allowedIncrease": 0.8}))
    assert metric.effect_size_measure is EffectSizeMeasure.CLES
    assert metric.effect_size_thresholds == (0.5, 0.8)
    assert metric.critical_thresholds == (0.5, 0.5)


def test_all_settings_are_read() -> None:
    metric = MetricConfig.from_kayenta(
        _metric(
            "m",
            ["a", "b"],
            direction="increase",
            nanStrategy="replace",
            outliers={"strategy": "remove", "outlierFactor": 1.5},
            critical=True,
            mustHaveData=True,
            muted=True,
            effectSize={
                "allowedIncrease": 1.1,
                "allowedDecrease": 0.9,
                "criticalIncrease": 1.5,
                "criticalDecrease": 0.5,
            },
        )
    )
    assert metric.groups == ("a", "b")
    assert metric.direction is Direction.INCREASE
    assert metric.nan_strategy is NanStrategy.REPLACE
    assert (metric.outlier_strategy, metric.outlier_factor) == (OutlierStrategy.REMOVE, 1.5)
    assert (metric.critical, metric.must_have_data, metric.muted) == (True, True, True)
    assert metric.effect_size_thresholds == (0.9, 1.1)
    assert metric.critical_thresholds == (0.5, 1.5)


def test_unknown_setting_values_fall_back_like_kayenta(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gennaker.canary.judge"):
        metric = MetricConfig.from_kayenta(
            _metric(
                "m",
                ["g"],
                direction="up",
                nanStrategy="none",
                outliers={"strategy": "drop"},
                effectSize={"measure": "cohen"},
            )
        )
    assert metric.direction is Direction.EITHER
    assert metric.nan_strategy is NanStrategy.REMOVE
    assert metric.outlier_strategy is OutlierStrategy.KEEP
    assert metric.effect_size_measure is EffectSizeMeasure.MEAN_RATIO
    assert "unknown value 'up'" in caplog.text


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ({"critical": "true"}, "critical must be true or false"),
        ({"muted": 1}, "muted must be true or false"),
        ({"effectSize": {"allowedIncrease": "1.2"}}, "allowed_increase must be a number"),
        ({"outliers": {"strategy": "remove", "outlierFactor": -1}}, "must not be negative"),
    ],
)
def test_invalid_metric_settings(canary: dict[str, Any], message: str) -> None:
    with pytest.raises(CanaryJudgeError, match=message):
        MetricConfig.from_kayenta(_metric("m", ["g"], **canary))


def test_config_errors() -> None:
    with pytest.raises(CanaryJudgeError, match="at least one metric"):
        CanaryConfig.from_kayenta(_config())
    with pytest.raises(CanaryJudgeError, match="configured more than once"):
        CanaryConfig.from_kayenta(_config(_metric("m", ["g"]), _metric("m", ["h"])))
    with pytest.raises(CanaryJudgeError, match="at least one group"):
        CanaryConfig.from_kayenta(_config(_metric("m", [])))
    with pytest.raises(CanaryJudgeError, match="non-empty name"):
        CanaryConfig.from_kayenta(_config(_metric("", ["g"])))
    with pytest.raises(CanaryJudgeError, match="weight of group 'g'"):
        CanaryConfig.from_kayenta(_config(_metric("m", ["g"]), weights={"g": "50"}))  # type: ignore[dict-item]


# --- judging -------------------------------------------------------------------------------


def test_groups_and_weights_end_to_end(rng: np.random.Generator) -> None:
    config = _config(
        _metric("latency p50", ["latency"], direction="increase"),
        _metric("latency p99", ["latency"], direction="increase"),
        _metric("errors", ["errors"], direction="increase", nanStrategy="replace"),
        _metric("cpu", ["saturation"]),
        _metric("memory", ["saturation"]),
        weights={"latency": 50, "errors": 30},
    )
    data = {
        "latency p50": {"control": _latency(rng), "experiment": _latency(rng)},
        "latency p99": {"control": _latency(rng), "experiment": _latency(rng, scale=1.6)},  # High
        "errors": {"control": _latency(rng, scale=0.01), "experiment": _latency(rng, scale=0.01)},
        "cpu": {"control": _latency(rng), "experiment": _latency(rng, scale=0.5)},  # Low
        "memory": {"control": _latency(rng), "experiment": _latency(rng)},
    }
    result = judge_canary(config, THRESHOLDS, data)
    labels = {metric.name: metric.label for metric in result.results}
    assert labels == {
        "latency p50": Label.PASS,
        "latency p99": Label.HIGH,
        "errors": Label.PASS,
        "cpu": Label.LOW,
        "memory": Label.PASS,
    }
    groups = {group.name: group.score for group in result.group_scores}
    assert groups == {"errors": 100.0, "latency": 50.0, "saturation": 50.0}
    # latency 50 % of 50, errors 100 % of 30, saturation (unweighted) 50 % of the remaining 20.
    assert result.score == 25.0 + 30.0 + 10.0
    assert result.classification is ScoreClassification.FAIL
    assert result.reason is None
    assert result.warnings == ()
    high = result.result("latency p99")
    assert high.reason == "latency p99 was classified as High"
    assert high.ratio == pytest.approx(1.6, rel=0.1)
    assert high.test is not None and high.test.conf_level == JUDGE_CONF_LEVEL
    assert high.control_stats.count == 300
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert payload["score"] == {"score": 65.0, "classification": "Fail", "classificationReason": None}
    assert payload["results"][1]["classification"] == "High"


def test_judge_uses_kayentas_hard_coded_tolerance_and_confidence() -> None:
    assert (JUDGE_TOLERANCE, JUDGE_CONF_LEVEL) == (0.25, 0.98)
    # A shift of 6 over 0..19: High with tolerance 0.10 or with a 95 % interval, Pass only with both 0.25 and 98 %.
    control = [float(value) for value in range(20)]
    experiment = [value + 6.0 for value in control]
    for tolerance, conf_level in ((0.10, 0.95), (0.10, 0.98), (0.25, 0.95)):
        classifier = MannWhitneyClassifier(tolerance=tolerance, conf_level=conf_level)
        assert classifier.classify(control, experiment).label is Label.HIGH
    production = judge_canary(
        _config(_metric("m", ["g"])), THRESHOLDS, {"m": {"control": control, "experiment": experiment}}
    )
    assert production.result("m").label is Label.PASS
    assert production.warnings == (LOW_DATA_WARNING,)


def test_unknown_metric_in_data_fails_the_whole_judgement(rng: np.random.Generator) -> None:
    config = _config(_metric("cpu", ["g"]))
    data = {"cpu": {"control": _latency(rng), "experiment": _latency(rng)}, "disk": {"control": [1], "experiment": [1]}}
    with pytest.raises(CanaryJudgeError, match="metric 'disk' in the data has no metric config"):
        judge_canary(config, THRESHOLDS, data)


def test_data_validation() -> None:
    config = _config(_metric("m", ["g"]))
    with pytest.raises(CanaryJudgeError, match="appears more than once"):
        judge_canary(config, THRESHOLDS, [MetricSetPair("m", [1.0], [1.0]), MetricSetPair("m", [1.0], [1.0])])
    with pytest.raises(CanaryJudgeError, match="must be a list of numbers"):
        judge_canary(config, THRESHOLDS, {"m": {"control": ["a", "b"], "experiment": [1.0]}})
    with pytest.raises(CanaryJudgeError, match="flat list"):
        judge_canary(config, THRESHOLDS, {"m": {"control": [[1.0, 2.0]], "experiment": [1.0]}})
    with pytest.raises(CanaryJudgeError, match="expected"):
        judge_canary(config, THRESHOLDS, {"m": {"baseline": [1.0], "canary": [1.0]}})


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"pass": 95}, "needs both score thresholds"),
        ({}, "needs both score thresholds"),
        ({"marginal": 90, "pass": 80}, "must not be below the marginal"),
        ({"marginal": "75", "pass": 95}, "must be a number"),
        ({"marginal": 75, "pass": 95, "fail": 10}, "unknown score threshold keys: fail"),
    ],
)
def test_threshold_validation(thresholds: dict[str, Any], message: str) -> None:
    with pytest.raises(CanaryJudgeError, match=message):
        judge_canary(_config(_metric("m", ["g"])), thresholds, {"m": {"control": [1.0], "experiment": [1.0]}})


def test_missing_metric_is_judged_without_data(rng: np.random.Generator) -> None:
    config = _config(_metric("cpu", ["g"]), _metric("memory", ["g"], mustHaveData=True), _metric("disk", ["g"]))
    result = judge_canary(config, THRESHOLDS, {"cpu": {"control": _latency(rng), "experiment": _latency(rng)}})
    assert result.result("memory").label is Label.NODATA_FAIL_METRIC
    assert result.result("memory").reason == "Missing data for memory"
    assert result.result("disk").label is Label.NODATA
    # cpu Pass, memory NodataFailMetric (counted), disk Nodata (not counted): 50.
    assert result.score == 50.0
    assert result.result("disk").to_dict()["resultMetadata"]["ratio"] is None


def test_half_or_more_nodata_scores_zero(rng: np.random.Generator) -> None:
    config = _config(_metric("cpu", ["g"]), _metric("disk", ["g"]))
    result = judge_canary(config, THRESHOLDS, {"cpu": {"control": _latency(rng), "experiment": _latency(rng)}})
    assert result.score == 0.0
    assert result.reason == "Canary Failed: 50% or more metrics returned NODATA"


def test_critical_failure_scores_zero_and_muted_metrics_do_not_count(rng: np.random.Generator) -> None:
    config = _config(
        _metric("errors", ["g"], critical=True, direction="increase"),
        _metric("latency", ["g"], muted=True, critical=True),
        _metric("cpu", ["g"]),
    )
    good = {"control": _latency(rng), "experiment": _latency(rng)}
    bad = {"control": _latency(rng), "experiment": _latency(rng, scale=3.0)}
    muted_bad = judge_canary(config, THRESHOLDS, {"errors": good, "latency": bad, "cpu": good})
    assert muted_bad.result("latency").label is Label.HIGH and muted_bad.result("latency").muted
    assert muted_bad.score == 100.0
    assert muted_bad.classification is ScoreClassification.PASS

    critical_bad = judge_canary(config, THRESHOLDS, {"errors": bad, "latency": good, "cpu": good})
    assert critical_bad.result("errors").critical
    assert critical_bad.score == 0.0
    assert critical_bad.reason == "Canary Failed: The metric errors was classified as High (Critical)"
    assert critical_bad.classification is ScoreClassification.FAIL


def test_nan_strategies_and_outlier_removal(rng: np.random.Generator) -> None:
    config = _config(
        _metric("removed", ["g"]),
        _metric("replaced", ["g"], nanStrategy="replace"),
        _metric("filtered", ["g"], outliers={"strategy": "remove"}),
    )
    with_nans = [1.0, math.nan, 2.0, None, 3.0]
    spiky = _latency(rng, n=200)
    spiky[17] = 1e6
    data = {
        "removed": {"control": with_nans, "experiment": with_nans},
        "replaced": {"control": with_nans, "experiment": with_nans},
        "filtered": {"control": spiky, "experiment": _latency(rng, n=200)},
    }
    result = judge_canary(config, THRESHOLDS, data)
    assert result.result("removed").control_stats.count == 3
    assert result.result("replaced").control_stats.count == 5
    assert result.result("replaced").control_stats.min == 0.0
    assert result.result("filtered").control_stats.count < 200
    assert result.result("filtered").control_stats.max < 1e6


def test_failed_classification_is_an_error_result_not_scored(rng: np.random.Generator) -> None:
    config = _config(_metric("broken", ["g"]), _metric("cpu", ["g"]))
    data = {
        "broken": {"control": [1.0, 2.0, 3.0], "experiment": [1.0, math.inf, 3.0]},
        "cpu": {"control": _latency(rng), "experiment": _latency(rng)},
    }
    result = judge_canary(config, THRESHOLDS, data)
    assert result.result("broken").label is Label.ERROR
    assert result.result("broken").reason == "Metric Classification Failed"
    assert result.score == 100.0


def test_degenerate_ties_are_reproducible_and_order_independent() -> None:
    config = _config(_metric("a", ["g"]), _metric("b", ["g"]))
    tied = {"control": [1.0] * 20, "experiment": [10.0] * 20}
    other = {"control": [5.0] * 20, "experiment": [4.0] * 20}
    first = judge_canary(config, THRESHOLDS, {"a": tied, "b": other})
    swapped = judge_canary(
        CanaryConfig.from_kayenta(_config(_metric("b", ["g"]), _metric("a", ["g"]))),
        THRESHOLDS,
        {"b": other, "a": tied},
    )
    assert first.result("a").label is Label.HIGH
    assert first.result("b").label is Label.LOW
    assert first.result("a").test == swapped.result("a").test
    assert first.result("a").ratio == 10.0  # the ratio describes the data, not the jitter


# --- the marginal boundary (documented in docs/canary.md) ----------------------------------


def test_score_equal_to_marginal_fails(rng: np.random.Generator) -> None:
    config = _config(_metric("ok", ["g"]), _metric("bad", ["g"], direction="increase"))
    data = {
        "ok": {"control": _latency(rng), "experiment": _latency(rng)},
        "bad": {"control": _latency(rng), "experiment": _latency(rng, scale=2.0)},
    }
    at_marginal = judge_canary(config, {"marginal": 50, "pass": 95}, data)
    assert at_marginal.score == 50.0
    assert at_marginal.classification is ScoreClassification.FAIL  # Kayenta's judge alone would say Marginal
    above = judge_canary(config, {"marginal": 49.99, "pass": 95}, data)
    assert above.classification is ScoreClassification.MARGINAL
    at_pass = judge_canary(config, ScoreThresholds(marginal=10, pass_score=50), data)
    assert at_pass.classification is ScoreClassification.PASS
