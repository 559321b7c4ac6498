"""Limits shared through a real redis-server by two instances (separate clients, one clock)."""
from __future__ import annotations

import asyncio
import logging
import random
from contextlib import AsyncExitStack

import pytest

from bot.telegram.flood_governor import flood_governor_for
from integrations.clock import ManualClock
from integrations.errors import CircuitOpen, RateLimited, Unavailable
from integrations.resilience.ratelimit import WaitTooLong
from integrations.resilience.shared_limits import LocalLimits, SharedLimits, open_limits

# Real I/O to Redis runs between the clock's jumps: give it time before time moves on.
POLL = 0.05


async def two_instances(stack: AsyncExitStack, url: str, clock: ManualClock, *, instances: int = 2) -> tuple[LocalLimits, LocalLimits]:
    first = await open_limits(url, clock, stack, instances=instances)
    second = await open_limits(url, clock, stack, instances=instances)
    assert isinstance(first, SharedLimits) and isinstance(second, SharedLimits)
    return first, second


async def grant_times(clock: ManualClock, limiters, seed: int, calls: int = 60) -> list[float]:
    """Callers arrive at random moments on random instances; when each was let through."""
    rng = random.Random(seed)
    granted: list[float] = []

    async def caller(delay: float, limiter) -> None:
        await clock.sleep(delay)
        await limiter.acquire()
        granted.append(clock.monotonic())

    tasks = [caller(rng.uniform(0, 3), rng.choice(limiters)) for _ in range(calls)]
    await clock.run_until_complete(asyncio.gather(*tasks), poll=POLL)
    return sorted(granted)


def most_in_any_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 1.0 - 1e-6) for start in times)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_two_instances_stay_within_one_limit_together(redis_url, seed):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_url, clock)
        limiters = [first.limiter("notion requests", 10, 1.0, burst=1), second.limiter("notion requests", 10, 1.0, burst=1)]
        times = await grant_times(clock, limiters, seed)
    assert len(times) == 60
    assert most_in_any_second(times) <= 10
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.1 - 1e-6


class Oversleeping:
    """`clock`, but every sleep wakes `extra` seconds late, as on a busy event loop."""

    def __init__(self, clock: ManualClock, extra: float) -> None:
        self.clock, self.extra = clock, extra
        self.monotonic, self.now = clock.monotonic, clock.now

    async def sleep(self, seconds: float) -> None:
        await self.clock.sleep(seconds + self.extra if seconds > 0 else seconds)


async def test_a_grant_woken_late_pushes_the_next_ones_back(redis_url):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        late = await open_limits(redis_url, Oversleeping(clock, 0.03), stack)  # type: ignore[arg-type]
        on_time = await open_limits(redis_url, clock, stack)
        a, b = late.limiter("notion requests", 10, 1.0, burst=1), on_time.limiter("notion requests", 10, 1.0, burst=1)
        granted = []
        for limiter in (b, a, b, a, b):
            await clock.run_until_complete(limiter.acquire(), poll=POLL)
            granted.append(clock.monotonic())
    gaps = [round(later - earlier, 6) for earlier, later in zip(granted, granted[1:])]
    assert gaps == [0.13, 0.1, 0.13, 0.1]  # A's slot came 0.03 late; B's next kept its 0.1 from it


async def test_two_instances_without_redis_each_spend_the_whole_limit(redis_url):
    """The check above can fail: two local limiters together go over the one limit."""
    clock = ManualClock()
    limiters = [LocalLimits(clock).limiter("notion requests", 10, 1.0, burst=1) for _ in range(2)]
    times = await grant_times(clock, limiters, seed=1)
    assert most_in_any_second(times) > 10


async def test_a_token_budget_is_shared_and_settled_across_instances(redis_url):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_url, clock)
        a, b = first.token_budget("openai tokens", 6000), second.token_budget("openai tokens", 6000)
        reservation = await a.reserve(5000)
        with pytest.raises(WaitTooLong):
            await b.reserve(5000, max_wait=1.0)  # 4000 tokens short: 40 s away
        reservation.settle(1000)  # the call used less: 4000 back for everyone
        await first.link.settle()
        await b.reserve(5000, max_wait=1.0)
        assert b.snapshot()["available"] == pytest.approx(0, abs=0.01)


