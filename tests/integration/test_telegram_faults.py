"""Telegram's own misbehaviour during a streamed reply: flood waits and slow mode.

Whatever Telegram says, the final text lands exactly once, after exactly the wait it asked for,
and the bot never calls again before the wait is over.
"""
from contextlib import AsyncExitStack

from telethon import errors

from tests.fakes import anthropic_server as anth
from tests.fakes.telegram import new_message_event
from tests.integration.telegram_bot import ANTHROPIC_KEY, USER, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
ANSWER = "The final answer has several words in it."
GROUP = -100777


async def bot_with_claude(stack, tmp_path, reply=ANSWER, chunks=8):
    claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(reply, chunks=chunks)))
    return await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE], allow_everyone=True))


def calls_of(bot, kind, chat_id):
    return [c for c in bot.client.calls if c.kind == kind and c.chat_id == chat_id]


async def test_flood_wait_on_the_final_send_is_waited_out_and_the_text_lands_once(tmp_path):
    async with AsyncExitStack() as stack:
        bot = await bot_with_claude(stack, tmp_path)
        bot.client.fail_next("send", errors.FloodWaitError(request=None, capture=30))
        await bot.user_says("hi")
        assert bot.texts() == [ANSWER]
        sends = calls_of(bot, "send", USER)
        assert [c.outcome for c in sends] == ["FloodWaitError", "ok"]
        assert sends[1].at - sends[0].at >= 30.0


async def test_flood_wait_on_a_streaming_edit_pauses_the_chat_and_the_final_text_lands(tmp_path):
    async with AsyncExitStack() as stack:
        bot = await bot_with_claude(stack, tmp_path, reply=" ".join(f"word{i}" for i in range(60)), chunks=30)
        bot.client.fail_next("edit", errors.FloodWaitError(request=None, capture=12))
        await bot.user_says("@switchboard_bot talk", chat_id=GROUP, mentioned=True)
        [message] = bot.client.messages(GROUP)
        assert message.text == " ".join(f"word{i}" for i in range(60))
        edits = calls_of(bot, "edit", GROUP)
        flooded = [c for c in edits if c.outcome == "FloodWaitError"]
        assert len(flooded) == 1
        after = [c for c in bot.client.calls if c.chat_id == GROUP and c.at > flooded[0].at]
        assert after and min(c.at for c in after) >= flooded[0].at + 12.0


async def test_flood_wait_on_a_draft_pauses_the_chat_then_the_reply_lands(tmp_path):
    async with AsyncExitStack() as stack:
        bot = await bot_with_claude(stack, tmp_path)
        bot.client.fail_next("draft", errors.FloodWaitError(request=None, capture=20))
        await bot.user_says("hi")
        assert bot.texts() == [ANSWER]
        [flooded] = [c for c in calls_of(bot, "draft", USER) if c.outcome == "FloodWaitError"]
        later = [c for c in bot.client.calls if c.chat_id == USER and c.at > flooded.at and c.kind != "typing"]
        assert min(c.at for c in later) >= flooded.at + 20.0


async def test_slow_mode_in_a_group_is_waited_out(tmp_path):
    async with AsyncExitStack() as stack:
        bot = await bot_with_claude(stack, tmp_path)
        bot.client.fail_next("send", errors.SlowModeWaitError(request=None, capture=45))
        await bot.user_says("@switchboard_bot hi", chat_id=GROUP, mentioned=True)
        assert [m.text for m in bot.client.messages(GROUP)] == [ANSWER]
        sends = calls_of(bot, "send", GROUP)
        assert sends[0].outcome == "SlowModeWaitError"
        assert sends[-1].at - sends[0].at >= 45.0


async def test_a_flooded_chat_does_not_delay_another_chat(tmp_path):
    other = 5151
    async with AsyncExitStack() as stack:
        bot = await bot_with_claude(stack, tmp_path)
        bot.client.fail_next("send", errors.FloodWaitError(request=None, capture=300), chat_id=USER)
        await bot.client.deliver(new_message_event(chat_id=USER, sender_id=USER, text="hi", message_id=1))
        await bot.client.deliver(new_message_event(chat_id=other, sender_id=other, text="hi too", message_id=2))
        await bot.settle()
        assert bot.texts() == [ANSWER] and bot.texts(other) == [ANSWER]
        flooded_at = calls_of(bot, "send", USER)[0].at
        assert calls_of(bot, "send", other)[-1].at < flooded_at + 300.0
        assert calls_of(bot, "send", USER)[-1].at >= flooded_at + 300.0
