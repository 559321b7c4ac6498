"""The catch-up handover seen from a chat: a leader dies, a message arrives while nobody leads, a
new leader logs in. Telegram (the soak's fake, which keeps the account's pts as Telegram does)
hands a client only what came after the state it connects with, and a client without one starts
from now; so the message is answered only when the new leader's session was seeded with the last
leader's update state (bot/telegram/catch_up.py), and then exactly once."""
from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

from bench._soak_telegram_child import SocketTelegramClient
from bench._soak_telegram_server import SoakTelegram
from bot.telegram.catch_up import EVERY, SharedCatchUp
from integrations.clock import ManualClock
from state.catch_up import CatchUpStore
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.integration.telegram_bot import ANTHROPIC_KEY, USER, TelegramBot, kill, settings_for, start_telegram_bot

GROUP = -1009876543210
ANSWER = "The answer."


def replies_to(telegram: SoakTelegram, message_id: int) -> int:
    """Answers to the message (not the notice that it will be answered after the reply in progress)."""
    return sum(1 for m in telegram.bot_messages() if m.chat_id == GROUP and m.reply_to == message_id and m.text == ANSWER)


async def handover(tmp_path, state_db, clock, *, seeded: bool) -> dict[str, int]:
    """Leader A answers a question and dies; one question comes while nobody leads, one after B
    took over. How many replies each question got, once B answered the last one."""
    store = CatchUpStore(state_db, clock)
    async with (
        FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(ANSWER)) as claude,
        SoakTelegram(random.Random(1), latency=(0.0, 0.0)) as telegram,
    ):
        settings = settings_for(tmp_path / "state", anthropic=claude, models=["anthropic:claude-test"])
        a_run = AsyncExitStack()
        leader = SocketTelegramClient(telegram.port)
        await SharedCatchUp(store, clock, "bot-a").lead(leader, a_run)
        a = await start_telegram_bot(a_run, settings, clock, client=leader)
        before = telegram.user_sends(GROUP, USER, "asked while A led").id
        await clock.run_until(lambda: replies_to(telegram, before) > 0)
        await clock.run_until_complete(_settled(a, leader))
        await clock.advance(2 * EVERY)  # A's state, past the first question, is stored by now
        await clock.run_until_complete(_stored(store, clock, telegram.pts), poll=0.05)
        await kill(a, a_run)

        meanwhile = telegram.user_sends(GROUP, USER, "asked while nobody led").id
        async with AsyncExitStack() as b_run:
            standby = SocketTelegramClient(telegram.port)
            if seeded:
                await SharedCatchUp(store, clock, "bot-b").lead(standby, b_run)
            b = await start_telegram_bot(b_run, settings, clock, client=standby)
            after = telegram.user_sends(GROUP, USER, "asked once B led").id
            await clock.run_until(lambda: replies_to(telegram, after) > 0)
            await clock.run_until_complete(_settled(b, standby))
        return {"before": replies_to(telegram, before), "meanwhile": replies_to(telegram, meanwhile), "after": replies_to(telegram, after)}


async def _settled(bot: TelegramBot, client: SocketTelegramClient) -> None:
    """Every update handed to the client handled, every answer it started finished."""
    while client._event_handler_tasks:
        await asyncio.wait(set(client._event_handler_tasks))
    await bot.app.services.lanes.wait_all_idle()


async def _stored(store: CatchUpStore, clock: ManualClock, pts: int) -> None:
    while ((await store.load()) or {}).get("pts") != pts:
        await clock.sleep(0.05)


async def test_a_new_leader_not_seeded_never_answers_what_came_while_nobody_led(tmp_path, state_db, clock):
    assert await handover(tmp_path, state_db, clock, seeded=False) == {"before": 1, "meanwhile": 0, "after": 1}


async def test_a_seeded_new_leader_answers_what_came_while_nobody_led_once(tmp_path, state_db, clock):
    assert await handover(tmp_path, state_db, clock, seeded=True) == {"before": 1, "meanwhile": 1, "after": 1}
