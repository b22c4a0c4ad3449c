"""Deploy strategies as Spinnaker users know them, as plans over a cluster's server groups.

The deploy and promote stages (:mod:`gennaker.operators.deploy`) carry the plans out;
this module only decides, so every rule is testable without a cloud.

==================  ===========================================================================
strategy            after the new group is healthy
==================  ===========================================================================
``redblack``        put it in service; after ``delayBeforeDisable`` disable every older enabled
                    group; keep ``maxRemaining`` older groups (destroy the older rest); with
                    ``scaleDownOld`` shrink the disabled ones that stay to zero after
                    ``delayBeforeScaleDown``
``highlander``      as redblack, then destroy every older group
``rollingRedBlack`` move traffic in steps (``targetPercentages``, e.g. 25, 50, 100): the load
                    balancers weigh the new group at that share and the older enabled ones at
                    the rest; health is checked (and ``pauseBetween`` waited) at each step; at
                    100 the older groups are disabled and the rest is as redblack
``none``            nothing: the group is added (in service unless ``traffic: false``)
==================  ===========================================================================

Until the older groups are disabled, a failure rolls the deploy back (unless
``rollbackOnFailure: false``): the new group is taken out of service (or destroyed, per
``rollback.action``) and the load balancers' weights are cleared, so the older groups
carry all traffic as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

REDBLACK = "redblack"
HIGHLANDER = "highlander"
ROLLING = "rollingRedBlack"
NONE = "none"
KINDS = (REDBLACK, HIGHLANDER, ROLLING, NONE)


@dataclass(frozen=True)
class Policy:
    """What a deploy (or a promote) does around the switch of traffic to the new group."""

    kind: str = REDBLACK
    max_remaining: int | None = None
    delay_before_disable: timedelta = timedelta(0)
    scale_down_old: bool = False
    delay_before_scale_down: timedelta = timedelta(0)
    rollback_on_failure: bool = True
    target_percentages: tuple[int, ...] = (100,)
    pause_between: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown deploy strategy {self.kind!r} (one of {', '.join(KINDS)})")
        if self.max_remaining is not None and self.max_remaining < 1:
            raise ValueError("maxRemaining must be at least 1")
        steps = list(self.target_percentages)
        if not steps or steps != sorted(set(steps)) or steps[-1] != 100 or steps[0] <= 0:
            raise ValueError(f"targetPercentages must rise strictly to 100, not {steps}")

    @property
    def switches(self) -> bool:
        """Whether the strategy moves traffic off the older groups at all."""
        return self.kind != NONE

    @classmethod
    def from_spec(cls, strategy: Mapping[str, Any]) -> Policy:
        """From a spec's strategy (the model dumped in Python names, durations as timedelta)."""
        kind = str(strategy.get("type", REDBLACK))
        return cls(
            kind=kind,
            max_remaining=strategy.get("max_remaining"),
            delay_before_disable=_delta(strategy.get("delay_before_disable")),
            scale_down_old=bool(strategy.get("scale_down_old", False)),
            delay_before_scale_down=_delta(strategy.get("delay_before_scale_down")),
            rollback_on_failure=bool(strategy.get("rollback_on_failure", True)),
            target_percentages=tuple(strategy.get("target_percentages") or (100,)),
            pause_between=_delta(strategy.get("pause_between")),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (seconds for durations), for XCom and defer kwargs."""
        return {
            "kind": self.kind,
            "max_remaining": self.max_remaining,
            "delay_before_disable": self.delay_before_disable.total_seconds(),
            "scale_down_old": self.scale_down_old,
            "delay_before_scale_down": self.delay_before_scale_down.total_seconds(),
            "rollback_on_failure": self.rollback_on_failure,
            "target_percentages": list(self.target_percentages),
            "pause_between": self.pause_between.total_seconds(),
        }


def _delta(value: Any) -> timedelta:
    if value is None:
        return timedelta(0)
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=float(value))


@dataclass(frozen=True)
class Cleanup:
    """What happens to the older groups once the new one serves."""

    disable: tuple[str, ...] = ()
    destroy: tuple[str, ...] = ()
    scale_down: tuple[str, ...] = ()
    keep: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        parts = []
        if self.disable:
            parts.append(f"disable {', '.join(self.disable)}")
        if self.destroy:
            parts.append(f"destroy {', '.join(self.destroy)}")
        if self.scale_down:
            parts.append(f"scale {', '.join(self.scale_down)} down to 0")
        return "; ".join(parts) or "nothing to change in the older groups"


@dataclass(frozen=True)
class Older:
    """An older server group of the cluster, as the plan needs it."""

    name: str
    enabled: bool
    desired: int


def plan_cleanup(policy: Policy, older: Sequence[Older]) -> Cleanup:
    """The older groups (oldest first) to disable, destroy and scale down after the switch."""
    if not policy.switches:
        return Cleanup(keep=tuple(g.name for g in older))
    disable = tuple(g.name for g in older if g.enabled)
    if policy.kind == HIGHLANDER:
        return Cleanup(disable=disable, destroy=tuple(g.name for g in older))
    destroy: tuple[str, ...] = ()
    kept = list(older)
    if policy.max_remaining is not None and len(older) > policy.max_remaining:
        cut = len(older) - policy.max_remaining
        destroy = tuple(g.name for g in older[:cut])
        kept = list(older[cut:])
    scale_down = tuple(g.name for g in kept if g.desired > 0) if policy.scale_down_old else ()
    return Cleanup(disable=disable, destroy=destroy, scale_down=scale_down, keep=tuple(g.name for g in kept))


def rolling_weights(new: str, older_enabled: Sequence[str], percent: int) -> dict[str, int]:
    """Load-balancer weights (shares of 100) that send ``percent`` of the traffic to ``new``.

    The rest is split evenly over the older enabled groups (the first ones get the
    remainder, so the weights always add up to 100). At 100 %, or with no older group,
    the new group takes everything.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"a traffic share must be 1..100, not {percent}")
    if percent == 100 or not older_enabled:
        return {new: 100}
    rest = 100 - percent
    share, extra = divmod(rest, len(older_enabled))
    weights = {new: percent}
    for i, name in enumerate(older_enabled):
        weights[name] = share + (1 if i < extra else 0)
    return weights


__all__ = [
    "HIGHLANDER",
    "KINDS",
    "NONE",
    "REDBLACK",
    "ROLLING",
    "Cleanup",
    "Older",
    "Policy",
    "plan_cleanup",
    "rolling_weights",
]
