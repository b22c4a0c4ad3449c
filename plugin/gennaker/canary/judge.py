"""The canary judge: Kayenta's ``NetflixACAJudge-v1.0``, as pure computation.

``judge_canary(config, thresholds, metrics)`` (or ``NetflixACAJudge().judge``) takes a
canary config (Kayenta's JSON shape or ``CanaryConfig``), the run's score thresholds and
one control/experiment series pair per metric, and for every metric:

1. reads its settings from ``analysisConfigurations.canary`` with Kayenta's defaults
   (direction ``either``, NaN strategy ``remove``, outliers ``keep`` with factor 3.0,
   not critical, data not required, not muted, effect size ``meanRatio`` with all four
   thresholds 1.0, or 0.5 for ``cles``);
2. preprocesses both series (NaN strategy, then optional IQR outlier removal with
   reduced sensitivity) and reports their summary statistics;
3. classifies it with ``MannWhitneyClassifier(tolerance = 0.25, confLevel = 0.98)``:
   Kayenta hard-codes these two in the judge (the Spring properties that look like
   they configure them have been ignored since 2018), and so do we;

then scores the results (``scorer.score_results``) and labels the score with the
thresholds (``Fail`` at or below marginal, ``Pass`` at or above pass, otherwise
``Marginal``; see ``scorer`` for why marginal itself fails).

A series pair whose name has no metric config fails the whole judgement with
``CanaryJudgeError``, as Kayenta's ``IllegalArgumentException`` does. A configured
metric without a series pair is judged on empty data (so it becomes ``Nodata``, or
whatever its NaN strategy and ``mustHaveData`` make of no data) rather than silently
ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gennaker.canary.classifier import (
    Direction,
    EffectSizeMeasure,
    Label,
    MannWhitneyClassifier,
    MetricClassification,
)
from gennaker.canary.mannwhitney import MannWhitneyResult
from gennaker.canary.preprocess import DEFAULT_OUTLIER_FACTOR, NanStrategy, OutlierStrategy, preprocess
from gennaker.canary.scorer import (
    GroupScore,
    ScoreClassification,
    ScoreThresholds,
    classify_score,
    score_results,
)
from gennaker.canary.stats import SummaryStats, summary_stats
from gennaker.errors import CanaryJudgeError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]

log = logging.getLogger(__name__)

__all__ = [
    "JUDGE_CONF_LEVEL",
    "JUDGE_NAME",
    "JUDGE_TOLERANCE",
    "LOW_DATA_WARNING",
    "MIN_CONTROL_POINTS",
    "CanaryConfig",
    "CanaryJudgeError",
    "JudgeResult",
    "MetricConfig",
    "MetricResult",
    "MetricSetPair",
    "NetflixACAJudge",
    "judge_canary",
]

JUDGE_NAME = "NetflixACAJudge-v1.0"
#: ``new MannWhitneyClassifier(tolerance = 0.25, confLevel = 0.98, ...)`` in ``NetflixACAJudge``.
JUDGE_TOLERANCE = 0.25
JUDGE_CONF_LEVEL = 0.98
#: Orca and Kayenta's standalone API warn when a metric's control has fewer points than this.
MIN_CONTROL_POINTS = 50
LOW_DATA_WARNING = (
    "One of the metrics returned fewer than 50 data points, which can reduce confidence in the final canary score."
)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise CanaryJudgeError(f"{where} must be true or false, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise CanaryJudgeError(f"{where} must be a number, got {value!r}")
    return float(value)


def _resolved(value: float | None) -> float:
    assert value is not None, "filled in by MetricConfig.__post_init__"
    return value


def _lenient(enum: Any, value: Any, default: Any, where: str) -> Any:
    """Kayenta maps unknown setting values to the default; we do too, with a warning."""
    try:
        return enum(value)
    except ValueError:
        log.warning("%s: unknown value %r, using %r as Kayenta does", where, value, default.value)
        return default


@dataclass(frozen=True)
class MetricConfig:
    """One metric's ``analysisConfigurations.canary`` settings, with Kayenta's defaults.

    The four effect-size thresholds default to 1.0, or 0.5 when the measure is CLES.
    """

    name: str
    groups: tuple[str, ...]
    direction: Direction = Direction.EITHER
    nan_strategy: NanStrategy = NanStrategy.REMOVE
    outlier_strategy: OutlierStrategy = OutlierStrategy.KEEP
    outlier_factor: float = DEFAULT_OUTLIER_FACTOR
    critical: bool = False
    must_have_data: bool = False
    muted: bool = False
    effect_size_measure: EffectSizeMeasure = EffectSizeMeasure.MEAN_RATIO
    allowed_increase: float | None = None
    allowed_decrease: float | None = None
    critical_increase: float | None = None
    critical_decrease: float | None = None

    def __post_init__(self) -> None:
        where = f"metric {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise CanaryJudgeError(f"a metric needs a non-empty name, got {self.name!r}")
        groups = self.groups
        if isinstance(groups, str) or not all(isinstance(group, str) and group for group in groups):
            raise CanaryJudgeError(f"{where}: groups must be a list of non-empty names, got {groups!r}")
        if not groups:
            raise CanaryJudgeError(f"{where}: a metric needs at least one group (scores are computed per group)")
        object.__setattr__(self, "groups", tuple(groups))
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "nan_strategy", NanStrategy(self.nan_strategy))
        object.__setattr__(self, "outlier_strategy", OutlierStrategy(self.outlier_strategy))
        object.__setattr__(self, "effect_size_measure", EffectSizeMeasure(self.effect_size_measure))
        factor = _number(self.outlier_factor, f"{where}: outliers.outlierFactor")
        if factor < 0:
            raise CanaryJudgeError(f"{where}: outliers.outlierFactor must not be negative, got {factor}")
        object.__setattr__(self, "outlier_factor", factor)
        for flag in ("critical", "must_have_data", "muted"):
            _bool(getattr(self, flag), f"{where}: {flag}")
        default = 0.5 if self.effect_size_measure is EffectSizeMeasure.CLES else 1.0
        for threshold in ("allowed_increase", "allowed_decrease", "critical_increase", "critical_decrease"):
            value = getattr(self, threshold)
            value = default if value is None else _number(value, f"{where}: effectSize.{threshold}")
            object.__setattr__(self, threshold, value)

    @property
    def effect_size_thresholds(self) -> tuple[float, float]:
        """``(allowedDecrease, allowedIncrease)``."""
        return _resolved(self.allowed_decrease), _resolved(self.allowed_increase)

    @property
    def critical_thresholds(self) -> tuple[float, float]:
        """``(criticalDecrease, criticalIncrease)``."""
        return _resolved(self.critical_decrease), _resolved(self.critical_increase)

    @classmethod
    def from_kayenta(cls, data: Mapping[str, Any]) -> MetricConfig:
        """From a Kayenta ``CanaryMetricConfig`` (``name``, ``groups``, ``analysisConfigurations.canary``).

        Parsed as ``NetflixACAJudge.classifyMetric`` does: an unknown direction means
        ``either``, an unknown NaN strategy ``remove``, an unknown outlier strategy
        ``keep``, any measure but ``cles`` ``meanRatio`` (each logged as a warning).
        ``critical``, ``mustHaveData`` and ``muted`` must be booleans. The query and
        other provider fields are ignored.
        """
        if not isinstance(data, Mapping):
            raise CanaryJudgeError(f"a metric config must be a mapping, got {type(data).__name__}")
        name = data.get("name")
        where = f"metric {name!r}"
        analysis = data.get("analysisConfigurations") or {}
        canary = analysis.get("canary") if isinstance(analysis, Mapping) else None
        canary = canary or {}
        if not isinstance(canary, Mapping):
            raise CanaryJudgeError(f"{where}: analysisConfigurations.canary must be a mapping")
        effect = canary.get("effectSize") or {}
        outliers = canary.get("outliers") or {}
        if not isinstance(effect, Mapping) or not isinstance(outliers, Mapping):
            raise CanaryJudgeError(f"{where}: effectSize and outliers must be mappings")
        measure = EffectSizeMeasure.CLES if effect.get("measure") == "cles" else EffectSizeMeasure.MEAN_RATIO
        groups = data.get("groups") or ()
        if isinstance(groups, str) or not isinstance(groups, Sequence):
            raise CanaryJudgeError(f"{where}: groups must be a list, got {groups!r}")
        return cls(
            name=name,  # type: ignore[arg-type]  # validated in __post_init__
            groups=tuple(groups),
            direction=_lenient(Direction, canary.get("direction", "either"), Direction.EITHER, f"{where} direction"),
            nan_strategy=_lenient(
                NanStrategy, canary.get("nanStrategy", "remove"), NanStrategy.REMOVE, f"{where} nanStrategy"
            ),
            outlier_strategy=_lenient(
                OutlierStrategy, outliers.get("strategy", "keep"), OutlierStrategy.KEEP, f"{where} outliers.strategy"
            ),
            outlier_factor=outliers.get("outlierFactor", DEFAULT_OUTLIER_FACTOR),
            critical=canary.get("critical", False),
            must_have_data=canary.get("mustHaveData", False),
            muted=canary.get("muted", False),
            effect_size_measure=measure,
            allowed_increase=effect.get("allowedIncrease"),
            allowed_decrease=effect.get("allowedDecrease"),
            critical_increase=effect.get("criticalIncrease"),
            critical_decrease=effect.get("criticalDecrease"),
        )


@dataclass(frozen=True)
class CanaryConfig:
    """The parts of a Kayenta canary config the judge reads: the metrics and the group weights."""

    metrics: tuple[MetricConfig, ...]
    group_weights: Mapping[str, float] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        metrics = tuple(self.metrics)
        if not metrics:
            raise CanaryJudgeError("a canary config needs at least one metric")
        seen: set[str] = set()
        for metric in metrics:
            if not isinstance(metric, MetricConfig):
                raise CanaryJudgeError(f"metrics must be MetricConfig objects, got {type(metric).__name__}")
            if metric.name in seen:
                raise CanaryJudgeError(f"metric {metric.name!r} is configured more than once")
            seen.add(metric.name)
        object.__setattr__(self, "metrics", metrics)
        weights = {}
        for group, weight in dict(self.group_weights).items():
            weights[str(group)] = _number(weight, f"the weight of group {group!r}")
        object.__setattr__(self, "group_weights", weights)

    def metric(self, name: str) -> MetricConfig:
        """The config of metric ``name``; ``CanaryJudgeError`` when there is none."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise CanaryJudgeError(
            f"metric {name!r} in the data has no metric config in canary config {self.name!r} "
            f"(configured: {', '.join(repr(m.name) for m in self.metrics)})"
        )

    @classmethod
    def from_kayenta(cls, data: Mapping[str, Any]) -> CanaryConfig:
        """From a Kayenta canary config (``metrics[]``, ``classifier.groupWeights``, ``name``)."""
        if not isinstance(data, Mapping):
            raise CanaryJudgeError(f"a canary config must be a mapping, got {type(data).__name__}")
        metrics = data.get("metrics") or []
        if not isinstance(metrics, Sequence) or isinstance(metrics, str):
            raise CanaryJudgeError("the canary config's metrics must be a list")
        classifier = data.get("classifier") or {}
        weights = (classifier.get("groupWeights") or {}) if isinstance(classifier, Mapping) else {}
        if not isinstance(weights, Mapping):
            raise CanaryJudgeError("classifier.groupWeights must be a mapping of group name to weight")
        return cls(
            metrics=tuple(MetricConfig.from_kayenta(metric) for metric in metrics),
            group_weights=dict(weights),
            name=str(data.get("name") or ""),
        )


