"""RateLimiter and TokenBudget on a manual clock: pacing, order, waiting, and upstream feedback."""
from __future__ import annotations

import asyncio

import pytest

from integrations.clock import ManualClock
from integrations.errors import RateLimited
from integrations.resilience.ratelimit import RateLimiter, WaitTooLong
from integrations.resilience.tokens import TokenBudget


class CountingClock(ManualClock):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        await super().sleep(seconds)


async def grant_times(clock: ManualClock, limiter: RateLimiter, until: float) -> list[float]:
    """Acquire one unit after another until `until` seconds of clock time; the grant moments."""
    start = clock.monotonic()
    times: list[float] = []

    async def run() -> None:
        while True:
            await limiter.acquire()
            elapsed = clock.monotonic() - start
            if elapsed >= until:
                return
            times.append(elapsed)

    await clock.run_until_complete(run())
    return times


async def start(clock: ManualClock, coro) -> asyncio.Task:  # type: ignore[no-untyped-def]
    task = asyncio.ensure_future(coro)
    await clock.settle()
    return task


# --- RateLimiter ---------------------------------------------------------------------------------


async def test_limiter_sustains_its_rate_plus_the_initial_burst_over_a_long_window() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=5, per=1.0, clock=clock)

    times = await grant_times(clock, limiter, until=100.1)

    # A full bucket of 5 at once, then one every 0.2 s: 0.2 .. 100.0.
    assert len(times) == 5 + 500


async def test_limiter_with_burst_one_never_lets_more_than_rate_into_a_rolling_window() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=3, per=1.0, clock=clock, burst=1)

    times = await grant_times(clock, limiter, until=30.0)

    assert len(times) == 90
    spans = [later - earlier for earlier, later in zip(times, times[3:])]
    assert min(spans) >= 1.0 - 1e-9


async def test_limiter_serves_waiters_in_arrival_order_even_when_a_later_one_is_smaller() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=1, per=1.0, clock=clock, burst=3)
    await limiter.acquire(2)  # one unit left: enough for "small", not for "big"
    t0 = clock.monotonic()
    granted: list[tuple[str, float]] = []

    async def take(label: str, cost: float) -> None:
        await limiter.acquire(cost)
        granted.append((label, clock.monotonic() - t0))

    big = await start(clock, take("big", 3))
    small = await start(clock, take("small", 1))
    await clock.advance(10)
    await asyncio.gather(big, small)

    assert granted == [("big", 2.0), ("small", 3.0)]


async def test_limiter_sleeps_once_and_wakes_exactly_when_capacity_returns() -> None:
    clock = CountingClock()
    limiter = RateLimiter("api", rate=2, per=1.0, clock=clock, burst=2)
    await limiter.acquire(2)
    t0 = clock.monotonic()

    waiter = await start(clock, limiter.acquire())
    await clock.advance(0.499)
    assert not waiter.done()
    await clock.advance(0.001)

    assert waiter.done()
    assert clock.monotonic() - t0 == pytest.approx(0.5)
    assert clock.sleeps == 1


async def test_limiter_queue_costs_one_sleep_per_waiter() -> None:
    clock = CountingClock()
    limiter = RateLimiter("api", rate=1, per=1.0, clock=clock, burst=1)
    await limiter.acquire()

    waiters = [await start(clock, limiter.acquire()) for _ in range(5)]
    await clock.advance(5)

    assert all(w.done() for w in waiters)
    assert clock.sleeps == 5


async def test_cancelled_head_waiter_neither_takes_capacity_nor_reorders_the_rest() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=1, per=1.0, clock=clock, burst=1)
    await limiter.acquire()
    t0 = clock.monotonic()
    granted: list[tuple[str, float]] = []

    async def take(label: str) -> None:
        await limiter.acquire()
        granted.append((label, clock.monotonic() - t0))

    first = await start(clock, take("first"))
    second = await start(clock, take("second"))
    third = await start(clock, take("third"))
    await clock.advance(0.5)
    first.cancel()
    await clock.advance(5)
    await asyncio.gather(second, third)

    assert granted == [("second", 1.0), ("third", 2.0)]


