"""One retry loop for every upstream call, on tenacity, capped in attempts and in total time.

Only errors whose type is `retryable` (rate limited, unavailable, malformed answer) are retried;
every other project error, `CircuitOpen` included, is raised at once. A `retry_after` from the
upstream is waited exactly, unless it is longer than `retry_after_cap` or would overrun the total
budget: then the error is raised at once so the caller can fail over instead of waiting. Without
one, waits are exponential with full jitter. `AuthFailed` gets one more attempt only if reloading
the credential changed it. The last project error is raised, never tenacity's `RetryError`.

The strategies are small callables; time (the budget and the sleep) comes from the injected clock.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from tenacity import AsyncRetrying, RetryCallState

from integrations.clock import Clock
from integrations.errors import AuthFailed, UpstreamError

logger = logging.getLogger(__name__)

T = TypeVar("T")

AuthReload = Callable[[], Awaitable[bool]]
# (attempt that failed, its error, seconds until the next attempt)
AttemptHook = Callable[[int, UpstreamError, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    max_total: float = 30.0
    base: float = 0.5
    cap: float = 8.0
    retry_after_cap: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


def _error_of(state: RetryCallState) -> BaseException | None:
    outcome = state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


class RetryWhenWorthIt:
    """Retry retryable errors; `AuthFailed` once, if reloading the credential changed it."""

    def __init__(self, on_auth_failed: AuthReload | None) -> None:
        self._on_auth_failed = on_auth_failed
        self.reloaded = False
        self.auth_retry_granted = False

    async def __call__(self, state: RetryCallState) -> bool:
        error = _error_of(state)
        if not isinstance(error, UpstreamError):
            return False
        if error.retryable:
            return True
        if isinstance(error, AuthFailed) and self._on_auth_failed is not None and not self.reloaded:
            self.reloaded = True
            self.auth_retry_granted = await self._reload()
            return self.auth_retry_granted
        return False

    async def _reload(self) -> bool:
        assert self._on_auth_failed is not None
        try:
            return bool(await self._on_auth_failed())
        except Exception:
            logger.exception("reloading the credential failed")
            return False


class WaitRetryAfterOrBackoff:
    """The upstream's `retry_after` when given, else full-jitter exponential backoff."""

    def __init__(self, policy: RetryPolicy, rng: random.Random | None) -> None:
        self._policy = policy
        self._uniform = rng.uniform if rng is not None else random.uniform

    def __call__(self, state: RetryCallState) -> float:
        error = _error_of(state)
        if isinstance(error, AuthFailed):
            return 0.0  # a fresh credential needs no waiting
        if isinstance(error, UpstreamError) and error.retry_after is not None:
            return max(0.0, error.retry_after)
        ceiling = min(self._policy.cap, self._policy.base * 2 ** (state.attempt_number - 1))
        return self._uniform(0.0, ceiling)


class StopWhenOverBudget:
    """Stop after `max_attempts`, on a retry_after beyond the cap, or when the wait overruns the budget."""

    def __init__(self, policy: RetryPolicy, clock: Clock, started: float, decide: RetryWhenWorthIt) -> None:
        self._policy = policy
        self._clock = clock
        self._started = started
        self._decide = decide

    def __call__(self, state: RetryCallState) -> bool:
        error = _error_of(state)
        # The one retry after a credential reload does not use up an attempt.
        extra = 1 if self._decide.auth_retry_granted else 0
        if state.attempt_number >= self._policy.max_attempts + extra:
            return True
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None and retry_after > self._policy.retry_after_cap:
            return True
        elapsed = self._clock.monotonic() - self._started
        return elapsed + (state.upcoming_sleep or 0.0) > self._policy.max_total


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    clock: Clock,
    *,
    rng: random.Random | None = None,
    on_auth_failed: AuthReload | None = None,
    on_attempt: AttemptHook | None = None,
) -> T:
    """Call `fn` until it succeeds or the policy says stop; raise the last project error."""
    started = clock.monotonic()
    # Fast path: most calls succeed at once, and building tenacity's machinery costs ~30 us, so
    # the first attempt runs outside it; a failure is replayed as tenacity's first attempt.
    try:
        return await fn()
    except UpstreamError as error:
        first_error: UpstreamError | None = error

    async def attempt() -> T:
        nonlocal first_error
        if first_error is not None:
            error, first_error = first_error, None
            raise error
        return await fn()

    decide = RetryWhenWorthIt(on_auth_failed)

    def before_sleep(state: RetryCallState) -> None:
        error = _error_of(state)
        wait = state.upcoming_sleep or 0.0
        logger.info("attempt %d failed (%s); retrying in %.2f s", state.attempt_number, error, wait)
        if on_attempt is not None and isinstance(error, UpstreamError):
            on_attempt(state.attempt_number, error, wait)

    retrying = AsyncRetrying(
        sleep=clock.sleep,
        retry=decide,
        wait=WaitRetryAfterOrBackoff(policy, rng),
        stop=StopWhenOverBudget(policy, clock, started, decide),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(attempt)
