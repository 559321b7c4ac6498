"""Policies are layers around one upstream call; `compose` folds them, the first listed outermost.

A policy takes the call (a zero-argument coroutine function) and returns its result, doing
whatever it does around it. The natural order for an upstream, outermost first:

    cache -> circuit breaker -> retry -> rate limiter -> per-attempt timeout -> the call

A cache hit skips everything. An open breaker fails fast without retrying. Every retry attempt
takes a rate-limit token. An exhausted retry counts once against the breaker, which is why the
breaker wraps the whole retry. `Upstream` wires these for one upstream.
"""
from __future__ import annotations

import asyncio
import functools
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from integrations.clock import Clock
from integrations.errors import AuthFailed, RateLimited, Unavailable
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.ratelimit import RateLimiter, WaitTooLong
from integrations.resilience.retry import AuthReload, RetryPolicy, retry_call

T = TypeVar("T")
R = TypeVar("R")

Call = Callable[[], Awaitable[T]]
# Wraps one call so that each of its attempts is observed (logged with upstream, operation,
# status, latency, attempt and request id); given (upstream, operation, call).
AttemptObserver = Callable[[str, str, Callable[[], Awaitable[Any]]], Callable[[], Awaitable[Any]]]


class Policy(Protocol):
    """A layer around one call: it runs the call, doing whatever it does around it, and passes its result through."""

    def __call__(self, call: Call[T], /) -> Awaitable[T]: ...


def compose(*policies: Policy) -> Policy:
    """One policy that applies `policies` in order, the first outermost."""

    async def composed(call: Call[T]) -> T:
        for policy in reversed(policies):
            call = functools.partial(policy, call)
        return await call()

    return composed


def breaker_policy(breaker: CircuitBreaker) -> Policy:
    return breaker.call


def retry_policy(policy: RetryPolicy, clock: Clock, on_auth_failed: AuthReload | None = None) -> Policy:
    def retried(call: Call[T]) -> Awaitable[T]:
        return retry_call(call, policy, clock, on_auth_failed=on_auth_failed)

    return retried


def limiter_policy(limiter: RateLimiter, *, max_pause: float | None = None, max_wait: float | None = None) -> Policy:
    """Every call takes a token. A 429 with Retry-After pauses the limiter for everyone.

    While the limiter is paused for longer than `max_pause`, calls (queued ones included) fail
    fast with `RateLimited`, so an hour-long Retry-After turns into fallback rather than a hang.
    A call that would wait longer than `max_wait` for its token fails fast with `WaitTooLong`.
    """

    async def limited(call: Call[T]) -> T:
        await limiter.acquire(max_pause=max_pause, max_wait=max_wait)
        try:
            return await call()
        except RateLimited as error:
            # An inner limiter of ours refusing to wait is not the upstream asking for a pause.
            if error.retry_after and not isinstance(error, WaitTooLong):
                limiter.pause(error.retry_after)
            raise

    return limited


def timeout_policy(seconds: float, clock: Clock, upstream: str) -> Policy:
    """Each call gets `seconds` on the clock; running out is `Unavailable`, which may be retried.

    The call runs in the caller's task and a clock timer cancels it (as `asyncio.timeout` does):
    one timer task per call instead of the two tasks `clock.wait_for` needs, which matters on
    the success path of every upstream call.
    """

    async def timed(call: Call[T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        fired = finished = False

        def expire(timer: asyncio.Future[None]) -> None:
            nonlocal fired
            if not finished and not timer.cancelled() and timer.exception() is None:
                fired = True
                task.cancel()

        timer = asyncio.ensure_future(clock.sleep(seconds))
        timer.add_done_callback(expire)
        try:
            return await call()
        except asyncio.CancelledError:
            if fired and task.uncancel() <= cancelling:
                raise Unavailable(f"timed out after {seconds:g} s", upstream=upstream) from None
            raise
        finally:
            finished = True
            timer.cancel()

    return timed


def cache_policy(
    lookup: Callable[[], Awaitable[R | None]], store: Callable[[R], Awaitable[None]]
) -> Callable[[Call[R]], Awaitable[R]]:
    """`lookup()` returning anything but None is a hit and skips the call; a fresh result is stored.

    Unlike the other layers it holds results of one type, so it wraps only calls of that type.
    """

    async def cached(call: Call[R]) -> R:
        hit = await lookup()
        if hit is not None:
            return hit
        result = await call()
        await store(result)
        return result

    return cached


class Upstream:
    """Breaker -> retry -> limiter -> timeout around every call to one upstream."""

    def __init__(
        self,
        name: str,
        clock: Clock,
        *,
        breaker: CircuitBreaker,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy = RetryPolicy(),
        attempt_timeout: float | None = None,
        on_auth_failed: AuthReload | None = None,
        observe: "AttemptObserver | None" = None,
    ) -> None:
        self.name = name
        self._observe = observe
        self.breaker = breaker
        self.limiter = limiter
        self.retry = retry
        self.attempt_timeout = attempt_timeout
        layers = [breaker_policy(breaker), retry_policy(retry, clock, on_auth_failed)]
        if limiter is not None:
            layers.append(limiter_policy(limiter, max_pause=retry.retry_after_cap))
        if attempt_timeout is not None:
            layers.append(timeout_policy(attempt_timeout, clock, name))
        self._policy = compose(*layers)

    async def call(self, fn: Callable[[], Awaitable[T]], operation: str = "call") -> T:
        if self._observe is not None:
            fn = self._observe(self.name, operation, fn)
        try:
            return await self._policy(fn)
        except AuthFailed as error:
            # The retry already tried a reloaded credential: every other caller would be refused
            # too, so fail them fast until the cooldown's probe.
            self.breaker.force_open(f"auth failed: {error}")
            raise

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "breaker": self.breaker.snapshot(),
            "limiter": self.limiter.snapshot() if self.limiter is not None else None,
            "retry": {
                "max_attempts": self.retry.max_attempts,
                "max_total": self.retry.max_total,
                "retry_after_cap": self.retry.retry_after_cap,
            },
            "attempt_timeout": self.attempt_timeout,
        }