async def test_cancelled_middle_waiter_leaves_its_place_to_the_next() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=1, per=1.0, clock=clock, burst=1)
    await limiter.acquire()
    t0 = clock.monotonic()
    granted: list[tuple[str, float]] = []

    async def take(label: str) -> None:
        await limiter.acquire()
        granted.append((label, clock.monotonic() - t0))

    first = await start(clock, take("first"))
    second = await start(clock, take("second"))
    third = await start(clock, take("third"))
    second.cancel()
    await clock.advance(5)
    await asyncio.gather(first, third)

    assert granted == [("first", 1.0), ("third", 2.0)]
    assert limiter.snapshot()["waiting"] == 0


async def test_tighten_with_plenty_left_lets_back_to_back_requests_through_at_once() -> None:
    # A proxy says "49 of 50 left, resets in 60 s" after our first request; the limiter is the
    # default openai one (500 a minute, burst 83), so only the headers can slow it down.
    clock = ManualClock()
    limiter = RateLimiter("api", rate=500, per=60.0, clock=clock, burst=83)
    await limiter.acquire()
    limiter.tighten(remaining=49, reset_after=60.0, limit=50)

    times = await grant_times(clock, limiter, until=60.0)

    # 44 at once; the last tenth of the limit (5) each waits its share of the time to the reset.
    assert times[:44] == [0.0] * 44
    assert times[44:] == pytest.approx([10.0, 20.0, 30.0, 40.0, 50.0])


async def test_tighten_with_two_left_spaces_them_until_the_reset_then_restores_the_rate() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=10, per=1.0, clock=clock)
    await limiter.acquire()
    limiter.tighten(remaining=2, reset_after=10.0, limit=20)
    assert limiter.snapshot()["tightened"] is True

    times = await grant_times(clock, limiter, until=11.0)

    assert [t for t in times if t < 10.0] == pytest.approx([10 / 3, 20 / 3])
    # After the reset: a full bucket again, then 10 per second.
    assert len([t for t in times if 10.0 <= t < 11.0]) == 10 + 9
    assert limiter.snapshot()["tightened"] is False


async def test_tighten_without_the_limit_keeps_the_last_unit_for_later_in_the_window() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=10, per=1.0, clock=clock)
    limiter.tighten(remaining=2, reset_after=10.0)

    times = await grant_times(clock, limiter, until=10.0)

    assert times == [0.0, 5.0]


async def test_tighten_is_not_shown_while_the_upstream_allows_more_than_we_send() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=1, per=1.0, clock=clock, burst=1)

    limiter.tighten(remaining=100, reset_after=10.0)

    assert limiter.snapshot()["tightened"] is False


async def test_tighten_with_nothing_remaining_holds_everyone_until_the_reset() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=10, per=1.0, clock=clock)
    t0 = clock.monotonic()
    limiter.tighten(remaining=0, reset_after=4.0)

    await clock.run_until_complete(limiter.acquire())

    assert clock.monotonic() - t0 == pytest.approx(4.0)


async def test_concurrent_callers_never_pass_on_the_same_remaining_count() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=100, per=1.0, clock=clock)
    t0 = clock.monotonic()
    limiter.tighten(remaining=3, reset_after=60.0, limit=10)
    granted: list[float] = []

    async def take() -> None:
        await limiter.acquire()
        granted.append(clock.monotonic() - t0)

    callers = [await start(clock, take()) for _ in range(10)]
    await clock.advance(59.9)
    assert len(granted) == 3
    await clock.advance(0.1)
    await asyncio.gather(*callers)

    assert granted[3:] == [60.0] * 7


async def test_a_report_is_charged_with_what_was_granted_after_its_request() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=100, per=1.0, clock=clock)
    answered = asyncio.Event()

    async def request_then_read_headers() -> None:
        await limiter.acquire()
        await answered.wait()
        # Counted when our request reached the upstream: 3 left, before the 3 sent meanwhile.
        limiter.tighten(remaining=3, reset_after=60.0, limit=10)

    first = await start(clock, request_then_read_headers())
    for _ in range(3):
        await limiter.acquire()
    answered.set()
    await first
    t0 = clock.monotonic()

    await clock.run_until_complete(limiter.acquire())

    assert clock.monotonic() - t0 == pytest.approx(60.0)


async def test_a_report_read_outside_a_granting_task_counts_from_when_it_is_read() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=100, per=1.0, clock=clock)
    for _ in range(3):
        await start(clock, limiter.acquire())
    limiter.tighten(remaining=3, reset_after=60.0, limit=10)
    t0 = clock.monotonic()

    await clock.run_until_complete(limiter.acquire())

    assert clock.monotonic() == t0


