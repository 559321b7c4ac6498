"""The UTC spans budgets run over, a day and a month: where each starts and when the next begins."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Literal

Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")


def period_start(day: date, period: Period) -> date:
    """The first UTC date of the period holding `day`."""
    return day if period == "day" else day.replace(day=1)


def next_start(now: datetime, period: Period) -> datetime:
    """The UTC instant the period after the one holding `now` begins (its budget resets)."""
    today = now.astimezone(timezone.utc).date()
    if period == "day":
        first = today + timedelta(days=1)
    else:
        first = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    return datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
