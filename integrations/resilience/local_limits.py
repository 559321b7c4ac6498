"""Where the bot's limits come from: by default this instance's own (no REDIS_URL).

The composition root asks one limits source for every rate limiter, token budget, breaker and the
registry. `LocalLimits` builds the classes of this package; `shared_limits.SharedLimits` builds
their Redis-backed twins behind the same methods. The Telegram flood governor follows its `link`
(`bot.telegram.flood_governor.flood_governor_for`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from integrations.clock import Clock
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.tokens import TokenBudget

if TYPE_CHECKING:  # redis-py is optional: imported only where REDIS_URL is set
    from integrations.resilience.redis_link import RedisLink


class LocalLimits:
    """Every limit kept by this instance alone (no REDIS_URL): the default."""

    link: "RedisLink | None" = None

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def limiter(self, name: str, rate: float, per: float, *, burst: int | None = None) -> RateLimiter:
        return RateLimiter(name, rate, per, self.clock, burst=burst)

    def token_budget(self, name: str, tokens_per_minute: int) -> TokenBudget:
        return TokenBudget(name, tokens_per_minute, self.clock)

    def breaker(self, name: str, *, failure_threshold: int, window: float, cooldown: float) -> CircuitBreaker:
        return CircuitBreaker(name, self.clock, failure_threshold=failure_threshold, window=window, cooldown=cooldown)


    def registry(self, *, failure_threshold: int, window: float, cooldown: float) -> ResilienceRegistry:
        return ResilienceRegistry(self.clock, failure_threshold=failure_threshold, window=window, cooldown=cooldown)
