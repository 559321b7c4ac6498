"""Limits shared by all instances through Redis (REDIS_URL): the shared twin of `LocalLimits`.

`SharedLimits` builds the shared versions of the limiters, budgets and breakers on one `RedisLink`
(the Telegram flood governor shares its pauses and the bot's overall pace through the same link: `bot.telegram.shared_flood`), each falling back to its local 1/N share while Redis is unreachable. The registry
it builds also makes the breakers created on first use (one per model) shared ones, and adds the
link's state to its snapshot for /status. Imports redis-py (the optional `redis` group): only
imported when REDIS_URL is set.
"""
from __future__ import annotations

from contextlib import AsyncExitStack

from integrations.clock import Clock
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.local_limits import LocalLimits
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.redis_link import RedisLink
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.shared_breaker import SharedCircuitBreaker
from integrations.resilience.shared_ratelimit import SharedRateLimiter, SharedTokenBudget
from integrations.resilience.snapshots import ResilienceSnapshot
from integrations.resilience.tokens import TokenBudget


class SharedLimits(LocalLimits):
    """Every limit shared through Redis by all instances (REDIS_URL)."""

    def __init__(self, clock: Clock, link: RedisLink) -> None:
        super().__init__(clock)
        self.link = link
        self.redis_link = link  # the same, typed as present (LocalLimits.link may be None)

    def limiter(self, name: str, rate: float, per: float, *, burst: int | None = None) -> RateLimiter:
        return SharedRateLimiter(name, rate, per, self.clock, self.redis_link, burst=burst)

    def token_budget(self, name: str, tokens_per_minute: int) -> TokenBudget:
        return SharedTokenBudget(name, tokens_per_minute, self.clock, self.redis_link)

    def breaker(self, name: str, *, failure_threshold: int, window: float, cooldown: float) -> CircuitBreaker:
        return SharedCircuitBreaker(
            name, self.clock, self.redis_link, failure_threshold=failure_threshold, window=window, cooldown=cooldown
        )


    def registry(self, *, failure_threshold: int, window: float, cooldown: float) -> ResilienceRegistry:
        return _SharedRegistry(self, failure_threshold=failure_threshold, window=window, cooldown=cooldown)


class _SharedRegistry(ResilienceRegistry):
    """A registry whose breakers made on first use are shared ones, and whose snapshot says how limits are shared."""

    def __init__(self, limits: SharedLimits, *, failure_threshold: int, window: float, cooldown: float) -> None:
        super().__init__(limits.clock, failure_threshold=failure_threshold, window=window, cooldown=cooldown)
        self._limits = limits
        self._shared_defaults = (failure_threshold, window, cooldown)

    def breaker(self, name: str) -> CircuitBreaker:
        if name not in self._breakers:
            failure_threshold, window, cooldown = self._shared_defaults
            self._breakers[name] = self._limits.breaker(name, failure_threshold=failure_threshold, window=window, cooldown=cooldown)
        return self._breakers[name]

    def snapshot(self) -> ResilienceSnapshot:
        return {**super().snapshot(), "shared_limits": self._limits.redis_link.snapshot()}


async def open_limits(
    redis_url: str | None, clock: Clock, stack: AsyncExitStack, *, instances: int = 1, timeout: float = 0.5
) -> LocalLimits:
    """Shared limits when `redis_url` is given (the link closed by `stack`), else local ones.

    An unreachable Redis does not stop the start: the link starts down, the local shares apply,
    and the prober brings the shared limits in once Redis answers.
    """
    if redis_url is None:
        return LocalLimits(clock)
    link = RedisLink.from_url(redis_url, clock, instances=instances, timeout=timeout)
    stack.push_async_callback(link.aclose)
    await link.start()
    return SharedLimits(clock, link)
