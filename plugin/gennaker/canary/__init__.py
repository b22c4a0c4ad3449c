"""The canary judge: Kayenta's NetflixACAJudge (Mann-Whitney classifier, weighted scoring) in Python.

Pure computation, no I/O. ``judge_canary(config, thresholds, metrics)`` judges one canary run
(the package's ``judge`` attribute is the ``gennaker.canary.judge`` module);
``plan_intervals`` and ``aggregate_interval_scores`` are the stage's interval planning
and final verdict as Orca's ``kayentaCanary`` stage does them. See docs/canary.md.

Names are imported lazily (numpy only when a judgement runs), so DAG files may import
this package at parse time.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Direction": "gennaker.canary.classifier",
    "EffectSizeMeasure": "gennaker.canary.classifier",
    "Label": "gennaker.canary.classifier",
    "MannWhitneyClassifier": "gennaker.canary.classifier",
    "MeanInequalityClassifier": "gennaker.canary.classifier",
    "MetricClassification": "gennaker.canary.classifier",
    "AnalysisWindow": "gennaker.canary.intervals",
    "CanaryVerdict": "gennaker.canary.intervals",
    "IntervalPlan": "gennaker.canary.intervals",
    "ORCA_DEFAULT_THRESHOLDS": "gennaker.canary.intervals",
    "aggregate_interval_scores": "gennaker.canary.intervals",
    "interval_continues": "gennaker.canary.intervals",
    "plan_intervals": "gennaker.canary.intervals",
    "CanaryConfig": "gennaker.canary.judge",
    "CanaryJudgeError": "gennaker.canary.judge",
    "JUDGE_CONF_LEVEL": "gennaker.canary.judge",
    "JUDGE_NAME": "gennaker.canary.judge",
    "JUDGE_TOLERANCE": "gennaker.canary.judge",
    "JudgeResult": "gennaker.canary.judge",
    "MetricConfig": "gennaker.canary.judge",
    "MetricResult": "gennaker.canary.judge",
    "MetricSetPair": "gennaker.canary.judge",
    "NetflixACAJudge": "gennaker.canary.judge",
    "judge_canary": "gennaker.canary.judge",
    "MannWhitneyResult": "gennaker.canary.mannwhitney",
    "mann_whitney": "gennaker.canary.mannwhitney",
    "NanStrategy": "gennaker.canary.preprocess",
    "OutlierStrategy": "gennaker.canary.preprocess",
    "ScoreClassification": "gennaker.canary.scorer",
    "ScoreThresholds": "gennaker.canary.scorer",
    "classify_score": "gennaker.canary.scorer",
    "score_results": "gennaker.canary.scorer",
    "SummaryStats": "gennaker.canary.stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gennaker.canary' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