async def test_an_open_breaker_in_one_instance_stops_the_other(redis_url):
    clock = ManualClock()
    calls = []

    async def upstream() -> str:
        calls.append(clock.monotonic())
        return "ok"

    async def failing() -> str:
        raise Unavailable("503", upstream="anthropic")

    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_url, clock)
        a = first.breaker("model anthropic:claude", failure_threshold=2, window=60, cooldown=30)
        b = second.breaker("model anthropic:claude", failure_threshold=2, window=60, cooldown=30)
        for _ in range(2):
            with pytest.raises(Unavailable):
                await a.call(failing)
        await first.link.settle()
        with pytest.raises(CircuitOpen):
            await b.call(upstream)
        assert calls == [] and b.snapshot()["state"] == "open"
        assert "503" in str(b.snapshot()["last_error"])

        await clock.advance(30)  # cooldown over: one probe for both instances
        assert await b.call(upstream) == "ok"
        await second.link.settle()
        assert await a.call(upstream) == "ok"  # the probe's success closed it everywhere
        assert a.snapshot()["state"] == "closed" and len(calls) == 2


async def test_only_one_instance_probes_a_half_open_breaker(redis_url):
    clock = ManualClock()
    probe_started, finish = asyncio.Event(), asyncio.Event()

    async def slow_probe() -> str:
        probe_started.set()
        await finish.wait()
        return "ok"

    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_url, clock)
        a = first.breaker("provider openai", failure_threshold=1, window=60, cooldown=30)
        b = second.breaker("provider openai", failure_threshold=1, window=60, cooldown=30)
        a.force_open("auth failed: check OPENAI_API_KEY")
        await first.link.settle()
        await clock.advance(30)
        probing = asyncio.ensure_future(a.call(slow_probe))
        await probe_started.wait()
        with pytest.raises(CircuitOpen, match="probe in flight"):
            await b.call(slow_probe)
        finish.set()
        assert await probing == "ok"
        await first.link.settle()
        assert await b.call(slow_probe) == "ok"


async def test_an_operator_reset_on_one_instance_closes_the_breaker_on_all(redis_url):
    clock = ManualClock()

    async def upstream() -> str:
        return "ok"

    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_url, clock)
        a = first.breaker("notion", failure_threshold=1, window=60, cooldown=300)
        b = second.breaker("notion", failure_threshold=1, window=60, cooldown=300)
        a.force_open("quota")
        await first.link.settle()
        with pytest.raises(CircuitOpen):
            await b.call(upstream)
        a.reset()
        await first.link.settle()
        assert await b.call(upstream) == "ok"


async def test_a_flood_pause_set_by_one_instance_pauses_the_other(redis_url):
    clock = ManualClock()
    sent: list[tuple[str, float]] = []
    floods = iter([RateLimited("FLOOD_WAIT_30", upstream="telegram", retry_after=30)])

    async def send_first() -> int:
        flood = next(floods, None)
        if flood is not None:
            raise flood
        sent.append(("first", clock.monotonic()))
        return 1

    async def send_second() -> int:
        sent.append(("second", clock.monotonic()))
        return 2

    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_url, clock)
        a, b = flood_governor_for(first, clock), flood_governor_for(second, clock)
        start = clock.monotonic()
        await clock.run_until_complete(a.run(-100, False, send_first), poll=POLL)
        await first.link.settle()
        await clock.run_until_complete(b.run(-100, False, send_second), poll=POLL)
        # Another chat is not paused.
        await clock.run_until_complete(b.run(-200, False, send_second), poll=POLL)
    assert [name for name, _ in sent] == ["first", "second", "second"]
    assert sent[0][1] - start == pytest.approx(30, abs=0.01)
    assert sent[1][1] - start >= 30 - 0.01
    assert b.snapshot().chats[-100].flood_waits == 0  # it was told, not flooded itself


