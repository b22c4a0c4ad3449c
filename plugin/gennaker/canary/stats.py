"""Descriptive statistics and effect sizes used by the canary judge.

These reproduce ``kayenta-judge``'s ``stats`` helpers (``DescriptiveStatistics``,
``EffectSizes``), which are thin wrappers over Apache commons-math:

* percentiles are commons-math ``Percentile`` with ``EstimationType.R_7``, i.e. R's
  default ``quantile(type = 7)`` and numpy's default ``linear`` method;
* summary statistics are ``min``, ``max``, ``mean``, the *sample* standard deviation
  (``n - 1``) and ``count``, all ``0`` for an empty series;
* the mean ratio is ``mean(experiment) / mean(control)``, NaN when either mean is 0;
* Cohen's d uses the pooled sample standard deviation and is reported as a magnitude;
* CLES (common-language effect size) is ``P(experiment > control) + P(tie) / 2``,
  computed from the rank sum of the experiment in the pooled sample.

numpy is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]

__all__ = [
    "SummaryStats",
    "as_float_array",
    "cles",
    "cohen_d",
    "mean_ratio",
    "percentile",
    "summary_stats",
]


def as_float_array(values: Sequence[float] | Any) -> FloatArray:
    """``values`` as a one-dimensional float64 numpy array (a copy only when needed)."""
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"expected a one-dimensional series of numbers, got an array of shape {array.shape}")
    return array


def percentile(values: Sequence[float] | Any, p: float) -> float:
    """The ``p``-th percentile (0 < p <= 100) with linear interpolation (R-7).

    commons-math's ``Percentile(R_7)``, as Kayenta uses it: NaN for an empty series.
    """
    import numpy as np

    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be between 0 and 100, got {p}")
    array = as_float_array(values)
    if array.size == 0:
        return math.nan
    return float(np.percentile(array, p, method="linear"))


@dataclass(frozen=True)
class SummaryStats:
    """Kayenta's ``MetricStatistics``: what the judge reports per series after preprocessing."""

    count: int
    mean: float
    std: float
    min: float
    max: float

    def to_dict(self) -> dict[str, float | int]:
        """The statistics as Kayenta reports them (``controlMetadata.stats``)."""
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


def summary_stats(values: Sequence[float] | Any) -> SummaryStats:
    """min, max, mean, sample standard deviation (n - 1) and count; all zero when empty.

    A single value has a standard deviation of 0 (commons-math), not NaN.
    """
    import numpy as np

    array = as_float_array(values)
    n = int(array.size)
    if n == 0:
        return SummaryStats(count=0, mean=0.0, std=0.0, min=0.0, max=0.0)
    with np.errstate(invalid="ignore", over="ignore"):  # infinite points give NaN/inf statistics, not warnings
        std = float(array.std(ddof=1)) if n > 1 else 0.0
        mean = float(array.mean())
    return SummaryStats(count=n, mean=mean, std=std, min=float(array.min()), max=float(array.max()))


def mean_ratio(control: Sequence[float] | Any, experiment: Sequence[float] | Any) -> float:
    """``mean(experiment) / mean(control)``; NaN when either mean is exactly 0 or a series is empty.

    This is the "deviation" Kayenta reports as ``resultMetadata.ratio`` and its default
    effect-size measure (``meanRatio``).
    """
    control_array = as_float_array(control)
    experiment_array = as_float_array(experiment)
    if control_array.size == 0 or experiment_array.size == 0:
        return math.nan
    control_mean = float(control_array.mean())
    experiment_mean = float(experiment_array.mean())
    if control_mean == 0.0 or experiment_mean == 0.0:
        return math.nan
    return experiment_mean / control_mean


def cohen_d(control: Sequence[float] | Any, experiment: Sequence[float] | Any) -> float:
    """Cohen's d: ``|mean(experiment) - mean(control)| / pooled sample sd``.

    The pooled variance is ``((n1 - 1) s1^2 + (n2 - 1) s2^2) / (n1 + n2 - 2)``. Kayenta
    computes it as a benchmark effect size; the judge does not use it. NaN when a
    series has fewer than 2 points in total or the pooled sd is 0.
    """
    control_array = as_float_array(control)
    experiment_array = as_float_array(experiment)
    n1, n2 = int(control_array.size), int(experiment_array.size)
    if n1 == 0 or n2 == 0 or n1 + n2 <= 2:
        return math.nan
    var1 = float(control_array.var(ddof=1)) if n1 > 1 else 0.0
    var2 = float(experiment_array.var(ddof=1)) if n2 > 1 else 0.0
    pooled = math.sqrt(((n1 - 1) * var1 + (n2 - 1) * var2) / (n1 + n2 - 2))
    if pooled == 0.0:
        return math.nan
    return abs(float(experiment_array.mean()) - float(control_array.mean())) / pooled


def cles(control: Sequence[float] | Any, experiment: Sequence[float] | Any) -> float:
    """Common-language effect size ``(2 R1 - m (m + 1)) / (2 m n)``.

    ``R1`` is the sum of the experiment's average ranks in the pooled sample, ``m`` the
    experiment's and ``n`` the control's size: the probability that a random canary point
    exceeds a random baseline point, ties counting one half. 0.5 means no difference,
    1.0 that the canary is always higher. NaN when either series is empty.
    """
    import numpy as np

    control_array = np.sort(as_float_array(control))
    experiment_array = as_float_array(experiment)
    m, n = int(experiment_array.size), int(control_array.size)
    if m == 0 or n == 0:
        return math.nan
    # R1 = m(m+1)/2 + sum over the experiment of (#control below + #control tied / 2),
    # so 2 R1 - m(m+1) = sum(#below + #below-or-equal).
    below = np.searchsorted(control_array, experiment_array, side="left")
    below_or_equal = np.searchsorted(control_array, experiment_array, side="right")
    twice_u = int(below.sum()) + int(below_or_equal.sum())
    return twice_u / (2.0 * m * n)
