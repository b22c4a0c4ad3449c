"""Preprocessing of a metric's series before it is classified (Kayenta's ``Transforms``).

``NetflixACAJudge.transformMetric`` applies, to the control and the experiment
separately, first the NaN strategy and then the outlier strategy:

* NaN: ``remove`` (the default) drops NaNs; ``replace`` maps them to ``0.0`` (for
  counters, a missing point usually means no events).
* outliers: ``keep`` (the default since Kayenta #621, 2019-10) leaves the data alone;
  ``remove`` drops the points outside the fences of ``IQRDetector(outlierFactor,
  reduceSensitivity = true)``.

The IQR detector uses Tukey's fences ``[Q1 - f * IQR, Q3 + f * IQR]`` with R-7
percentiles. "Reduced sensitivity" widens them to ``[min(P1, lower), max(P99, upper)]``
so that at most about 1 % of the points on either side can ever be dropped. A point is
an outlier when it lies strictly outside the fences. The k-sigma detector (outlier when
``|x - mean| > k * population sd``) is in Kayenta's library but not used by the judge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from gennaker.canary.stats import as_float_array

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]
    BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "DEFAULT_OUTLIER_FACTOR",
    "NanStrategy",
    "OutlierStrategy",
    "iqr_outlier_mask",
    "ksigma_outlier_mask",
    "preprocess",
    "remove_nans",
    "remove_outliers",
    "replace_nans",
]

#: The judge's default ``outliers.outlierFactor``.
DEFAULT_OUTLIER_FACTOR = 3.0


class NanStrategy(str, Enum):
    """``analysisConfigurations.canary.nanStrategy``."""

    REMOVE = "remove"
    REPLACE = "replace"


class OutlierStrategy(str, Enum):
    """``analysisConfigurations.canary.outliers.strategy``."""

    KEEP = "keep"
    REMOVE = "remove"


def remove_nans(values: Sequence[float] | Any) -> FloatArray:
    """The series without its NaN points."""
    import numpy as np

    array = as_float_array(values)
    return array[~np.isnan(array)]


def replace_nans(values: Sequence[float] | Any, value: float = 0.0) -> FloatArray:
    """The series with every NaN point replaced by ``value`` (Kayenta replaces with 0.0)."""
    import numpy as np

    array = as_float_array(values)
    return np.where(np.isnan(array), value, array)


def iqr_outlier_mask(
    values: Sequence[float] | Any, factor: float = 1.5, *, reduce_sensitivity: bool = False
) -> BoolArray:
    """True for every point outside the interquartile-range fences (Kayenta's ``IQRDetector``).

    ``factor`` defaults to 1.5 and ``reduce_sensitivity`` to False, as in Kayenta's class;
    the judge builds it with ``outlierFactor`` (3.0 by default) and ``reduce_sensitivity=True``.
    """
    import numpy as np

    if factor < 0:
        raise ValueError(f"the IQR outlier factor must not be negative, got {factor}")
    array = as_float_array(values)
    if array.size == 0:
        return np.zeros(0, dtype=bool)
    p01, q1, q3, p99 = np.percentile(array, [1.0, 25.0, 75.0, 99.0], method="linear")
    iqr = q3 - q1
    lower = q1 - factor * iqr
    upper = q3 + factor * iqr
    if reduce_sensitivity:
        lower = min(p01, lower)
        upper = max(p99, upper)
    mask: BoolArray = (array < lower) | (array > upper)
    return mask


def ksigma_outlier_mask(values: Sequence[float] | Any, k: float = 3.0) -> BoolArray:
    """True for every point farther than ``k`` population standard deviations from the mean."""
    import numpy as np

    if k < 0:
        raise ValueError(f"k must not be negative, got {k}")
    array = as_float_array(values)
    if array.size == 0:
        return np.zeros(0, dtype=bool)
    mask: BoolArray = np.abs(array - array.mean()) > k * array.std(ddof=0)
    return mask


def remove_outliers(
    values: Sequence[float] | Any, detector: Callable[[FloatArray], BoolArray] | None = None
) -> FloatArray:
    """The series without the points ``detector`` flags (default: ``iqr_outlier_mask`` with factor 1.5)."""
    array = as_float_array(values)
    mask = detector(array) if detector is not None else iqr_outlier_mask(array)
    kept: FloatArray = array[~mask]
    return kept


def preprocess(
    values: Sequence[float] | Any,
    nan_strategy: NanStrategy = NanStrategy.REMOVE,
    outlier_strategy: OutlierStrategy = OutlierStrategy.KEEP,
    outlier_factor: float = DEFAULT_OUTLIER_FACTOR,
) -> FloatArray:
    """The judge's ``transformMetric``: NaN handling, then (optionally) IQR outlier removal."""
    if nan_strategy is NanStrategy.REPLACE:
        array = replace_nans(values)
    else:
        array = remove_nans(values)
    if outlier_strategy is OutlierStrategy.REMOVE:
        array = array[~iqr_outlier_mask(array, outlier_factor, reduce_sensitivity=True)]
    return array