@dataclass(frozen=True)
class MetricSetPair:
    """One metric's baseline (control) and canary (experiment) series; NaN (or None) marks a missing point."""

    name: str
    control: Sequence[float] | Any
    experiment: Sequence[float] | Any


@dataclass(frozen=True)
class MetricResult:
    """A metric's judgement (Kayenta's ``CanaryAnalysisResult``)."""

    name: str
    groups: tuple[str, ...]
    label: Label
    reason: str | None
    critical: bool
    muted: bool
    ratio: float
    effect_size: float
    effect_size_measure: EffectSizeMeasure
    direction: Direction
    control_stats: SummaryStats
    experiment_stats: SummaryStats
    test: MannWhitneyResult | None = None

    @property
    def classification(self) -> str:
        return self.label.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, with Kayenta's field names (NaN becomes None)."""
        return {
            "name": self.name,
            "groups": list(self.groups),
            "classification": self.label.value,
            "classificationReason": self.reason,
            "critical": self.critical,
            "muted": self.muted,
            "direction": self.direction.value,
            "resultMetadata": {
                "ratio": _json_float(self.ratio),
                "effectSize": _json_float(self.effect_size),
                "effectSizeMeasure": self.effect_size_measure.value,
                "ciLower": _json_float(self.test.ci_lower) if self.test else None,
                "ciUpper": _json_float(self.test.ci_upper) if self.test else None,
                "estimate": _json_float(self.test.estimate) if self.test else None,
            },
            "controlMetadata": {"stats": self.control_stats.to_dict()},
            "experimentMetadata": {"stats": self.experiment_stats.to_dict()},
        }


