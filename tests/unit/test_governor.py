from __future__ import annotations

import asyncio

import pytest
from telethon import errors

from bot.telegram.flood_governor import FloodGovernor, GovernedTransport
from bot.telegram.transport import TelegramTransport
from handlers.richtext import RichText
from handlers.transport import DraftsUnsupported
from integrations.clock import ManualClock
from integrations.errors import PreviewDeferred, RateLimited
from tests.fakes.telegram import FakeTelegramClient

USER = 4242
OTHER_USER = 4343
GROUP = -1001234567890
T0 = 1000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=T0)


@pytest.fixture
def client(clock: ManualClock) -> FakeTelegramClient:
    fake = FakeTelegramClient(clock, knows_every_chat=True)
    fake.enforce_limits(per_chat_interval=1.0, global_per_second=30, group_per_minute=20)
    return fake


@pytest.fixture
def governor(clock: ManualClock) -> FloodGovernor:
    return FloodGovernor(clock)


@pytest.fixture
def transport(client: FakeTelegramClient, governor: FloodGovernor) -> GovernedTransport:
    return GovernedTransport(TelegramTransport(client), governor)


def text(value: str) -> RichText:
    return RichText.plain(value)


def flood_wait(seconds: int) -> errors.FloodWaitError:
    return errors.FloodWaitError(request=None, capture=seconds)


