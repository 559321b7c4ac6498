"""Policies composed around one upstream call, `Upstream`'s wiring, and the registry's view of it."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from integrations.clock import ManualClock
from integrations.errors import AuthFailed, CircuitOpen, RateLimited, Unavailable
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.compose import (
    Upstream,
    breaker_policy,
    cache_policy,
    compose,
    limiter_policy,
    timeout_policy,
)
from integrations.resilience.ratelimit import RateLimiter, WaitTooLong
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.retry import RetryPolicy
from integrations.resilience.tokens import TokenBudget


class Script:
    """A fake upstream call: raises the scripted errors in turn, then answers "ok"; notes call times."""

    def __init__(self, clock: ManualClock, *errors: BaseException, forever: BaseException | None = None) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.forever = forever
        self.times: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.times)

    async def __call__(self) -> str:
        self.times.append(self.clock.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        if self.forever is not None:
            raise self.forever
        return "ok"


def recording(log: list[str], label: str) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]:
    async def policy(call: Callable[[], Awaitable[Any]]) -> Any:
        log.append(f"{label} in")
        result = await call()
        log.append(f"{label} out")
        return result

    return policy


def no_jitter_retry(max_attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, base=0.0, cap=0.0)


async def test_compose_applies_the_first_policy_outermost() -> None:
    log: list[str] = []

    async def call() -> str:
        log.append("call")
        return "ok"

    policy = compose(recording(log, "a"), recording(log, "b"), recording(log, "c"))

    assert await policy(call) == "ok"
    assert log == ["a in", "b in", "c in", "call", "c out", "b out", "a out"]


async def test_exhausted_retry_counts_once_against_the_breaker() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=2)
    upstream = Upstream("openai", clock, breaker=breaker, retry=no_jitter_retry(3))
    fn = Script(clock, forever=Unavailable("down"))

    with pytest.raises(Unavailable):
        await clock.run_until_complete(upstream.call(fn))

    assert fn.calls == 3
    assert breaker.snapshot()["failures_in_window"] == 1
    assert breaker.state == "closed"


async def test_open_breaker_fails_fast_without_calling_or_retrying() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock)
    breaker.force_open("overloaded")
    upstream = Upstream("openai", clock, breaker=breaker, retry=no_jitter_retry(5))
    fn = Script(clock)

    with pytest.raises(CircuitOpen):
        await upstream.call(fn)

    assert fn.calls == 0


async def test_every_retry_attempt_takes_a_rate_limit_token() -> None:
    clock = ManualClock()
    limiter = RateLimiter("openai", rate=1, per=1.0, clock=clock, burst=1)
    upstream = Upstream("openai", clock, breaker=CircuitBreaker("openai", clock), limiter=limiter, retry=no_jitter_retry(3))
    fn = Script(clock, Unavailable("down"), Unavailable("down"))
    t0 = clock.monotonic()

    assert await clock.run_until_complete(upstream.call(fn)) == "ok"

    assert [t - t0 for t in fn.times] == [0.0, 1.0, 2.0]


async def test_timeout_applies_to_each_attempt_and_a_timed_out_attempt_is_retried() -> None:
    clock = ManualClock()
    upstream = Upstream(
        "anthropic", clock, breaker=CircuitBreaker("anthropic", clock), retry=no_jitter_retry(3), attempt_timeout=5.0
    )
    attempts: list[float] = []

    async def hangs_once() -> str:
        attempts.append(clock.monotonic())
        if len(attempts) == 1:
            await asyncio.Event().wait()
        return "ok"

    t0 = clock.monotonic()
    assert await clock.run_until_complete(upstream.call(hangs_once)) == "ok"

    assert [t - t0 for t in attempts] == [0.0, 5.0]


async def test_an_attempt_that_runs_out_of_time_becomes_unavailable() -> None:
    clock = ManualClock()
    timed = timeout_policy(2.0, clock, "notion")
    call = asyncio.ensure_future(timed(asyncio.Event().wait))
    await clock.advance(1.9)
    assert not call.done()

    await clock.advance(0.1)

    with pytest.raises(Unavailable, match="notion: timed out after 2 s"):
        await call


async def test_timeout_does_not_swallow_a_cancellation_from_outside() -> None:
    clock = ManualClock()
    timed = timeout_policy(2.0, clock, "notion")
    call = asyncio.ensure_future(timed(asyncio.Event().wait))
    await clock.settle()

    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call


class TickClock(ManualClock):
    """Every sleep ends on the same tick, so a timer and the call it guards can finish together."""

    def __init__(self) -> None:
        super().__init__()
        self.tick = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        await self.tick.wait()


async def test_a_call_finishing_as_its_timer_fires_keeps_its_result_and_its_task() -> None:
    clock = TickClock()
    timed = timeout_policy(2.0, clock, "notion")

    async def finishes_on_the_tick() -> str:
        await asyncio.sleep(0)  # let the timer start waiting first, so it wakes first
        await clock.tick.wait()
        return "ok"

    async def caller() -> str:
        result = await timed(finishes_on_the_tick)
        for _ in range(5):
            await asyncio.sleep(0)  # a late timer callback would cancel us here
        return result

    task = asyncio.ensure_future(caller())
    await clock.settle()
    clock.tick.set()

    assert await task == "ok"


async def test_cache_hit_skips_the_call_and_a_miss_is_stored() -> None:
    clock = ManualClock()
    stored: dict[str, str] = {}

    async def lookup() -> str | None:
        return stored.get("q")

    async def store(value: str) -> None:
        stored["q"] = value

    fn = Script(clock)
    cached = compose(cache_policy(lookup, store), Upstream("perplexity", clock, breaker=CircuitBreaker("p", clock)).call)

    assert await cached(fn) == "ok"
    assert await cached(fn) == "ok"
    assert fn.calls == 1
    assert stored == {"q": "ok"}


async def test_retry_after_pauses_the_limiter_for_every_caller_of_the_upstream() -> None:
    clock = ManualClock()
    limiter = RateLimiter("perplexity", rate=100, per=1.0, clock=clock)
    upstream = Upstream("perplexity", clock, breaker=CircuitBreaker("perplexity", clock), limiter=limiter)
    first = Script(clock, RateLimited("429", retry_after=3.0))
    second = Script(clock)
    t0 = clock.monotonic()

    one = asyncio.ensure_future(upstream.call(first))
    await clock.advance(0.5)
    other = asyncio.ensure_future(upstream.call(second))
    await clock.advance(5)

    assert (await one, await other) == ("ok", "ok")
    assert [t - t0 for t in second.times] == [3.0]


async def test_a_pause_longer_than_the_retry_cap_fails_other_callers_fast() -> None:
    clock = ManualClock()
    limiter = RateLimiter("perplexity", rate=100, per=1.0, clock=clock)
    upstream = Upstream(
        "perplexity", clock, breaker=CircuitBreaker("perplexity", clock), limiter=limiter, retry=RetryPolicy(retry_after_cap=20.0)
    )
    with pytest.raises(RateLimited):
        await upstream.call(Script(clock, RateLimited("429", retry_after=600.0)))
    later = Script(clock)

    with pytest.raises(RateLimited) as raised:
        await upstream.call(later)

    assert later.calls == 0
    assert raised.value.retry_after == pytest.approx(600.0)


async def test_limiter_policy_alone_pauses_on_rate_limited() -> None:
    clock = ManualClock()
    limiter = RateLimiter("openai", rate=100, per=1.0, clock=clock)

    with pytest.raises(RateLimited):
        await limiter_policy(limiter)(Script(clock, RateLimited("429", retry_after=4.0)))

    assert limiter.paused_for == 4.0


async def test_a_call_that_would_wait_longer_than_max_wait_fails_at_once_and_takes_nothing() -> None:
    clock = ManualClock()
    limiter = RateLimiter("anthropic requests", rate=50, per=60.0, clock=clock, burst=8)
    limiter.tighten(remaining=0, reset_after=40.0)
    fn = Script(clock)
    t0 = clock.monotonic()

    with pytest.raises(WaitTooLong) as raised:
        await limiter_policy(limiter, max_wait=5.0)(fn)

    assert clock.monotonic() == t0 and fn.calls == 0
    assert raised.value.retry_after == pytest.approx(40.0)
    assert not raised.value.retryable
    assert limiter.snapshot()["waiting"] == 0


async def test_a_wait_within_max_wait_is_waited() -> None:
    clock = ManualClock()
    limiter = RateLimiter("openai requests", rate=1, per=1.0, clock=clock, burst=1)
    await limiter.acquire()
    fn = Script(clock)
    t0 = clock.monotonic()

    assert await clock.run_until_complete(limiter_policy(limiter, max_wait=5.0)(fn)) == "ok"

    assert [t - t0 for t in fn.times] == [1.0]


async def test_a_queued_call_counts_the_queue_ahead_and_gives_up_when_max_wait_runs_out() -> None:
    clock = ManualClock()
    limiter = RateLimiter("openai requests", rate=1, per=1.0, clock=clock, burst=1)
    await limiter.acquire()
    head = asyncio.ensure_future(limiter.acquire())
    await clock.settle()
    with pytest.raises(WaitTooLong):  # 1 s for the head, 1 s more for this one
        await limiter.acquire(max_wait=1.5)
    queued = asyncio.ensure_future(limiter.acquire(max_wait=2.5))
    behind = asyncio.ensure_future(limiter.acquire())
    await clock.settle()
    t0 = clock.monotonic()

    limiter.tighten(remaining=0, reset_after=30.0)  # the head now waits 30 s; `queued` will not
    await clock.advance(2.5)

    assert queued.done() and isinstance(queued.exception(), WaitTooLong)
    assert clock.monotonic() - t0 == pytest.approx(2.5)
    await clock.advance(27.6)  # 30.1 s after the tightening
    assert head.done() and not behind.done()  # the queue goes on without the one that gave up
    await clock.advance(1.0)
    assert behind.done()


async def test_a_limiter_refusing_to_wait_neither_pauses_an_outer_limiter_nor_counts_against_the_breaker() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=1)
    outer = RateLimiter("openai requests", rate=100, per=1.0, clock=clock)
    budget = TokenBudget("openai tokens", tokens_per_minute=1000, clock=clock)
    budget.tighten(remaining=0, reset_after=60.0)

    async def reserve_then_call() -> str:
        await budget.reserve(100, max_wait=5.0)
        return "ok"

    policy = compose(breaker_policy(breaker), limiter_policy(outer))
    with pytest.raises(WaitTooLong):
        await policy(reserve_then_call)

    assert outer.paused_for == 0.0
    assert breaker.state == "closed" and breaker.snapshot()["failures_in_window"] == 0


async def test_definitive_auth_failure_opens_the_breaker_for_everyone() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("notion", clock, failure_threshold=5, cooldown=30.0)

    async def unchanged() -> bool:
        return False

    upstream = Upstream("notion", clock, breaker=breaker, on_auth_failed=unchanged)

    with pytest.raises(AuthFailed):
        await upstream.call(Script(clock, AuthFailed("invalid token", status=401)))

    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        await upstream.call(Script(clock))


async def test_upstream_snapshot_shows_its_breaker_and_limiter() -> None:
    clock = ManualClock()
    upstream = Upstream(
        "openai",
        clock,
        breaker=CircuitBreaker("openai", clock),
        limiter=RateLimiter("openai", rate=3, per=1.0, clock=clock),
        attempt_timeout=60.0,
    )

    snapshot = upstream.snapshot()

    assert snapshot["breaker"]["state"] == "closed"  # type: ignore[index]
    assert snapshot["limiter"]["rate"] == 3  # type: ignore[index]
    assert snapshot["attempt_timeout"] == 60.0


# --- ResilienceRegistry ----------------------------------------------------------------------------


async def test_registry_snapshot_is_plain_data_detached_from_the_live_objects() -> None:
    clock = ManualClock()
    registry = ResilienceRegistry(clock, failure_threshold=1)
    registry.register_limiter(RateLimiter("openai", rate=3, per=1.0, clock=clock))
    registry.register_token_budget(TokenBudget("openai", tokens_per_minute=1000, clock=clock))
    registry.breaker("openai").record_failure(Unavailable("down"))

    snapshot = registry.snapshot()
    snapshot["breakers"]["openai"]["totals"]["failures"] = 99  # type: ignore[index]

    fresh = registry.snapshot()
    assert fresh["breakers"]["openai"]["state"] == "open"  # type: ignore[index]
    assert fresh["breakers"]["openai"]["totals"]["failures"] == 1  # type: ignore[index]
    assert fresh["limiters"]["openai"]["rate"] == 3  # type: ignore[index]
    assert fresh["token_budgets"]["openai"]["tokens_per_minute"] == 1000  # type: ignore[index]
    assert fresh["governor"] is None


async def test_registry_resets_a_breaker_by_name() -> None:
    clock = ManualClock()
    registry = ResilienceRegistry(clock, failure_threshold=1)
    breaker = registry.breaker("anthropic")
    breaker.record_failure(Unavailable("down"))

    registry.reset_breaker("anthropic")

    assert registry.breaker("anthropic") is breaker
    assert breaker.state == "closed"
    with pytest.raises(KeyError):
        registry.reset_breaker("nobody")


async def test_registry_refuses_two_limiters_with_one_name() -> None:
    clock = ManualClock()
    registry = ResilienceRegistry(clock)
    registry.register_limiter(RateLimiter("openai", rate=3, per=1.0, clock=clock))

    with pytest.raises(ValueError):
        registry.register_limiter(RateLimiter("openai", rate=5, per=1.0, clock=clock))


async def test_registry_takes_an_upstreams_breaker_and_limiter() -> None:
    clock = ManualClock()
    registry = ResilienceRegistry(clock)
    upstream = Upstream(
        "openai", clock, breaker=registry.breaker("openai"), limiter=RateLimiter("openai", rate=3, per=1.0, clock=clock)
    )

    registry.register_upstream(upstream)

    assert registry.limiter("openai") is upstream.limiter
    assert set(registry.snapshot()["breakers"]) == {"openai"}  # type: ignore[arg-type]
