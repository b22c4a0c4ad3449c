"""The deploy strategies' plans: what happens to the older groups, and rolling weights."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gennaker.strategies import Older, Policy, plan_cleanup, rolling_weights

# Oldest first: v000 disabled, v001 disabled and scaled down, v002 enabled (the one serving before the deploy).
OLDER = [Older("app-v000", False, 2), Older("app-v001", False, 0), Older("app-v002", True, 2)]


def test_redblack_disables_the_enabled_older_groups_and_keeps_the_rest() -> None:
    plan = plan_cleanup(Policy("redblack"), OLDER)
    assert plan.disable == ("app-v002",)
    assert plan.destroy == () and plan.scale_down == ()
    assert plan.keep == ("app-v000", "app-v001", "app-v002")


def test_redblack_max_remaining_destroys_the_oldest_beyond_n() -> None:
    plan = plan_cleanup(Policy("redblack", max_remaining=1), OLDER)
    assert plan.destroy == ("app-v000", "app-v001")
    assert plan.keep == ("app-v002",)
    assert plan.describe() == "disable app-v002; destroy app-v000, app-v001"


def test_scale_down_old_shrinks_the_kept_groups_that_still_have_instances() -> None:
    plan = plan_cleanup(Policy("redblack", max_remaining=2, scale_down_old=True), OLDER)
    assert plan.destroy == ("app-v000",)
    assert plan.scale_down == ("app-v002",)  # v001 has no instances left


def test_highlander_destroys_every_older_group_after_disabling() -> None:
    plan = plan_cleanup(Policy("highlander"), OLDER)
    assert plan.disable == ("app-v002",)
    assert plan.destroy == ("app-v000", "app-v001", "app-v002")


def test_none_changes_nothing() -> None:
    plan = plan_cleanup(Policy("none"), OLDER)
    assert (plan.disable, plan.destroy, plan.scale_down) == ((), (), ())
    assert plan.describe() == "nothing to change in the older groups"
    assert not Policy("none").switches


def test_rolling_plans_as_redblack_once_at_100() -> None:
    assert plan_cleanup(Policy("rollingRedBlack", max_remaining=1), OLDER) == plan_cleanup(
        Policy("redblack", max_remaining=1), OLDER
    )


@pytest.mark.parametrize(
    ("older", "percent", "expected"),
    [
        (["v1"], 25, {"new": 25, "v1": 75}),
        (["v1", "v2"], 25, {"new": 25, "v1": 38, "v2": 37}),
        (["v1", "v2", "v3"], 50, {"new": 50, "v1": 17, "v2": 17, "v3": 16}),
        (["v1"], 100, {"new": 100}),
        ([], 30, {"new": 100}),
    ],
)
def test_rolling_weights_add_up_to_100(older: list[str], percent: int, expected: dict[str, int]) -> None:
    weights = rolling_weights("new", older, percent)
    assert weights == expected
    assert sum(weights.values()) == 100


def test_rolling_weights_refuse_a_share_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"1\.\.100"):
        rolling_weights("new", ["old"], 0)


def test_policy_from_the_spec_and_back() -> None:
    spec = {
        "type": "rollingRedBlack",
        "target_percentages": [10, 50, 100],
        "pause_between": 30.0,
        "max_remaining": 2,
        "scale_down_old": True,
        "delay_before_scale_down": timedelta(minutes=1),
        "rollback_on_failure": False,
    }
    policy = Policy.from_spec(spec)
    assert policy.target_percentages == (10, 50, 100)
    assert policy.pause_between == timedelta(seconds=30)
    assert policy.delay_before_scale_down == timedelta(minutes=1)
    assert not policy.rollback_on_failure
    assert Policy.from_spec({"type": "redblack"}).to_dict()["kind"] == "redblack"
    assert policy.to_dict()["pause_between"] == 30.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "bluegreen"}, "unknown deploy strategy 'bluegreen'"),
        ({"max_remaining": 0}, "maxRemaining must be at least 1"),
        ({"target_percentages": (50, 25, 100)}, "rise strictly to 100"),
        ({"target_percentages": (25, 50)}, "rise strictly to 100"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy(**kwargs)  # type: ignore[arg-type]
