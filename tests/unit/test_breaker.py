"""CircuitBreaker on a manual clock: when it opens, how it probes, what it ignores."""
from __future__ import annotations

import asyncio

import pytest

from integrations.clock import ManualClock
from integrations.errors import (
    AuthFailed,
    BadRequest,
    CircuitOpen,
    ContextTooLong,
    MalformedResponse,
    QuotaExhausted,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from integrations.resilience.breaker import CircuitBreaker


class Upstream:
    """A fake call that counts how often the breaker let it through."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls = 0
        self.error = error

    async def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return "ok"


async def fail(breaker: CircuitBreaker, error: UpstreamError, times: int) -> None:
    for _ in range(times):
        with pytest.raises(type(error)):
            await breaker.call(Upstream(error))


@pytest.mark.parametrize(
    "error",
    [Unavailable("down"), RateLimited("slow down"), MalformedResponse("garbage"), AuthFailed("no"), QuotaExhausted("broke")],
)
async def test_breaker_opens_after_threshold_failures_and_then_fails_fast(error: UpstreamError) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("anthropic", clock, failure_threshold=3, window=60.0, cooldown=30.0)
    await fail(breaker, error, 2)
    assert breaker.state == "closed"
    await fail(breaker, error, 1)
    assert breaker.state == "open"

    await clock.advance(10)
    upstream = Upstream()
    with pytest.raises(CircuitOpen) as raised:
        await breaker.call(upstream)

    assert upstream.calls == 0
    assert raised.value.upstream == "anthropic"
    assert raised.value.retry_after == pytest.approx(20.0)


async def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=3, window=60.0)
    await fail(breaker, Unavailable("down"), 2)
    await clock.advance(61)
    await fail(breaker, Unavailable("down"), 2)

    assert breaker.state == "closed"
    assert breaker.snapshot()["failures_in_window"] == 2


@pytest.mark.parametrize("error", [BadRequest("bad field"), ContextTooLong("too long")])
async def test_errors_in_the_request_itself_do_not_count(error: UpstreamError) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=2)

    await fail(breaker, error, 10)

    assert breaker.state == "closed"
    assert breaker.snapshot()["failures_in_window"] == 0


async def test_breaker_half_opens_after_the_cooldown() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=1, cooldown=30.0)
    await fail(breaker, Unavailable("down"), 1)

    await clock.advance(29.9)
    assert breaker.state == "open"
    await clock.advance(0.1)

    assert breaker.state == "half_open"


async def test_half_open_lets_exactly_one_probe_through_and_closes_when_it_succeeds() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=1, cooldown=30.0)
    await fail(breaker, Unavailable("down"), 1)
    await clock.advance(30)
    release = asyncio.Event()
    probe_calls = 0

    async def slow_success() -> str:
        nonlocal probe_calls
        probe_calls += 1
        await release.wait()
        return "ok"

    probe = asyncio.ensure_future(breaker.call(slow_success))
    await clock.settle()
    meanwhile = Upstream()
    others = await asyncio.gather(*(breaker.call(meanwhile) for _ in range(5)), return_exceptions=True)

    assert probe_calls == 1
    assert meanwhile.calls == 0
    assert all(isinstance(result, CircuitOpen) for result in others)
    release.set()
    assert await probe == "ok"
    assert breaker.state == "closed"
    assert await breaker.call(Upstream()) == "ok"


async def test_failed_probe_reopens_with_a_fresh_cooldown() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=1, cooldown=30.0)
    await fail(breaker, Unavailable("down"), 1)
    await clock.advance(30)

    await fail(breaker, Unavailable("still down"), 1)

    assert breaker.state == "open"
    with pytest.raises(CircuitOpen) as raised:
        await breaker.call(Upstream())
    assert raised.value.retry_after == pytest.approx(30.0)


async def test_bad_request_as_probe_closes_the_circuit() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=1, cooldown=30.0)
    await fail(breaker, Unavailable("down"), 1)
    await clock.advance(30)

    await fail(breaker, BadRequest("unknown field"), 1)

    assert breaker.state == "closed"


async def test_cancelled_probe_hands_the_probe_to_the_next_caller() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=1, cooldown=30.0)
    await fail(breaker, Unavailable("down"), 1)
    await clock.advance(30)
    probe = asyncio.ensure_future(breaker.call(asyncio.Event().wait))
    await clock.settle()

    probe.cancel()
    await clock.settle()

    assert breaker.state == "half_open"
    assert await breaker.call(Upstream()) == "ok"
    assert breaker.state == "closed"


async def test_reset_closes_an_open_breaker_and_forgets_failures() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=2)
    await fail(breaker, Unavailable("down"), 2)

    breaker.reset()

    assert breaker.state == "closed"
    assert breaker.snapshot()["failures_in_window"] == 0
    await fail(breaker, Unavailable("down"), 1)
    assert breaker.state == "closed"


async def test_force_open_fails_fast_for_the_given_time() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("notion", clock)

    breaker.force_open("token revoked", for_seconds=300)

    with pytest.raises(CircuitOpen) as raised:
        await breaker.call(Upstream())
    assert raised.value.retry_after == pytest.approx(300)
    assert breaker.snapshot()["last_error"] == "token revoked"


async def test_guard_records_the_outcome_of_its_body() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("openai", clock, failure_threshold=2)

    for _ in range(2):
        with pytest.raises(Unavailable):
            async with breaker.guard():
                raise Unavailable("down")

    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        async with breaker.guard():
            pytest.fail("the body must not run while open")


async def test_snapshot_shows_state_last_error_and_totals() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("anthropic", clock, failure_threshold=2, cooldown=30.0)
    await breaker.call(Upstream())
    await fail(breaker, Unavailable("overloaded", upstream="anthropic", status=529), 2)
    await clock.advance(5)
    with pytest.raises(CircuitOpen):
        await breaker.call(Upstream())

    snapshot = breaker.snapshot()

    assert snapshot["state"] == "open"
    assert snapshot["last_error"] == "anthropic: overloaded (HTTP 529)"
    assert snapshot["retry_in"] == 25.0
    assert snapshot["opened_at"] == "2026-11-26T12:00:00+00:00"
    assert snapshot["totals"] == {"successes": 1, "failures": 2, "rejected": 1, "opened": 1}