async def test_private_chat_calls_start_one_second_apart_in_arrival_order(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    await clock.run_until_complete(asyncio.gather(*(transport.send(USER, text(f"m{i}")) for i in range(4))))

    sent = client.messages(USER)
    assert [m.text for m in sent] == ["m0", "m1", "m2", "m3"]
    assert [m.sent_at for m in sent] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert client.violation_count == 0


async def test_group_calls_stay_within_twenty_a_minute(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    first = await transport.send(GROUP, text("v0"))

    await clock.run_until_complete(
        asyncio.gather(*(transport.edit(GROUP, first, text(f"v{i}")) for i in range(1, 25)))
    )

    landed = [edit.at for edit in client.messages(GROUP)[0].edits]
    calls = [T0, *landed]
    # One a second while the group's minute has room, then no more than 20 in any 60 seconds.
    assert landed[:3] == [T0 + 1, T0 + 2, T0 + 3]
    assert all(later - earlier >= 1.0 for earlier, later in zip(calls, calls[1:]))
    assert all(sum(1 for t in calls if start <= t < start + 60.0) <= 20 for start in calls)
    assert calls[20] >= T0 + 60.0
    assert client.violation_count == 0


async def test_many_chats_together_stay_under_thirty_calls_a_second(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    chats = range(1, 101)

    await clock.run_until_complete(asyncio.gather(*(transport.send(chat, text("hi")) for chat in chats)))

    times = sorted(client.messages(chat)[0].sent_at for chat in chats)
    busiest_second = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest_second == 30
    assert times[-1] == T0 + 3  # 100 calls at 30 a second: four slots of time, no more
    assert client.violation_count == 0


async def test_fifty_streaming_chats_never_provoke_a_flood_wait(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    async def stream(chat: int) -> None:
        message_id = await transport.send(chat, text("."))
        for step in range(1, 6):
            await transport.edit(chat, message_id, text("." * (step + 1)))

    chats = [*range(1, 26), *range(-25, 0)]
    await clock.run_until_complete(asyncio.gather(*(stream(chat) for chat in chats)))

    assert client.violation_count == 0
    assert all(client.final_text(chat) == "......" for chat in chats)


async def test_flood_wait_on_a_draft_pauses_the_chat_and_the_stale_draft_is_not_repeated(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    await transport.send(USER, text("start"))
    await clock.advance(5)
    client.fail_next("draft", flood_wait(30))
    with pytest.raises(RateLimited):
        await transport.draft(USER, 7, text("stale preview"))
    pending = asyncio.ensure_future(transport.draft(USER, 7, text("newer preview")))
    await clock.advance(29.5)
    assert not pending.done()
    await clock.advance(0.5)
    await pending
    assert [d.text for d in client.drafts(USER)] == ["newer preview"]
    assert client.drafts(USER)[0].at == T0 + 5 + 30


async def test_previews_leave_the_last_share_of_the_global_budget_to_final_texts(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    previews = await asyncio.gather(
        *(transport.send(chat, text("preview"), preview=True) for chat in range(1, 31)), return_exceptions=True
    )
    deferred = [p for p in previews if isinstance(p, PreviewDeferred)]
    assert len(deferred) == 6  # 20% of 30 a second is kept back
    final = await transport.send(99, text("final"))
    assert client.messages(99)[0].sent_at == T0
    assert final


@pytest.mark.parametrize("kind", ["send", "edit"])
async def test_flood_wait_pauses_exactly_that_chat_for_exactly_the_given_seconds(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock, kind: str
) -> None:
    message_id = await transport.send(USER, text("start"))
    await clock.advance(5)
    client.fail_next(kind, flood_wait(30))
    call = {
        "send": lambda: transport.send(USER, text("after")),
        "edit": lambda: transport.edit(USER, message_id, text("after")),
        "draft": lambda: transport.draft(USER, 7, text("after")),
    }[kind]

    pending = asyncio.ensure_future(call())
    await clock.advance(0)
    await transport.send(OTHER_USER, text("unaffected"))
    await clock.advance(29.5)
    landed_before_the_wait_ended = pending.done()
    await clock.advance(0.5)
    await pending

    assert not landed_before_the_wait_ended
    assert client.messages(OTHER_USER)[0].sent_at == T0 + 5
    landed_at = {
        "send": lambda: client.messages(USER)[-1].sent_at,
        "edit": lambda: client.messages(USER)[0].edits[-1].at,
        "draft": lambda: client.drafts(USER)[-1].at,
    }[kind]()
    assert landed_at == T0 + 5 + 30


async def test_slow_mode_in_a_group_is_waited_out_and_the_message_lands(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    client.fail_next("send", errors.SlowModeWaitError(request=None, capture=10))

    await clock.run_until_complete(transport.send(GROUP, text("answer")))

    [message] = client.messages(GROUP)
    assert (message.text, message.sent_at) == ("answer", T0 + 10)


async def test_calls_queued_behind_a_paused_call_keep_their_order_and_pace(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    client.fail_next("send", flood_wait(20))

    parts = [transport.send(USER, text(f"part {i}")) for i in range(3)]
    await clock.run_until_complete(asyncio.gather(*parts))

    assert [(m.text, m.sent_at) for m in client.messages(USER)] == [
        ("part 0", T0 + 20),
        ("part 1", T0 + 21),
        ("part 2", T0 + 22),
    ]


async def test_snapshot_shows_the_pause_remaining(
    transport: GovernedTransport, governor: FloodGovernor, client: FakeTelegramClient, clock: ManualClock
) -> None:
    client.fail_next("send", flood_wait(30))
    pending = asyncio.ensure_future(transport.send(USER, text("hello")))
    await clock.advance(12)

    snapshot = governor.snapshot()

    assert snapshot.chats[USER].paused_for == pytest.approx(18)
    assert (snapshot.chats[USER].calls, snapshot.chats[USER].flood_waits) == (1, 1)
    assert snapshot.flood_waits == 1
    await clock.advance(18)
    await pending
    assert governor.snapshot().chats[USER].paused_for == 0


async def test_typing_is_dropped_while_the_chat_is_paused(
    transport: GovernedTransport, governor: FloodGovernor, client: FakeTelegramClient, clock: ManualClock
) -> None:
    client.fail_next("send", flood_wait(10))
    pending = asyncio.ensure_future(transport.send(USER, text("hello")))
    await clock.advance(1)

    # Returns at once instead of waiting nine seconds (the real-time bound only matters on failure).
    await asyncio.wait_for(transport.typing(USER), 1)

    assert client.typing_actions(USER) == []
    assert governor.snapshot().typing_dropped == 1
    await clock.advance(9)
    await pending
    await transport.typing(USER)
    assert client.typing_actions(USER) == [T0 + 10]


async def test_a_flood_wait_on_typing_pauses_the_chat_for_messages_too(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    client.fail_next("typing", flood_wait(15))

    await transport.typing(USER)  # dropped, not retried
    await clock.run_until_complete(transport.send(USER, text("reply")))

    assert client.typing_actions(USER) == []
    assert client.messages(USER)[0].sent_at == T0 + 15


async def test_typing_does_not_wait_for_the_chats_message_pace(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    await transport.send(USER, text("one"))

    await transport.typing(USER)

    assert client.typing_actions(USER) == [T0]


async def test_a_call_flood_waited_again_and_again_is_given_back_to_the_caller(
    client: FakeTelegramClient, clock: ManualClock
) -> None:
    governor = FloodGovernor(clock, max_flood_waits=3)
    transport = GovernedTransport(TelegramTransport(client), governor)
    client.fail_next("send", flood_wait(5), times=3)

    with pytest.raises(RateLimited) as raised:
        await clock.run_until_complete(transport.send(USER, text("hello")))

    assert raised.value.retry_after == 5
    assert clock.monotonic() == T0 + 10  # waited out two pauses, gave up on the third at once
    assert governor.snapshot().chats[USER].paused_for == 5


async def test_group_drafts_are_refused_without_taking_the_chats_pace(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    with pytest.raises(DraftsUnsupported):
        await transport.draft(GROUP, 7, text("preview"))

    await transport.send(GROUP, text("fallback"))

    assert client.messages(GROUP)[0].sent_at == T0


async def test_idle_chats_are_forgotten_a_group_once_its_minute_has_passed(
    transport: GovernedTransport, governor: FloodGovernor, clock: ManualClock
) -> None:
    await transport.send(USER, text("one"))
    await transport.send(GROUP, text("two"))
    assert set(governor.snapshot().chats) == {USER, GROUP}

    await clock.advance(3)
    # The group's call still counts against its twenty a minute: forgetting it would reset that.
    assert set(governor.snapshot().chats) == {GROUP}
    await clock.advance(57)

    assert governor.snapshot().chats == {}
    assert governor.snapshot().calls == 2


async def test_other_errors_pass_through_without_a_retry(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    client.fail_next("send", errors.ChatWriteForbiddenError(request=None))

    with pytest.raises(Exception) as raised:
        await transport.send(GROUP, text("hi"))

    assert type(raised.value).__name__ == "BadRequest"
    assert [call.outcome for call in client.calls] == ["ChatWriteForbiddenError"]


def busiest_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


def a_call_taking(clock: ManualClock, seconds: float, starts: list[float]):
    async def call() -> None:
        starts.append(clock.monotonic())
        await clock.sleep(seconds)

    return call


async def test_calls_in_flight_hold_their_place_until_a_second_after_their_answer(
    governor: FloodGovernor, clock: ManualClock
) -> None:
    starts: list[float] = []
    # Calls slower than the window: counting starts alone would let 30 more through at T0 + 1.
    calls = [governor.run(chat, True, a_call_taking(clock, 2.0, starts)) for chat in range(1, 61)]

    await clock.run_until_complete(asyncio.gather(*calls))

    assert starts == [T0] * 30 + [T0 + 3] * 30


async def test_many_chats_with_jittery_latency_never_start_or_land_more_than_thirty_in_a_second(
    governor: FloodGovernor, client: FakeTelegramClient, clock: ManualClock
) -> None:
    client.add_latency(0.02, 0.6, seed=3)
    starts: list[float] = []

    async def send(chat: int, part: int) -> None:
        async def call() -> None:
            starts.append(clock.monotonic())
            await client.send_message(chat, f"part {part}", parse_mode=None)

        await governor.run(chat, True, call)

    chats = range(1, 301)
    await clock.run_until_complete(asyncio.gather(*(send(chat, part) for chat in chats for part in range(2))))

    landed = sorted(m.sent_at for chat in chats for m in client.messages(chat))
    assert len(landed) == 600
    assert busiest_second(starts) <= 30
    assert busiest_second(landed) <= 30
    assert client.violation_count == 0


async def test_a_burst_from_two_hundred_group_chats_stays_within_every_limit(
    transport: GovernedTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    client.add_latency(0.03, 0.3, seed=7)
    groups = [-(2000 + i) for i in range(200)]

    async def answer(group: int) -> None:
        # What a reply in a group makes: typing, a preview message, edits, a last part.
        await transport.typing(group)
        message_id = await transport.send(group, text("thinking"))
        for step in range(2):
            await transport.edit(group, message_id, text("thinking" + "." * (step + 1)))
        await transport.send(group, text("done"))

    await clock.run_until_complete(asyncio.gather(*(answer(group) for group in groups)))

    assert client.violation_count == 0
    assert all(client.final_text(group, "|") == "thinking..|done" for group in groups)
    landed = sorted(call.at for call in client.calls if call.kind in ("send", "edit"))
    assert busiest_second(landed) <= 30
    # 1,000 calls (typing included) at 30 a second, each holding its place one round trip longer.
    assert clock.monotonic() - T0 < 1000 / 30 * (1 + 2 * 0.3)


async def test_previews_are_deferred_while_calls_in_flight_fill_the_share_kept_for_final_texts(
    governor: FloodGovernor, clock: ManualClock
) -> None:
    starts: list[float] = []
    previews = [governor.run(chat, True, a_call_taking(clock, 2.0, starts), preview=True) for chat in range(1, 25)]
    in_flight = asyncio.gather(*previews)
    await clock.advance(0)

    with pytest.raises(PreviewDeferred):
        await governor.run(100, True, a_call_taking(clock, 2.0, starts), preview=True)
    final = asyncio.ensure_future(governor.run(101, True, a_call_taking(clock, 2.0, starts)))
    await clock.advance(0)

    assert starts == [T0] * 25  # 24 previews in flight, and the final text at once beside them
    assert governor.snapshot().previews_deferred == 1
    await clock.run_until_complete(asyncio.gather(in_flight, final))


async def test_previews_do_not_queue_for_places_final_texts_are_waiting_for(
    governor: FloodGovernor, clock: ManualClock
) -> None:
    starts: list[float] = []
    finals = [governor.run(chat, True, a_call_taking(clock, 0.5, starts)) for chat in range(1, 36)]
    pending = asyncio.gather(*finals)
    await clock.advance(0)

    # The window is full and five final texts wait: a preview is turned away, not queued among them.
    with pytest.raises(PreviewDeferred):
        await governor.run(100, True, a_call_taking(clock, 0.5, starts), preview=True)
    await clock.run_until_complete(pending)

    assert starts == [T0] * 30 + [T0 + 1.5] * 5


async def test_a_caller_cancelled_while_waiting_for_a_place_takes_none(
    governor: FloodGovernor, clock: ManualClock
) -> None:
    starts: list[float] = []
    first = asyncio.gather(*(governor.run(chat, True, a_call_taking(clock, 0.5, starts)) for chat in range(1, 31)))
    await clock.advance(0)
    given_up = asyncio.ensure_future(governor.run(31, True, a_call_taking(clock, 0.5, starts)))
    waiting = asyncio.ensure_future(governor.run(32, True, a_call_taking(clock, 0.5, starts)))
    await clock.advance(0)

    given_up.cancel()
    await clock.run_until_complete(asyncio.gather(first, waiting))

    assert starts == [T0] * 30 + [T0 + 1.5]
    assert given_up.cancelled()


async def test_flood_waits_in_three_chats_at_once_hold_every_chat_for_the_bots_wait(
    client: FakeTelegramClient, clock: ManualClock
) -> None:
    """Another session of the bot spent half of Telegram's 30 a second (the governor here allows
    itself 60): the waits Telegram then gives several chats are the bot's, so every chat waits."""
    governor = FloodGovernor(clock, global_per_second=60)
    transport = GovernedTransport(TelegramTransport(client), governor)
    burst = asyncio.gather(*(transport.send(chat, text("hi")) for chat in range(1, 41)))
    await clock.run_until(lambda: governor.snapshot().bot_paused_for > 0)

    assert not governor.takes_preview(500)  # a chat never flooded: its preview would only wait
    await transport.typing(501)  # dropped, not sent into the bot's flood wait
    await clock.run_until_complete(asyncio.gather(burst, transport.send(502, text("later"))))

    flooded_at = T0  # the fake answers at once: the 31st call of the second is refused
    assert client.messages(502)[0].sent_at == pytest.approx(flooded_at + 1)
    assert all(client.messages(chat)[0].sent_at >= flooded_at + 1 for chat in range(31, 41))
    assert governor.snapshot().bot_pauses == 1 and governor.snapshot().typing_dropped == 1
    assert client.typing_actions(501) == []


async def test_two_sessions_of_one_bot_spend_one_flood_allowance(clock: ManualClock) -> None:
    """Telegram counts flood limits per bot, not per session: two instances each keeping to 30 a
    second together get flood waits, which the bot-wide pause then holds every chat for."""
    first = FakeTelegramClient(clock, knows_every_chat=True)
    second = FakeTelegramClient(clock, knows_every_chat=True, same_account_as=first)
    for session in (first, second):
        session.enforce_limits(per_chat_interval=1.0, global_per_second=30, group_per_minute=20)
    governors = [FloodGovernor(clock), FloodGovernor(clock)]
    transports = [GovernedTransport(TelegramTransport(session), governor) for session, governor in zip((first, second), governors)]

    await clock.run_until_complete(
        asyncio.gather(*(transports[chat % 2].send(chat, text("hi")) for chat in range(1, 41)))
    )

    # 40 at once, 30 allowed: the sessions share one count (the first's list is the second's), and
    # each instance stops sending at its third flood wait (its bot-wide pause): 6, not all 10 over.
    assert first.violations is second.violations and first.violation_count == 6
    assert [governor.snapshot().bot_pauses for governor in governors] == [1, 1]
    assert sum(len(first.messages(chat)) for chat in range(1, 41)) == 40  # every one delivered in the end
