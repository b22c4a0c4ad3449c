"""The capacity a resize asks for, and capacities in words."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gennaker.cloud.model import Capacity


def new_capacity(
    current: Capacity,
    *,
    capacity: Mapping[str, int] | None = None,
    scale_by: int | None = None,
    scale_percent: int | None = None,
) -> Capacity:
    """The capacity a resize asks for.

    - ``capacity``: exactly that;
    - ``scale_by``: desired plus that number (never below 0);
    - ``scale_percent``: desired grown or shrunk by that percentage, rounded up (so +10% of
      one instance adds one, and -50% of three leaves two); -100% is 0.

    When scaling, min and max widen just enough to hold the new desired count.
    """
    from gennaker.cloud.model import Capacity

    given = [x for x in (capacity, scale_by, scale_percent) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of capacity, scale_by or scale_percent")
    if capacity is not None:
        return Capacity(min=capacity["min"], max=capacity["max"], desired=capacity["desired"])
    if scale_by is not None:
        desired = max(0, current.desired + scale_by)
    else:
        assert scale_percent is not None
        desired = max(0, math.ceil(current.desired * (100 + scale_percent) / 100))
    return Capacity(min=min(current.min, desired), max=max(current.max, desired), desired=desired)


def count_words(n: int) -> str:
    """``1 instance``, ``3 instances``."""
    return f"{n} instance" + ("" if n == 1 else "s")


def capacity_words(c: Capacity) -> str:
    """``2 instances (min 1, max 4)``."""
    return f"{count_words(c.desired)} (min {c.min}, max {c.max})"


__all__ = ["capacity_words", "count_words", "new_capacity"]