@dataclass(frozen=True)
class JudgeResult:
    """The judgement of one canary run (Kayenta's ``CanaryJudgeResult``)."""

    score: float
    classification: ScoreClassification
    reason: str | None
    thresholds: ScoreThresholds
    results: tuple[MetricResult, ...]
    group_scores: tuple[GroupScore, ...]
    warnings: tuple[str, ...] = ()
    judge_name: str = JUDGE_NAME

    def result(self, name: str) -> MetricResult:
        """The result of metric ``name``."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, with Kayenta's field names."""
        return {
            "judgeName": self.judge_name,
            "score": {
                "score": self.score,
                "classification": self.classification.value,
                "classificationReason": self.reason,
            },
            "thresholds": self.thresholds.to_dict(),
            "results": [result.to_dict() for result in self.results],
            "groupScores": [group.to_dict() for group in self.group_scores],
            "warnings": list(self.warnings),
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _series(values: Any, where: str) -> FloatArray:
    import numpy as np

    if isinstance(values, str | bytes) or values is None:
        raise CanaryJudgeError(f"{where} must be a list of numbers, got {values!r}")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise CanaryJudgeError(f"{where} must be a list of numbers: {error}") from None
    if array.ndim != 1:
        raise CanaryJudgeError(f"{where} must be a flat list of numbers, got shape {array.shape}")
    return array


def _pairs(
    metrics: Iterable[MetricSetPair] | Mapping[str, Mapping[str, Any]],
) -> dict[str, tuple[FloatArray, FloatArray]]:
    pairs: dict[str, tuple[FloatArray, FloatArray]] = {}
    if isinstance(metrics, Mapping):
        items: list[MetricSetPair] = []
        for name, values in metrics.items():
            if not isinstance(values, Mapping) or set(values) != {"control", "experiment"}:
                raise CanaryJudgeError(f"metric {name!r}: expected {{'control': [...], 'experiment': [...]}}")
            items.append(MetricSetPair(str(name), values["control"], values["experiment"]))
    else:
        items = list(metrics)
    for pair in items:
        if not isinstance(pair, MetricSetPair):
            raise CanaryJudgeError(f"expected MetricSetPair objects, got {type(pair).__name__}")
        if pair.name in pairs:
            raise CanaryJudgeError(f"metric {pair.name!r} appears more than once in the data")
        pairs[pair.name] = (
            _series(pair.control, f"metric {pair.name!r} control"),
            _series(pair.experiment, f"metric {pair.name!r} experiment"),
        )
    return pairs


def classify_metric(metric: MetricConfig, control: Any, experiment: Any) -> MetricResult:
    """``NetflixACAJudge.classifyMetric``: preprocess, summarize and classify one metric."""
    control_values = preprocess(control, metric.nan_strategy, metric.outlier_strategy, metric.outlier_factor)
    experiment_values = preprocess(experiment, metric.nan_strategy, metric.outlier_strategy, metric.outlier_factor)
    classifier = MannWhitneyClassifier(
        tolerance=JUDGE_TOLERANCE,
        conf_level=JUDGE_CONF_LEVEL,
        effect_size_thresholds=metric.effect_size_thresholds,
        critical_thresholds=metric.critical_thresholds,
        effect_size_measure=metric.effect_size_measure,
    )
    classification: MetricClassification = classifier.classify(
        control_values,
        experiment_values,
        metric.direction,
        metric.nan_strategy,
        metric.critical,
        metric.must_have_data,
        metric_name=metric.name,
    )
    return MetricResult(
        name=metric.name,
        groups=metric.groups,
        label=classification.label,
        reason=classification.reason,
        critical=classification.critical,
        muted=metric.muted,
        ratio=classification.deviation,
        effect_size=classification.effect_size,
        effect_size_measure=metric.effect_size_measure,
        direction=metric.direction,
        control_stats=summary_stats(control_values),
        experiment_stats=summary_stats(experiment_values),
        test=classification.test,
    )


def judge_canary(
    config: CanaryConfig | Mapping[str, Any],
    thresholds: ScoreThresholds | Mapping[str, Any],
    metrics: Iterable[MetricSetPair] | Mapping[str, Mapping[str, Any]],
) -> JudgeResult:
    """Judge one canary run as Kayenta's ``NetflixACAJudge.judge(config, thresholds, pairs)``.

    ``config`` is a ``CanaryConfig`` or a Kayenta canary config mapping; ``thresholds``
    a ``ScoreThresholds`` or ``{"marginal": .., "pass": ..}`` (both required);
    ``metrics`` ``MetricSetPair`` objects or ``{name: {"control": [...], "experiment":
    [...]}}``. Raises ``CanaryJudgeError`` for an invalid config, thresholds or data,
    including a metric in the data that the config does not have.
    """
    canary_config = config if isinstance(config, CanaryConfig) else CanaryConfig.from_kayenta(config)
    try:
        score_thresholds = (
            thresholds if isinstance(thresholds, ScoreThresholds) else ScoreThresholds.from_mapping(thresholds)
        )
    except (TypeError, ValueError) as error:
        raise CanaryJudgeError(f"invalid score thresholds: {error}") from None
    if score_thresholds.marginal is None or score_thresholds.pass_score is None:
        raise CanaryJudgeError("the judge needs both score thresholds, marginal and pass")
    pairs = _pairs(metrics)
    for name in pairs:
        canary_config.metric(name)  # an unknown metric fails the whole judgement

    results = []
    for metric in canary_config.metrics:
        control, experiment = pairs.get(metric.name, ((), ()))
        results.append(classify_metric(metric, control, experiment))

    scored = score_results(results, canary_config.group_weights)
    warnings: tuple[str, ...] = ()
    if any(result.control_stats.count < MIN_CONTROL_POINTS for result in results):
        warnings = (LOW_DATA_WARNING,)
    return JudgeResult(
        score=scored.score,
        classification=classify_score(scored.score, score_thresholds),
        reason=scored.reason,
        thresholds=score_thresholds,
        results=tuple(results),
        group_scores=scored.group_scores,
        warnings=warnings,
    )


class NetflixACAJudge:
    """Kayenta's judge as an object: ``NetflixACAJudge().judge(config, thresholds, metrics)``.

    It has no settings: tolerance and confidence level are fixed, as in Kayenta.
    """

    name = JUDGE_NAME

    def judge(
        self,
        config: CanaryConfig | Mapping[str, Any],
        thresholds: ScoreThresholds | Mapping[str, Any],
        metrics: Iterable[MetricSetPair] | Mapping[str, Mapping[str, Any]],
    ) -> JudgeResult:
        """See ``judge_canary``."""
        return judge_canary(config, thresholds, metrics)
