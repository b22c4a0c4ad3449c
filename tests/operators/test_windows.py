from datetime import datetime, timezone

import pytest

from gennaker.operators.windows import in_window, next_window_start

UTC = timezone.utc
WEEKDAYS_9_TO_17 = {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": [{"start": "09:00", "end": "17:00"}]}


def test_inside_window_starts_now():
    now = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # a Wednesday
    assert in_window(WEEKDAYS_9_TO_17, now)
    assert next_window_start(WEEKDAYS_9_TO_17, now) == now


def test_end_is_exclusive_and_next_opening_is_next_morning():
    now = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)
    assert not in_window(WEEKDAYS_9_TO_17, now)
    assert next_window_start(WEEKDAYS_9_TO_17, now) == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def test_friday_evening_waits_for_monday():
    now = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)  # Friday
    assert next_window_start(WEEKDAYS_9_TO_17, now) == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_window_in_another_timezone():
    window = {**WEEKDAYS_9_TO_17, "timezone": "Europe/Berlin"}
    # 08:30 UTC is 09:30 in Berlin (CET, UTC+1)
    assert in_window(window, datetime(2026, 11, 25, 8, 30, tzinfo=UTC))
    assert not in_window(window, datetime(2026, 11, 25, 7, 30, tzinfo=UTC))
    assert next_window_start(window, datetime(2026, 11, 25, 7, 30, tzinfo=UTC)) == datetime(
        2026, 11, 25, 8, 0, tzinfo=UTC
    )


def test_range_across_midnight_belongs_to_the_day_it_starts():
    window = {"days": ["fri"], "hours": [{"start": "22:00", "end": "02:00"}]}
    assert in_window(window, datetime(2026, 11, 27, 23, 0, tzinfo=UTC))  # Friday night
    assert in_window(window, datetime(2026, 11, 28, 1, 0, tzinfo=UTC))  # early Saturday
    assert not in_window(window, datetime(2026, 11, 29, 1, 0, tzinfo=UTC))  # early Sunday


def test_days_only_window():
    window = {"days": ["sat", "sun"], "hours": []}
    assert next_window_start(window, datetime(2026, 11, 26, 12, 0, tzinfo=UTC)) == datetime(
        2026, 11, 28, 0, 0, tzinfo=UTC
    )


def test_window_that_never_opens_is_an_error():
    with pytest.raises(ValueError, match="never opens"):
        next_window_start({"days": [], "hours": [{"start": "09:00", "end": "09:00"}]}, datetime.now(UTC))
