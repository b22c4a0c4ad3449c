from datetime import timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from gennaker.durations import Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("5min", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("2w", timedelta(weeks=2)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("5M", timedelta(minutes=5)),
        ("PT30M", timedelta(minutes=30)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("pt1.5s", timedelta(seconds=1.5)),
        ("P2W", timedelta(weeks=2)),
        ("90", timedelta(seconds=90)),
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        (0, timedelta(0)),
    ],
)
def test_parses_human_and_iso_forms(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10 minutes", "is not a duration such as 30s, 5m"),
        ("5x", "is not a duration"),
        ("abc5s", "is not a duration"),
        ("5s garbage", "is not a duration"),
        ("-5s", "is not a duration"),
        ("", "got an empty string"),
        ("P", "is not an ISO 8601 duration"),
        ("PT", "is not an ISO 8601 duration"),
        ("P1DT", "is not an ISO 8601 duration"),
        ("P1M", "is not an ISO 8601 duration"),  # months have no fixed length
        (-1, "cannot be negative"),
        (True, "got True"),
        ([1], "got list"),
    ],
)
def test_rejects_what_is_not_a_duration(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", [float("inf"), 1e20, "99999999999d", "P99999999999D"])
def test_too_long_is_a_value_error_not_a_crash(value: object) -> None:
    # An OverflowError would escape pydantic and crash the loader instead of pointing at the line.
    with pytest.raises(ValueError, match="too long for a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(minutes=120), "2h"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(seconds=1.5), "1s500ms"),
    ],
)
def test_formats_the_shortest_human_form(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
    assert parse_duration(text) == delta


def test_the_pydantic_type_parses_and_serialises() -> None:
    adapter = TypeAdapter(Duration)
    assert adapter.validate_python("1h30m") == timedelta(hours=1, minutes=30)
    assert adapter.dump_python(timedelta(minutes=90)) == "1h30m"
    with pytest.raises(ValidationError, match="is not a duration"):
        adapter.validate_python("soon")


def test_nan_is_not_a_duration():
    import pytest

    from gennaker.durations import parse_duration

    with pytest.raises(ValueError, match="NaN"):
        parse_duration(float("nan"))
