"""Through a real redis-server, two instances on one clock: a bot-wide Telegram flood wait holds
every chat on every instance, and what one instance decided while Redis was unreachable (a
Retry-After pause, a flood wait; an open breaker: test_shared_limits) reaches the others once
Redis is back, for the time still left. Checked by when calls go out, the log and the /status text."""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

import pytest

from bot.telegram.flood_governor import flood_governor_for
from handlers.status_report import StatusSources, build_status
from integrations.clock import ManualClock
from integrations.errors import RateLimited
from tests.unit.test_shared_limits import POLL, two_instances


class Chats:
    """Telegram as the governors see it: the first call in each chat listed in `flooded` gets a
    flood wait of `seconds`; every call that goes through is recorded with its moment."""

    def __init__(self, clock: ManualClock, flooded: set[int], seconds: float) -> None:
        self.clock, self.flooded, self.seconds = clock, set(flooded), seconds
        self.sent: list[tuple[int, float]] = []

    def send(self, chat_id: int):
        async def call() -> int:
            if chat_id in self.flooded:
                self.flooded.discard(chat_id)
                raise RateLimited(f"FLOOD_WAIT_{self.seconds:g}", upstream="telegram", retry_after=self.seconds)
            self.sent.append((chat_id, self.clock.monotonic()))
            return 1

        return call

    def when(self, chat_id: int) -> list[float]:
        return [moment for chat, moment in self.sent if chat == chat_id]


async def status_text(limits, governor) -> str:
    registry = limits.registry(failure_threshold=5, window=60, cooldown=30)
    registry.register_governor(governor)
    return await build_status(StatusSources(clock=governor._clock, resilience=registry))


async def test_flood_waits_in_three_chats_at_once_hold_every_chat_on_every_instance(redis_url, caplog):
    clock = ManualClock()
    telegram = Chats(clock, flooded={-1, -2, -3}, seconds=20)
    caplog.set_level(logging.INFO, logger="bot.telegram")
    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_url, clock)
        a, b = flood_governor_for(first, clock), flood_governor_for(second, clock)
        start = clock.monotonic()
        # Three groups answered at once on the first instance: Telegram's overall limit is hit.
        flooded = asyncio.gather(*(a.run(chat, False, telegram.send(chat)) for chat in (-1, -2, -3)))
        await clock.run_until(lambda: a.snapshot().bot_paused_for > 0, poll=POLL)
        await first.link.settle()
        # A chat nobody flooded, on the other instance, waits for the bot's pause all the same.
        waiting = asyncio.ensure_future(b.run(-4, False, telegram.send(-4)))
        await clock.run_until(lambda: b.snapshot().bot_paused_for > 0, poll=POLL)
        shown = await status_text(second, b)
        await clock.run_until_complete(asyncio.gather(waiting, flooded), poll=POLL)
    # The three flood waits came on slots 1/30 s apart (the bot's shared pace), and the four calls
    # let go at the bot's pause's end take slots 1/30 s apart again: all within 0.2 s of 20 s.
    [moment] = telegram.when(-4)
    assert 20 <= moment - start <= 20 + 6 / 30 + 1e-6
    assert all(20 <= telegram.when(chat)[0] - start <= 20 + 6 / 30 + 1e-6 for chat in (-1, -2, -3))
    logged = [r.getMessage() for r in caplog.records if "whole bot" in r.getMessage()]
    assert any("paused for 20 s" in line and "overall limit" in line for line in logged)
    assert any("another instance's flood wait" in line for line in logged)  # the second instance, told
    assert "the whole bot: paused, 20 s left" in shown
    assert a.snapshot().bot_pauses == 1 and b.snapshot().bot_pauses == 0  # told, not flooded itself


async def test_flood_waits_in_two_chats_hold_only_those_chats(redis_url):
    """The check above can fail: two chats' own flood waits are not the bot's overall limit."""
    clock = ManualClock()
    telegram = Chats(clock, flooded={-1, -2}, seconds=20)
    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_url, clock)
        a, b = flood_governor_for(first, clock), flood_governor_for(second, clock)
        start = clock.monotonic()
        flooded = asyncio.gather(*(a.run(chat, False, telegram.send(chat)) for chat in (-1, -2)))
        await clock.run_until(lambda: a.snapshot().chats[-2].paused_for > 0, poll=POLL)
        await first.link.settle()
        await clock.run_until_complete(b.run(-4, False, telegram.send(-4)), poll=POLL)
        await clock.run_until_complete(flooded, poll=POLL)
    assert telegram.when(-4)[0] - start < 1
    assert a.snapshot().bot_paused_for == 0


async def test_a_retry_after_pause_taken_while_redis_was_away_reaches_the_others_for_the_time_left(
    redis_server, caplog
):
    clock = ManualClock()
    caplog.set_level(logging.INFO, logger="integrations.resilience.redis_link")
    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_server.url, clock)
        a = first.limiter("anthropic requests", 50, 60.0, burst=50)
        b = second.limiter("anthropic requests", 50, 60.0, burst=50)
        redis_server.stop()
        start = clock.monotonic()
        a.pause(60)  # a 429 with Retry-After: 60; writing it fails, and the link goes down
        await first.link.settle()
        assert not first.link.usable
        redis_server.start()
        await clock.run_until(lambda: first.link.usable, poll=POLL)  # the prober finds it again
        back = clock.monotonic() - start
        await first.link.settle()
        await clock.run_until_complete(b.acquire(), poll=POLL)
    assert 0 < back < 60
    assert clock.monotonic() - start == pytest.approx(60, abs=0.01)  # the pause's end, not 60 s after Redis came back
    assert any("1 pause(s) and open breaker(s) taken while it was away written" in r.getMessage() for r in caplog.records)


async def test_a_flood_wait_taken_while_redis_was_away_pauses_the_chat_on_the_others_once_it_is_back(redis_server):
    clock = ManualClock()
    telegram = Chats(clock, flooded={-7}, seconds=30)
    async with AsyncExitStack() as stack:
        first, second = await two_instances(stack, redis_server.url, clock)
        a, b = flood_governor_for(first, clock), flood_governor_for(second, clock)
        redis_server.stop()
        start = clock.monotonic()
        held = asyncio.ensure_future(a.run(-7, False, telegram.send(-7)))
        await clock.run_until(lambda: -7 in a.snapshot().chats and a.snapshot().chats[-7].paused_for > 0, poll=POLL)
        await first.link.settle()
        redis_server.start()
        await clock.run_until(lambda: first.link.usable, poll=POLL)
        await first.link.settle()
        await clock.run_until_complete(b.run(-7, False, telegram.send(-7)), poll=POLL)
        await clock.run_until_complete(held, poll=POLL)
    # Both at the pause's end, on the bot's next two shared slots (1/30 s apart).
    assert [round(moment - start, 3) for moment in telegram.when(-7)] == [30, 30.033]

