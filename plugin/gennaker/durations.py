"""Durations as people write them: ``30s``, ``5m``, ``2h``, ``1h30m``, ``1d``, ISO 8601 ``PT30M``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_HUMAN = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d|w)", re.IGNORECASE)
_ISO = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)

PATTERN_HELP = "a duration such as 30s, 5m, 2h, 1h30m, 1d or ISO 8601 PT30M"


def parse_duration(value: Any) -> timedelta:
    """Parse a duration; a bare number is seconds. Raises ValueError with a readable message."""
    try:
        return _parse_duration(value)
    except OverflowError:  # .inf, 1e20, 99999999999d: timedelta cannot hold it
        raise ValueError(f"{value!r} is too long for a duration") from None


def _parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected {PATTERN_HELP}, got {value!r}")
    if isinstance(value, int | float):
        if value != value:  # NaN (YAML .nan)
            raise ValueError(f"expected {PATTERN_HELP}, got NaN")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(f"expected {PATTERN_HELP}, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError(f"expected {PATTERN_HELP}, got an empty string")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    if text[0] in "Pp":
        match = _ISO.match(text)
        if not match or text.upper() in ("P", "PT") or text.upper().endswith("T"):
            raise ValueError(f"{value!r} is not an ISO 8601 duration (e.g. PT30M, P1DT2H)")
        parts = {k: float(v) for k, v in match.groupdict().items() if v}
        return timedelta(
            weeks=parts.get("w", 0),
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
        )
    pos = 0
    total = 0.0
    for match in _HUMAN.finditer(text):
        if text[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    else:
        if pos and not text[pos:].strip():
            return timedelta(seconds=total)
    raise ValueError(f"{value!r} is not {PATTERN_HELP}")


def format_duration(delta: timedelta) -> str:
    """The shortest human form: ``1h30m``, ``45s``."""
    seconds, millis = divmod(delta // timedelta(milliseconds=1), 1000)  # keep 250ms (int() made it 0s)
    if seconds == 0 and millis == 0:
        return "0s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out += f"{count}{unit}"
    return out + (f"{millis}ms" if millis else "")


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?\s*(ms|sec|min|s|m|h|d|w)\s*)+$|^P.+$"},
                {"type": "number", "minimum": 0},
            ],
            "description": PATTERN_HELP,
        }
    ),
]
