"""The bot's overall Telegram pace kept once for every instance through a real redis-server: two
instances streaming replies into many chats through two sessions of one bot (the fake Telegram
counts their calls in one allowance, as Telegram counts per bot account) send at most thirty a
second together with no flood wait; with Redis down each keeps half of it (and /status says so);
once Redis is back the pace is shared again. Without the shared pace the same two sessions get
flood waits: test_governor.test_two_sessions_of_one_bot_spend_one_flood_allowance."""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from bot.telegram.flood_governor import FloodGovernor, GovernedTransport, flood_governor_for
from bot.telegram.transport import TelegramTransport
from handlers.richtext import RichText
from integrations.clock import ManualClock
from integrations.errors import PreviewDeferred
from integrations.resilience.local_limits import LocalLimits
from tests.fakes.telegram import FakeTelegramClient
from tests.unit.test_shared_flood_and_recovery import status_text
from tests.unit.test_shared_limits import POLL, two_instances

COUNTED = ("send", "edit", "draft")  # what Telegram's pace counts in the fake


def sessions_of_one_bot(clock: ManualClock) -> tuple[FakeTelegramClient, FakeTelegramClient]:
    first = FakeTelegramClient(clock, knows_every_chat=True)
    second = FakeTelegramClient(clock, knows_every_chat=True, same_account_as=first)
    for session in (first, second):
        session.enforce_limits(per_chat_interval=1.0, global_per_second=30, group_per_minute=20)
    return first, second


async def stream_reply(transport: GovernedTransport, chat: int, steps: int = 4) -> None:
    """As a reply is streamed: a first message, previews (skipped when deferred), the final text."""
    message_id = await transport.send(chat, RichText.plain("…"))
    for step in range(1, steps + 1):
        await transport.typing(chat)
        try:
            await transport.edit(chat, message_id, RichText.plain(f"part {step}…"), preview=True)
        except PreviewDeferred:
            pass  # the next preview carries this text too
    await transport.edit(chat, message_id, RichText.plain(f"answer for {chat}"))


def landed(session: FakeTelegramClient, since: float) -> list[float]:
    return sorted(call.at for call in session.calls if call.outcome == "ok" and call.kind in COUNTED and call.at >= since)


def busiest_second(times: list[float]) -> int:
    return max((sum(1 for t in times if start <= t < start + 1.0 - 1e-6) for start in times), default=0)


async def stream_on_both(clock: ManualClock, transports: list[GovernedTransport], chats: range) -> None:
    """Every chat streams a reply, three in four on the first instance, the rest on the second (a
    chat is answered by one instance at a time)."""
    await clock.run_until_complete(
        asyncio.gather(*(stream_reply(transports[int(chat % 4 == 0)], chat) for chat in chats)), poll=POLL
    )


class TwoInstances:
    """Two instances of one bot: their limits through Redis, their governors, their sessions."""

    def __init__(self, clock: ManualClock, limits: tuple[LocalLimits, LocalLimits]) -> None:
        self.limits = limits
        self.sessions = sessions_of_one_bot(clock)
        self.governors: list[FloodGovernor] = [flood_governor_for(each, clock) for each in limits]
        self.transports = [
            GovernedTransport(TelegramTransport(session), governor) for session, governor in zip(self.sessions, self.governors)
        ]

    @classmethod
    async def start(cls, stack: AsyncExitStack, url: str, clock: ManualClock) -> "TwoInstances":
        return cls(clock, await two_instances(stack, url, clock))


async def test_two_instances_streaming_into_many_chats_send_thirty_a_second_together_without_a_flood_wait(redis_url):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        bot = await TwoInstances.start(stack, redis_url, clock)
        start = clock.monotonic()
        await stream_on_both(clock, bot.transports, range(1, 81))
    first, second = bot.sessions
    together = sorted(landed(first, start) + landed(second, start))
    assert first.violation_count == 0
    assert busiest_second(together) == 30  # the bot's whole pace is used, never more
    # Not split in halves: the busier instance takes what the other leaves.
    assert busiest_second(landed(first, start)) > 15 and busiest_second(landed(second, start)) > 0
    assert all(first.final_text(chat) == f"answer for {chat}" for chat in range(1, 81))
    assert all(governor.snapshot().flood_waits == 0 for governor in bot.governors)


async def test_with_redis_down_each_instance_keeps_half_the_pace_and_once_it_is_back_they_share_it(redis_server):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        bot = await TwoInstances.start(stack, redis_server.url, clock)
        limits, sessions, governors, transports = bot.limits, bot.sessions, bot.governors, bot.transports

        redis_server.stop()
        down_at = clock.monotonic()
        await stream_on_both(clock, transports, range(1, 61))
        shown = await status_text(limits[0], governors[0])
        assert not any(each.link is not None and each.link.usable for each in limits)

        redis_server.start()
        await clock.run_until(lambda: all(each.link is not None and each.link.usable for each in limits), poll=POLL)
        back_at = clock.monotonic()
        # One instance alone may now use the bot's whole pace, and both together no more than it.
        await clock.run_until_complete(
            asyncio.gather(*(transports[0].send(chat, RichText.plain("hi")) for chat in range(101, 141))), poll=POLL
        )
        alone = landed(sessions[0], back_at)
        await stream_on_both(clock, transports, range(201, 261))
    first, second = sessions
    while_down = [landed(session, down_at) for session in sessions]
    while_down = [[t for t in times if t < back_at] for times in while_down]
    assert busiest_second(while_down[0]) == 15 and busiest_second(while_down[1]) <= 15
    assert first.violation_count == 0
    assert "Redis unreachable since" in shown and "local 1/2" in shown
    assert busiest_second(alone) == 30
    assert busiest_second(sorted(landed(first, back_at) + landed(second, back_at))) == 30
    assert all(first.final_text(chat) == f"answer for {chat}" for chat in [*range(1, 61), *range(201, 261)])


async def test_a_preview_is_deferred_at_once_rather_than_queue_behind_the_other_instances_final_texts(redis_url):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        bot = await TwoInstances.start(stack, redis_url, clock)
        sessions, governors, (first, second) = bot.sessions, bot.governors, bot.transports
        message_id = await clock.run_until_complete(second.send(-5, RichText.plain("…")), poll=POLL)
        start = clock.monotonic() + 1  # the group's own pace allows its next call then
        await clock.run_until_complete(clock.sleep(1), poll=POLL)
        finals = asyncio.gather(*(first.send(chat, RichText.plain("answer")) for chat in range(1, 31)))
        await clock.run_until(lambda: governors[0].snapshot().calls >= 1, poll=POLL)
        with pytest.raises(PreviewDeferred):
            await clock.run_until_complete(second.edit(-5, message_id, RichText.plain("part…"), preview=True), poll=POLL)
        deferred_at = clock.monotonic()
        learned = not second.takes_preview(-5)
        await second.typing(-5)
        await clock.run_until_complete(asyncio.gather(finals, second.edit(-5, message_id, RichText.plain("done"))), poll=POLL)
    assert deferred_at == start  # at once, not after the thirty final texts' slots
    assert learned and governors[1].snapshot().typing_dropped == 1  # told by that answer, no round trip
    assert sessions[0].final_text(-5) == "done" and sessions[0].violation_count == 0
    assert sessions[1].messages(-5)[0].edits[-1].at >= start + 29 / 30  # the final edit took its turn after them
