"""Per-user limits checked before any upstream call: a message rate, and budgets in dollars a day and a month.

The rate is a sliding window on the injected clock: at most N accepted messages in any 60 seconds;
refused messages do not count, so a user who waits as told always gets through. Each budget is
checked before the call from what was already spent today, or this month (UTC); one answer may
overshoot it, the next is refused. Admins are exempt from all of them.

Every bot has a `Limits` policy (`Services.limits`): `UserLimits` where usage is recorded, or
`NoLimits`, which lets every message through, where nothing could be limited.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from typing import Protocol

from handlers.access import AccessPolicy
from integrations.clock import Clock
from integrations.prices import format_usd
from state.admin_settings import AdminSettings
from state.periods import Period, next_start
from state.usage import UsageRecorder

ADJECTIVE: dict[Period, str] = {"day": "daily", "month": "monthly"}


class MessageRate:
    """At most `limit` accepted messages per user in any `period` seconds."""

    def __init__(self, clock: Clock, limit: int, period: float = 60.0) -> None:
        self._clock = clock
        self._limit = limit
        self._period = period
        # A list per user rather than a deque: a deque takes 600 bytes however few it holds, and
        # a busy bot has a window for every user who wrote in the last minute.
        self._accepted: dict[int, list[float]] = {}
        self._last_sweep = clock.monotonic()

    def try_accept(self, user_id: int) -> float | None:
        """None if the message may go (and counts it), else the seconds until one may."""
        now = self._clock.monotonic()
        if now - self._last_sweep >= self._period:
            self._sweep(now)
        times = self._accepted.setdefault(user_id, [])
        _forget_before(times, now - self._period)
        if len(times) >= self._limit:
            return times[0] + self._period - now
        times.append(now)
        return None

    def _sweep(self, now: float) -> None:
        """Drop users with nothing left in their window, so idle users cost nothing."""
        self._last_sweep = now
        for user_id in list(self._accepted):
            times = self._accepted[user_id]
            _forget_before(times, now - self._period)
            if not times:
                del self._accepted[user_id]

    @property
    def tracked_users(self) -> int:
        return len(self._accepted)


def _forget_before(times: list[float], cutoff: float) -> None:
    del times[: bisect_right(times, cutoff)]


class Limits(Protocol):
    async def check(self, user_id: int) -> str | None:
        """None: go ahead (the message is counted). Otherwise the message to send instead of calling out."""
        ...


class NoLimits:
    """No message rate and no budget: for a bot that records no usage (handler tests, tools)."""

    async def check(self, user_id: int) -> str | None:
        return None


class UserLimits:
    def __init__(
        self,
        *,
        access: AccessPolicy,
        usage: UsageRecorder,
        settings: AdminSettings,
        clock: Clock,
        messages_per_minute: int,
        default_daily_budget: float | None,
        default_monthly_budget: float | None = None,
    ) -> None:
        self._access = access
        self._usage = usage
        self._settings = settings
        self._clock = clock
        self._rate = MessageRate(clock, messages_per_minute)
        self.messages_per_minute = messages_per_minute
        self._defaults: dict[Period, float | None] = {"day": default_daily_budget, "month": default_monthly_budget}

    def exempt(self, user_id: int) -> bool:
        """Admins: neither the message rate nor any budget applies to them."""
        return self._access.is_admin(user_id)

    def default_budget(self, period: Period = "day") -> float | None:
        """The configured budget for `period` (USER_DAILY_BUDGET_USD, USER_MONTHLY_BUDGET_USD); None: no limit."""
        return self._defaults[period]

    def has_own_budget(self, user_id: int, period: Period = "day") -> bool:
        """Whether an admin gave the user their own budget for `period` with /budget."""
        return self._settings.budget_override(user_id, period) is not None

    def budget_for(self, user_id: int, period: Period = "day") -> float | None:
        """The user's budget for `period` in USD (an admin's /budget wins over the default); None: no limit.

        Says nothing of exemption: an admin's budget is what would apply were they not one.
        """
        override = self._settings.budget_override(user_id, period)
        return override.usd if override is not None else self._defaults[period]

    async def check(self, user_id: int) -> str | None:
        """None: go ahead (the message is counted). Otherwise the message to send instead of calling out."""
        if self.exempt(user_id):
            return None
        refusal = await self._over_budget(user_id)
        if refusal is not None:
            return refusal
        wait = self._rate.try_accept(user_id)
        if wait is not None:
            return (
                f"Please slow down: I take at most {self.messages_per_minute} messages a minute from you. "
                f"Try again in {math.ceil(wait)} s."
            )
        return None

    async def _over_budget(self, user_id: int) -> str | None:
        # The month first: when both are spent, its reset is the one the user waits for.
        periods: tuple[Period, ...] = ("month", "day")
        budgets = [(period, self.budget_for(user_id, period)) for period in periods]
        if all(budget is None for _, budget in budgets):
            return None
        spending = await self._usage.spending(user_id)
        for period, budget in budgets:
            spent = (spending.month if period == "month" else spending.today).cost_usd
            if budget is not None and spent >= budget:
                return (
                    f"You've used {format_usd(spent)} of your {format_usd(budget)} {ADJECTIVE[period]} budget; "
                    f"it resets {self.reset_note(period)}."
                )
        return None

    def reset_note(self, period: Period) -> str:
        """When the budget for `period` starts again, as in "at 00:00 UTC (in 3 h 5 min)"."""
        now = self._clock.now()
        at = next_start(now, period)
        wait = _duration((at - now).total_seconds())
        if period == "day":
            return f"at 00:00 UTC (in {wait})"
        return f"on {at.day} {at:%B} at 00:00 UTC (in {wait})"


def _duration(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    if hours >= 24:
        days, hours = divmod(hours, 24)
        return f"{days} {'day' if days == 1 else 'days'} {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
