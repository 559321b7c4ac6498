"""Per-user limits checked before any upstream call: a message rate and a daily budget in dollars.

The rate is a sliding window on the injected clock: at most N accepted messages in any 60 seconds;
refused messages do not count, so a user who waits as told always gets through. The budget is
checked before the call from what was already spent today (UTC); one answer may overshoot it,
the next is refused. Admins are exempt from both.

Every bot has a `Limits` policy (`Services.limits`): `UserLimits` where usage is recorded, or
`NoLimits`, which lets every message through, where nothing could be limited.
"""
from __future__ import annotations

import math
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Protocol

from handlers.access import AccessPolicy
from integrations.prices import format_usd
from integrations.resilience.clock import Clock
from state.admin_settings import AdminSettings
from state.usage import UsageRecorder


class MessageRate:
    """At most `limit` accepted messages per user in any `period` seconds."""

    def __init__(self, clock: Clock, limit: int, period: float = 60.0) -> None:
        self._clock = clock
        self._limit = limit
        self._period = period
        self._accepted: dict[int, deque[float]] = {}
        self._last_sweep = clock.monotonic()

    def try_accept(self, user_id: int) -> float | None:
        """None if the message may go (and counts it), else the seconds until one may."""
        now = self._clock.monotonic()
        if now - self._last_sweep >= self._period:
            self._sweep(now)
        times = self._accepted.setdefault(user_id, deque())
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


def _forget_before(times: deque[float], cutoff: float) -> None:
    while times and times[0] <= cutoff:
        times.popleft()


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
    ) -> None:
        self._access = access
        self._usage = usage
        self._settings = settings
        self._clock = clock
        self._rate = MessageRate(clock, messages_per_minute)
        self.messages_per_minute = messages_per_minute
        self.default_daily_budget = default_daily_budget

    def exempt(self, user_id: int) -> bool:
        """Admins: neither the message rate nor any budget applies to them."""
        return self._access.is_admin(user_id)

    def budget_for(self, user_id: int) -> float | None:
        """The user's daily budget in USD (an admin's /budget wins over the default); None: no limit.

        Says nothing of exemption: an admin's budget is what would apply were they not one.
        """
        override = self._settings.budget_override(user_id)
        return override.daily_usd if override is not None else self.default_daily_budget

    async def check(self, user_id: int) -> str | None:
        """None: go ahead (the message is counted). Otherwise the message to send instead of calling out."""
        if self.exempt(user_id):
            return None
        budget = self.budget_for(user_id)
        if budget is not None:
            spent = await self._usage.spent_today(user_id)
            if spent >= budget:
                return (
                    f"You've used {format_usd(spent)} of your {format_usd(budget)} daily budget; "
                    f"it resets at 00:00 UTC (in {_duration(self._until_midnight())})."
                )
        wait = self._rate.try_accept(user_id)
        if wait is not None:
            return (
                f"Please slow down: I take at most {self.messages_per_minute} messages a minute from you. "
                f"Try again in {math.ceil(wait)} s."
            )
        return None

    def _until_midnight(self) -> float:
        now = self._clock.now().astimezone(timezone.utc)
        midnight = datetime(now.year, now.month, now.day, tzinfo=timezone.utc) + timedelta(days=1)
        return (midnight - now).total_seconds()


def _duration(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
