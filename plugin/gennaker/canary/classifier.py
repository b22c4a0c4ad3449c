"""Metric classifiers: Kayenta's ``MannWhitneyClassifier`` (the judge's) and ``MeanInequalityClassifier``.

``MannWhitneyClassifier.classify`` labels one metric ``Pass``, ``High``, ``Low``,
``Nodata``, ``NodataFailMetric`` or ``Error``, in this order:

1. **No data** (either series empty): with NaN strategy ``remove`` a metric that must
   have data (and is not critical) is ``NodataFailMetric``, any other ``Nodata`` (with
   the metric's critical flag); with ``replace`` it is ``Pass``.
2. **Identical data** (the same multiset of values): ``Pass``.
3. **One value overall**: ``Pass``.
4. **Degenerate ties** (each series is one repeated value, e.g. all 10s against all 1s):
   Kayenta adds Gaussian noise ``N(0, (1e-5 v)^2)`` to each series so that the rank test
   is defined. Kayenta's noise is unseeded; ours comes from a numpy ``Generator`` seeded
   with ``jitter_seed`` afresh for every classification, so a judgement is reproducible
   and does not depend on the order of the metrics. The label does not depend on the noise.
5. **Mann-Whitney** CI and estimate of ``experiment - control`` at ``conf_level``.
6. **Effect size**: the mean ratio ``mean(experiment) / mean(control)`` (always reported
   as the ratio) or CLES; a NaN effect size (a zero mean) skips the effect-size gate.
7. **Tolerance band**: ``High`` when the direction allows increases, ``CI_low >
   tolerance * |estimate|`` and the effect size ``>= allowed increase``; ``Low`` when
   the direction allows decreases, ``CI_high < -tolerance * |estimate|`` and the effect
   size ``<= allowed decrease``; otherwise ``Pass``.
8. **Critical**: on a critical metric, a High (Low) whose effect size is at or beyond the
   critical increase (decrease) is flagged critical, which zeroes the canary's score.
9. Any failure of the test (e.g. every observation tied) gives ``Error``.

The class defaults (tolerance 0.25, confidence 0.95, thresholds (1.0, 1.0), mean ratio)
are Kayenta's class defaults, which its unit tests rely on; the judge builds the
classifier with tolerance 0.25 and confidence 0.98.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from gennaker.canary.mannwhitney import MannWhitneyResult, mann_whitney
from gennaker.canary.preprocess import NanStrategy
from gennaker.canary.stats import as_float_array, cles, mean_ratio

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]

log = logging.getLogger(__name__)

__all__ = [
    "JITTER_SCALE",
    "Direction",
    "EffectSizeMeasure",
    "Label",
    "MannWhitneyClassifier",
    "MeanInequalityClassifier",
    "MetricClassification",
]

#: Kayenta's Gaussian-jitter scale for degenerate ties: sigma = 1e-5 * |value|.
JITTER_SCALE = 1e-5


class Label(str, Enum):
    """A metric's classification (Kayenta's ``MetricClassificationLabel``)."""

    PASS = "Pass"
    HIGH = "High"
    LOW = "Low"
    NODATA = "Nodata"
    NODATA_FAIL_METRIC = "NodataFailMetric"
    ERROR = "Error"


class Direction(str, Enum):
    """Which deviations count: ``increase`` (only High), ``decrease`` (only Low) or ``either``."""

    INCREASE = "increase"
    DECREASE = "decrease"
    EITHER = "either"


class EffectSizeMeasure(str, Enum):
    """``effectSize.measure``: the mean ratio (default) or the common-language effect size."""

    MEAN_RATIO = "meanRatio"
    CLES = "cles"


@dataclass(frozen=True)
class MetricClassification:
    """One metric's classification.

    ``deviation`` is the mean ratio experiment/control (Kayenta's ``resultMetadata.ratio``;
    NaN when a mean is 0, 1.0 for the short-circuit Pass results). ``effect_size`` is the
    value the effect-size gates compared (the ratio or CLES). ``test`` holds the
    Mann-Whitney CI and estimate when the test ran.
    """

    label: Label
    reason: str | None
    deviation: float
    critical: bool = False
    effect_size: float = math.nan
    test: MannWhitneyResult | None = None


def _threshold_pair(name: str, pair: tuple[float, float]) -> tuple[float, float]:
    if len(pair) != 2:
        raise ValueError(f"{name} must be a (decrease, increase) pair, got {pair!r}")
    decrease, increase = float(pair[0]), float(pair[1])
    if math.isnan(decrease) or math.isnan(increase):
        raise ValueError(f"{name} must be numbers, got {pair!r}")
    return decrease, increase


class MannWhitneyClassifier:
    """Kayenta's ``MannWhitneyClassifier``: a rank test with a relative-precision band.

    ``effect_size_thresholds`` and ``critical_thresholds`` are ``(decrease, increase)``
    pairs, as in Scala. ``jitter_seed`` seeds the noise for degenerate ties (step 4).
    """

    def __init__(
        self,
        tolerance: float = 0.25,
        conf_level: float = 0.95,
        effect_size_thresholds: tuple[float, float] = (1.0, 1.0),
        critical_thresholds: tuple[float, float] = (1.0, 1.0),
        effect_size_measure: EffectSizeMeasure | str = EffectSizeMeasure.MEAN_RATIO,
        jitter_seed: int = 0,
    ) -> None:
        if not tolerance >= 0.0:
            raise ValueError(f"tolerance must not be negative, got {tolerance}")
        if not 0.0 < conf_level < 1.0:
            raise ValueError(f"the confidence level must be between 0 and 1 (exclusive), got {conf_level}")
        self.tolerance = float(tolerance)
        self.conf_level = float(conf_level)
        self.allowed_decrease, self.allowed_increase = _threshold_pair("effect_size_thresholds", effect_size_thresholds)
        self.critical_decrease, self.critical_increase = _threshold_pair("critical_thresholds", critical_thresholds)
        self.effect_size_measure = EffectSizeMeasure(effect_size_measure)
        self.jitter_seed = jitter_seed

    def classify(
        self,
        control: Sequence[float] | Any,
        experiment: Sequence[float] | Any,
        direction: Direction | str = Direction.EITHER,
        nan_strategy: NanStrategy | str = NanStrategy.REMOVE,
        is_critical: bool = False,
        is_data_required: bool = False,
        *,
        metric_name: str = "metric",
    ) -> MetricClassification:
        """Classify the experiment against the control (both already preprocessed).

        ``nan_strategy`` only decides what empty data means (step 1); the judge has
        already removed or replaced the NaNs.
        """
        direction = Direction(direction)
        nan_strategy = NanStrategy(nan_strategy)
        control_values = as_float_array(control)
        experiment_values = as_float_array(experiment)

        if control_values.size == 0 or experiment_values.size == 0:
            if nan_strategy is NanStrategy.REPLACE:
                return MetricClassification(Label.PASS, None, 1.0)
            reason = f"Missing data for {metric_name}"
            if is_data_required and not is_critical:
                return MetricClassification(Label.NODATA_FAIL_METRIC, reason, math.nan)
            return MetricClassification(Label.NODATA, reason, math.nan, critical=is_critical)

        try:
            return self._classify(control_values, experiment_values, direction, is_critical, metric_name)
        except (ValueError, ArithmeticError) as error:
            log.warning("Classification of %s failed: %s", metric_name, error)
            return MetricClassification(Label.ERROR, "Metric Classification Failed", math.nan)

    def _classify(
        self,
        control: FloatArray,
        experiment: FloatArray,
        direction: Direction,
        is_critical: bool,
        metric_name: str,
    ) -> MetricClassification:
        import numpy as np

        if control.size == experiment.size and np.array_equal(np.sort(control), np.sort(experiment)):
            return MetricClassification(Label.PASS, "The Canary and Baseline data are identical", 1.0, effect_size=1.0)
        low = min(float(control.min()), float(experiment.min()))
        high = max(float(control.max()), float(experiment.max()))
        if low == high:
            return MetricClassification(Label.PASS, None, 1.0, effect_size=1.0)

        control_tested, experiment_tested = control, experiment
        if control.min() == control.max() and experiment.min() == experiment.max():
            rng = np.random.default_rng(self.jitter_seed)
            control_tested = control + rng.normal(0.0, abs(float(control[0])) * JITTER_SCALE, control.size)
            experiment_tested = experiment + rng.normal(0.0, abs(float(experiment[0])) * JITTER_SCALE, experiment.size)

        test = mann_whitney(experiment_tested, control_tested, self.conf_level)
        # The effect sizes describe the data, not the noise added for the test.
        ratio = mean_ratio(control, experiment)
        if self.effect_size_measure is EffectSizeMeasure.CLES:
            effect = cles(control, experiment)
        else:
            effect = ratio
        unknown_effect = math.isnan(effect)

        bound = self.tolerance * abs(test.estimate)
        if (
            direction in (Direction.INCREASE, Direction.EITHER)
            and test.ci_lower > bound
            and (unknown_effect or effect >= self.allowed_increase)
        ):
            if is_critical and (unknown_effect or effect >= self.critical_increase):
                reason = f"The metric {metric_name} was classified as High (Critical)"
                return MetricClassification(Label.HIGH, reason, ratio, True, effect, test)
            return MetricClassification(Label.HIGH, f"{metric_name} was classified as High", ratio, False, effect, test)
        if (
            direction in (Direction.DECREASE, Direction.EITHER)
            and test.ci_upper < -bound
            and (unknown_effect or effect <= self.allowed_decrease)
        ):
            if is_critical and (unknown_effect or effect <= self.critical_decrease):
                reason = f"The metric {metric_name} was classified as Low (Critical)"
                return MetricClassification(Label.LOW, reason, ratio, True, effect, test)
            return MetricClassification(Label.LOW, f"{metric_name} was classified as Low", ratio, False, effect, test)
        return MetricClassification(Label.PASS, None, ratio, False, effect, test)


class MeanInequalityClassifier:
    """Kayenta's benchmark classifier (not used by the judge): compares the two means.

    ``High`` when the experiment's mean is above the control's and the direction allows
    increases, ``Low`` when below and the direction allows decreases, otherwise ``Pass``;
    empty data is handled as by ``MannWhitneyClassifier``.
    """

    def classify(
        self,
        control: Sequence[float] | Any,
        experiment: Sequence[float] | Any,
        direction: Direction | str = Direction.EITHER,
        nan_strategy: NanStrategy | str = NanStrategy.REMOVE,
        is_critical: bool = False,
        is_data_required: bool = False,
        *,
        metric_name: str = "metric",
    ) -> MetricClassification:
        """Classify the experiment against the control by their means."""
        direction = Direction(direction)
        nan_strategy = NanStrategy(nan_strategy)
        control_values = as_float_array(control)
        experiment_values = as_float_array(experiment)
        if control_values.size == 0 or experiment_values.size == 0:
            if nan_strategy is NanStrategy.REPLACE:
                return MetricClassification(Label.PASS, None, 1.0)
            reason = f"Missing data for {metric_name}"
            if is_data_required and not is_critical:
                return MetricClassification(Label.NODATA_FAIL_METRIC, reason, math.nan)
            return MetricClassification(Label.NODATA, reason, math.nan, critical=is_critical)
        ratio = mean_ratio(control_values, experiment_values)
        experiment_mean = float(experiment_values.mean())
        control_mean = float(control_values.mean())
        if direction in (Direction.INCREASE, Direction.EITHER) and experiment_mean > control_mean:
            return MetricClassification(Label.HIGH, f"{metric_name} was classified as High", ratio, effect_size=ratio)
        if direction in (Direction.DECREASE, Direction.EITHER) and experiment_mean < control_mean:
            return MetricClassification(Label.LOW, f"{metric_name} was classified as Low", ratio, effect_size=ratio)
        return MetricClassification(Label.PASS, None, ratio, effect_size=ratio)
