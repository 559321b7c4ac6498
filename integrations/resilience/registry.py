"""Every breaker, limiter and budget by name, so the admin `/status` command can show and reset them.

The registry owns no behaviour: it is built once in the composition root, the policies are
registered as they are created, and `snapshot()` hands out plain data that callers may keep or
change without touching the live objects.
"""
from __future__ import annotations

import copy
from typing import Protocol, TypeVar

from integrations.clock import Clock
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.compose import Upstream
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.snapshots import GovernorSnapshot, ResilienceSnapshot
from integrations.resilience.tokens import TokenBudget

V = TypeVar("V")


class ReportsPacing(Protocol):
    """The Telegram flood governor, as the registry sees it: something that reports its pacing."""

    def snapshot(self) -> GovernorSnapshot: ...


class Snapshotting(Protocol):
    def snapshot(self) -> ResilienceSnapshot: ...


class ResilienceRegistry:
    def __init__(
        self,
        clock: Clock,
        *,
        failure_threshold: int = 5,
        window: float = 60.0,
        cooldown: float = 30.0,
    ) -> None:
        self._clock = clock
        self._failure_threshold = failure_threshold
        self._window = window
        self._cooldown = cooldown
        self._breakers: dict[str, CircuitBreaker] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._budgets: dict[str, TokenBudget] = {}
        self._governor: ReportsPacing | None = None

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker called `name`, created with the registry's defaults on first use."""
        if name not in self._breakers:
            self._breakers[name] = CircuitBreaker(
                name, self._clock, failure_threshold=self._failure_threshold, window=self._window, cooldown=self._cooldown
            )
        return self._breakers[name]

    def limiter(self, name: str) -> RateLimiter:
        return self._limiters[name]

    def token_budget(self, name: str) -> TokenBudget:
        return self._budgets[name]

    def register_breaker(self, breaker: CircuitBreaker) -> CircuitBreaker:
        return _add(self._breakers, breaker.name, breaker)

    def register_limiter(self, limiter: RateLimiter) -> RateLimiter:
        return _add(self._limiters, limiter.name, limiter)

    def register_token_budget(self, budget: TokenBudget) -> TokenBudget:
        return _add(self._budgets, budget.name, budget)

    def register_upstream(self, upstream: Upstream) -> Upstream:
        """Register an upstream's breaker (unless it came from `breaker()`) and limiter."""
        if self._breakers.get(upstream.breaker.name) is not upstream.breaker:
            self.register_breaker(upstream.breaker)
        if upstream.limiter is not None:
            self.register_limiter(upstream.limiter)
        return upstream

    def register_governor(self, governor: ReportsPacing) -> None:
        """The Telegram flood governor (one per bot)."""
        if self._governor is not None:
            raise ValueError("a governor is already registered")
        self._governor = governor

    def reset_breaker(self, name: str) -> None:
        """Close the breaker `name`; KeyError if there is none."""
        self._breakers[name].reset()

    def snapshot(self) -> ResilienceSnapshot:
        snapshot: ResilienceSnapshot = {
            "breakers": {name: b.snapshot() for name, b in sorted(self._breakers.items())},
            "limiters": {name: limiter.snapshot() for name, limiter in sorted(self._limiters.items())},
            "token_budgets": {name: t.snapshot() for name, t in sorted(self._budgets.items())},
            "governor": self._governor.snapshot() if self._governor is not None else None,
        }
        return copy.deepcopy(snapshot)


def _add(table: dict[str, V], name: str, item: V) -> V:
    if name in table:
        raise ValueError(f"{name!r} is already registered")
    table[name] = item
    return item