async def granted_request(clock: ManualClock, limiter: RateLimiter, remaining: int) -> tuple[asyncio.Task, asyncio.Event]:
    """A request that has gone; setting the event reads its response, which reports `remaining`."""
    answered = asyncio.Event()

    async def request() -> None:
        await limiter.acquire()
        await answered.wait()
        limiter.tighten(remaining=remaining, reset_after=60.0, limit=50)

    return await start(clock, request()), answered


async def read(*responses: tuple[asyncio.Task, asyncio.Event]) -> None:
    for task, answered in responses:
        answered.set()
        await task


async def back_to_back_grants(clock: ManualClock, limiter: RateLimiter, count: int) -> list[float]:
    t0 = clock.monotonic()
    times = []
    for _ in range(count):
        await clock.run_until_complete(limiter.acquire())
        times.append(clock.monotonic() - t0)
    return times


async def test_a_late_response_from_an_older_request_does_not_loosen_the_limit() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=100, per=1.0, clock=clock)
    older = await granted_request(clock, limiter, remaining=40)
    newer = await granted_request(clock, limiter, remaining=7)

    await read(newer, older)

    # 7 left, the last 5 paced: two at once, then one every 60 / 6 s.
    assert await back_to_back_grants(clock, limiter, 3) == pytest.approx([0.0, 0.0, 10.0])


async def test_a_newer_report_replaces_an_older_one_even_with_more_room() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=100, per=1.0, clock=clock)
    older = await granted_request(clock, limiter, remaining=0)
    newer = await granted_request(clock, limiter, remaining=20)

    await read(older)
    assert limiter.snapshot()["tightened"] is True
    await read(newer)

    assert limiter.snapshot()["tightened"] is False
    assert await back_to_back_grants(clock, limiter, 3) == [0.0, 0.0, 0.0]


async def test_a_caller_that_would_wait_longer_than_its_share_allows_fails_fast() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=100, per=1.0, clock=clock)
    await limiter.acquire()
    limiter.tighten(remaining=1, reset_after=60.0, limit=50)

    with pytest.raises(WaitTooLong) as raised:
        await limiter.acquire(max_wait=5.0)

    assert raised.value.retry_after == pytest.approx(30.0)


async def test_pause_holds_every_caller_including_one_already_waiting() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=1, per=1.0, clock=clock, burst=1)
    await limiter.acquire()
    t0 = clock.monotonic()
    waiter = await start(clock, limiter.acquire())

    limiter.pause(5.0)
    limiter.pause(1.0)  # a shorter pause does not cut the longer one
    assert limiter.snapshot()["paused_for"] == 5.0
    await clock.advance(4.9)
    assert not waiter.done()
    await clock.advance(0.1)

    assert waiter.done()
    assert clock.monotonic() - t0 == pytest.approx(5.0)


async def test_waiters_with_max_pause_fail_fast_when_a_longer_pause_starts() -> None:
    clock = ManualClock()
    limiter = RateLimiter("perplexity", rate=1, per=1.0, clock=clock, burst=1)
    await limiter.acquire()
    head = await start(clock, limiter.acquire(max_pause=20.0))
    queued = await start(clock, limiter.acquire(max_pause=20.0))
    patient = await start(clock, limiter.acquire())

    limiter.pause(600.0)
    await clock.settle()

    for waiter in (head, queued):
        with pytest.raises(RateLimited) as raised:
            await waiter
        assert raised.value.retry_after == pytest.approx(600.0)
    assert not patient.done()
    with pytest.raises(RateLimited):
        await limiter.acquire(max_pause=20.0)
    await clock.advance(600)
    assert patient.done()


async def test_limiter_works_as_an_async_context_manager() -> None:
    clock = ManualClock()
    limiter = RateLimiter("api", rate=1, per=1.0, clock=clock, burst=1)
    async with limiter:
        pass

    assert limiter.snapshot()["available"] == 0.0


async def test_snapshot_reports_waiting_callers_and_configuration() -> None:
    clock = ManualClock()
    limiter = RateLimiter("perplexity", rate=50, per=60.0, clock=clock, burst=1)
    await limiter.acquire()
    waiters = [await start(clock, limiter.acquire()) for _ in range(3)]

    snapshot = limiter.snapshot()

    assert snapshot == {
        "name": "perplexity",
        "rate": 50,
        "per": 60.0,
        "burst": 1.0,
        "available": 0.0,
        "waiting": 3,
        "paused_for": 0.0,
        "tightened": False,
    }
    for waiter in waiters:
        waiter.cancel()
    await clock.settle()