async def test_redis_dying_mid_run_falls_back_to_a_local_share_and_comes_back(redis_server, caplog):
    clock = ManualClock()
    caplog.set_level(logging.INFO, logger="integrations.resilience.redis_link")
    async with AsyncExitStack() as stack:
        limits = await open_limits(redis_server.url, clock, stack, instances=2)
        limiter = limits.limiter("anthropic requests", 10, 1.0, burst=1)
        await clock.run_until_complete(limiter.acquire(), poll=POLL)
        assert limiter.snapshot()["shared"] is True and limiter.snapshot()["rate"] == 10

        redis_server.stop()
        times = []
        for _ in range(4):  # the first finds Redis gone and is not failed for it
            await clock.run_until_complete(limiter.acquire(), poll=POLL)
            times.append(clock.monotonic())
        assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [0.2, 0.2, 0.2]  # 5 a second: half of 10
        snapshot = limits.link.snapshot()
        assert snapshot["state"] == "local" and snapshot["down_since"] is not None
        assert limiter.snapshot()["shared"] is False and limiter.snapshot()["rate"] == 5
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1 and "1/2" in warnings[0].getMessage()

        redis_server.start()
        await clock.run_until_complete(clock.sleep(120), poll=POLL)  # the prober's backoff finds it
        assert limits.link.usable
        await clock.run_until_complete(limiter.acquire(), poll=POLL)
        assert limiter.snapshot()["shared"] is True
        assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_an_unreachable_redis_at_start_leaves_the_local_share_in_force(redis_server):
    clock = ManualClock()
    redis_server.stop()
    async with AsyncExitStack() as stack:
        limits = await open_limits(redis_server.url, clock, stack, instances=4)
        limiter = limits.limiter("openai requests", 40, 60.0, burst=4)
        assert not limits.link.usable
        await limiter.acquire()
        assert limiter.snapshot()["rate"] == 10 and limiter.snapshot()["burst"] == 1


async def test_a_hanging_redis_costs_one_timeout_then_the_local_share_answers(redis_server):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        limits = await open_limits(redis_server.url, clock, stack, instances=2, timeout=0.2)
        limiter = limits.limiter("openai requests", 10, 1.0, burst=1)
        breaker = limits.breaker("provider openai", failure_threshold=1, window=60, cooldown=30)
        await clock.run_until_complete(limiter.acquire(), poll=POLL)
        redis_server.freeze()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await clock.run_until_complete(limiter.acquire(), poll=POLL)  # not failed: the local share let it go

        async def upstream() -> str:
            return "ok"

        assert await breaker.call(upstream) == "ok"  # no Redis asked: the link is down
        assert loop.time() - started < 2.0  # one timeout of 0.2 s, not redis-py's own retries
        assert not limits.link.usable and limiter.snapshot()["shared"] is False
        redis_server.thaw()
        await clock.run_until_complete(clock.sleep(120), poll=POLL)
        assert limits.link.usable


async def test_a_breaker_opened_while_redis_was_away_is_shared_once_it_is_back(redis_server):
    clock = ManualClock()

    async def failing() -> str:
        raise Unavailable("503", upstream="openai")

    async def upstream() -> str:
        return "ok"

    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_server.url, clock)
        a = first.breaker("model openai:gpt", failure_threshold=1, window=60, cooldown=300)
        b = second.breaker("model openai:gpt", failure_threshold=1, window=60, cooldown=300)
        redis_server.stop()
        with pytest.raises(Unavailable):
            await a.call(failing)  # opens here, alone
        assert a.snapshot()["state"] == "open"
        redis_server.start()
        await clock.run_until_complete(clock.sleep(5), poll=POLL)  # both probers find Redis again
        await first.link.settle()  # written for the others when Redis came back, with no call here
        with pytest.raises(CircuitOpen):
            await b.call(upstream)
        assert b.snapshot()["retry_in"] == pytest.approx(295, abs=0.5)  # the cooldown left, not a new one


async def test_an_operator_reset_while_redis_hung_is_not_undone_once_it_answers_again(redis_server):
    clock = ManualClock()

    async def upstream() -> str:
        return "ok"

    async with AsyncExitStack() as stack:
        first = await open_limits(redis_server.url, clock, stack, instances=2, timeout=0.2)
        second = await open_limits(redis_server.url, clock, stack, instances=2, timeout=0.2)
        a = first.breaker("notion", failure_threshold=1, window=60, cooldown=300)
        b = second.breaker("notion", failure_threshold=1, window=60, cooldown=300)
        a.force_open("quota")
        await first.link.settle()
        redis_server.freeze()  # it hangs, and keeps the open state it holds
        await clock.run_until_complete(a.follow_shared(), poll=POLL)
        assert not first.link.usable
        a.reset()  # /breaker reset on this instance, while Redis cannot be told
        redis_server.thaw()
        await clock.run_until(lambda: first.link.usable, poll=POLL)
        await first.link.settle()
        assert await a.call(upstream) == "ok"  # not opened again by what Redis still held
        assert await b.call(upstream) == "ok"  # and closed everywhere
