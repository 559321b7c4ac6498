"""A tokens-per-minute budget: reserve an estimate before a call, settle with the real usage after.

The budget is a `RateLimiter` whose units are tokens: `tokens_per_minute` earned per 60 s, a full
minute's worth bankable. Reservations wait in arrival order until the estimate fits. Because the
estimate is a guess, `Reservation.settle` charges the difference the API reported (a refund when
the call used less). An estimate larger than the whole budget waits for a full budget and then
overdraws it: the upstream, not us, decides whether such a request is acceptable. With
`max_wait`, a reservation that would wait longer raises `WaitTooLong` instead (see `RateLimiter`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from integrations.clock import Clock
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.snapshots import TokenBudgetSnapshot


@dataclass
class Reservation:
    budget: "TokenBudget"
    estimate: int
    settled: bool = field(default=False, init=False)

    def settle(self, actual: int) -> None:
        """Correct the budget with the usage the API reported; only the first call counts."""
        if self.settled:
            return
        self.settled = True
        self.budget._correct(actual - self.estimate)


class TokenBudget:
    def __init__(self, name: str, tokens_per_minute: int, clock: Clock) -> None:
        self.name = name
        self.tokens_per_minute = tokens_per_minute
        self._bucket = RateLimiter(name, tokens_per_minute, 60.0, clock, burst=tokens_per_minute)

    async def reserve(self, estimate: int, *, max_wait: float | None = None) -> Reservation:
        await self._bucket.acquire(max(0, estimate), max_wait=max_wait)
        return Reservation(self, max(0, estimate))

    def tighten(self, remaining: int, reset_after: float, limit: int | None = None) -> None:
        """Headers say only `remaining` tokens (of `limit`) are left until the reset: spend no more before it."""
        self._bucket.tighten(remaining, reset_after, limit)

    def snapshot(self) -> TokenBudgetSnapshot:
        bucket = self._bucket.snapshot()
        return {
            "name": self.name,
            "tokens_per_minute": self.tokens_per_minute,
            "available": bucket["available"],
            "waiting": bucket["waiting"],
            "tightened": bucket["tightened"],
        }

    def _correct(self, difference: int) -> None:
        if difference:
            self._bucket.charge(difference)