# --- TokenBudget ---------------------------------------------------------------------------------


async def test_token_reservation_waits_until_the_estimate_fits() -> None:
    clock = ManualClock()
    budget = TokenBudget("openai", tokens_per_minute=600, clock=clock)
    await budget.reserve(600)
    t0 = clock.monotonic()

    await clock.run_until_complete(budget.reserve(100))

    assert clock.monotonic() - t0 == pytest.approx(10.0)


async def test_settling_below_the_estimate_refunds_the_difference() -> None:
    clock = ManualClock()
    budget = TokenBudget("openai", tokens_per_minute=600, clock=clock)
    reservation = await budget.reserve(600)

    reservation.settle(100)

    assert budget.snapshot()["available"] == 500
    t0 = clock.monotonic()
    await clock.run_until_complete(budget.reserve(500))
    assert clock.monotonic() == t0


async def test_settling_above_the_estimate_charges_the_difference() -> None:
    clock = ManualClock()
    budget = TokenBudget("openai", tokens_per_minute=600, clock=clock)
    reservation = await budget.reserve(100)

    reservation.settle(400)
    reservation.settle(10_000)  # only the first settlement counts

    assert budget.snapshot()["available"] == 200
    t0 = clock.monotonic()
    await clock.run_until_complete(budget.reserve(300))
    assert clock.monotonic() - t0 == pytest.approx(10.0)


async def test_refund_wakes_a_waiting_reservation_at_once() -> None:
    clock = ManualClock()
    budget = TokenBudget("openai", tokens_per_minute=600, clock=clock)
    reservation = await budget.reserve(600)
    waiter = await start(clock, budget.reserve(300))

    reservation.settle(200)
    await clock.settle()

    assert waiter.done()


async def test_an_estimate_beyond_the_whole_budget_waits_for_a_full_budget_then_goes() -> None:
    clock = ManualClock()
    budget = TokenBudget("openai", tokens_per_minute=600, clock=clock)
    await budget.reserve(300)
    t0 = clock.monotonic()

    await clock.run_until_complete(budget.reserve(900))

    assert clock.monotonic() - t0 == pytest.approx(30.0)
    assert budget.snapshot()["available"] == -300


async def test_tightened_token_budget_spends_no_more_than_remaining_before_the_reset() -> None:
    clock = ManualClock()
    budget = TokenBudget("openai", tokens_per_minute=100_000, clock=clock)
    t0 = clock.monotonic()
    budget.tighten(remaining=50, reset_after=60.0)

    await clock.run_until_complete(budget.reserve(40))
    assert clock.monotonic() == t0
    await clock.run_until_complete(budget.reserve(40))

    assert clock.monotonic() - t0 == pytest.approx(60.0)


async def test_tightened_token_budget_goes_at_once_then_paces_its_last_tenth() -> None:
    clock = ManualClock()
    budget = TokenBudget("openai", tokens_per_minute=1_000_000, clock=clock)
    await budget.reserve(1_000)
    budget.tighten(remaining=30_000, reset_after=60.0, limit=30_000)
    t0 = clock.monotonic()
    times = []

    for _ in range(4):
        await clock.run_until_complete(budget.reserve(10_000))
        times.append(clock.monotonic() - t0)

    # 30,000 left: two go at once; the third would leave less than the 3,000 reserve, so it waits
    # its share (10,000 of the 20,000 then in play) of the time to the reset; the fourth, the reset.
    assert times == pytest.approx([0.0, 0.0, 30.0, 60.0])


async def test_usage_above_the_estimate_counts_against_what_the_headers_said_is_left() -> None:
    clock = ManualClock()
    budget = TokenBudget("openai", tokens_per_minute=1_000_000, clock=clock)
    budget.tighten(remaining=5_000, reset_after=60.0, limit=100_000)
    reservation = await budget.reserve(1_000)
    reservation.settle(4_500)
    t0 = clock.monotonic()

    await clock.run_until_complete(budget.reserve(1_000))

    assert clock.monotonic() - t0 == pytest.approx(60.0)
