"""Execution windows: the next moment at which a stage may start."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _parse(hhmm: str) -> time:
    h, m = hhmm.split(":")
    return time(int(h), int(m))


def in_window(window: dict[str, Any], moment: datetime) -> bool:
    """Whether ``moment`` (aware) falls inside the window."""
    tz = ZoneInfo(window.get("timezone") or "UTC")
    local = moment.astimezone(tz)
    days = window.get("days") or _DAYS
    hours = window.get("hours") or []
    if not hours:
        return _DAYS[local.weekday()] in days
    t = local.time().replace(second=0, microsecond=0)
    for r in hours:
        start, end = _parse(r["start"]), _parse(r["end"])
        if start <= end:
            if start <= t < end and _DAYS[local.weekday()] in days:
                return True
        else:  # wraps midnight: the day is the day the range starts
            if t >= start and _DAYS[local.weekday()] in days:
                return True
            if t < end and _DAYS[(local.weekday() - 1) % 7] in days:
                return True
    return False


def next_window_start(window: dict[str, Any], now: datetime) -> datetime:
    """``now`` if inside the window, else the first minute at which it opens (within 8 days)."""
    if in_window(window, now):
        return now
    tz = ZoneInfo(window.get("timezone") or "UTC")
    local = now.astimezone(tz).replace(second=0, microsecond=0)
    candidates = []
    hours = window.get("hours") or [{"start": "00:00", "end": "00:00"}]
    for day in range(0, 9):
        base = (local + timedelta(days=day)).date()
        for r in hours:
            start = datetime.combine(base, _parse(r["start"]), tzinfo=tz)
            if start > now and in_window(window, start):
                candidates.append(start)
    if not candidates:
        raise ValueError(f"execution window {window} never opens")
    return min(candidates)
