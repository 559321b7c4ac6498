"""An answer stopped with /cancel was billed for what the model had read and written: it counts in
/usage and budgets (what the stream reported, or an estimate for the rest), as a finished one does."""
import asyncio
import math
from contextlib import AsyncExitStack

from integrations.context_window import CHARS_PER_TOKEN
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.telegram import new_message_event
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
PRICE = (("claude-test", 3.0, 15.0),)


async def test_an_answer_stopped_with_cancel_counts_what_it_cost(tmp_path):
    async with AsyncExitStack() as stack:
        # Two words stream ("one two "), then the model stalls until the user stops it.
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(2)))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE], llm_prices=PRICE))
        question = new_message_event(chat_id=USER, sender_id=USER, text="Tell me a long story", message_id=next(MESSAGE_IDS))
        bot.client.dispatch(question)
        await asyncio.wait_for(claude.server.stall_began.wait(), 10)
        await bot.user_says("/cancel")
        await bot.settle()
        assert bot.texts()[-1].endswith("(stopped)")

        [line] = await bot.app.services.features.usage.lines(days=1, user_id=USER)
        # Claude reported the input at the start (12 tokens); the output is estimated from the text received.
        assert (line.model, line.requests, line.input_tokens) == (CLAUDE, 1, 12)
        assert line.output_tokens == math.ceil(len("one two ") / CHARS_PER_TOKEN)
        assert line.cost_usd == (12 * 3.0 + line.output_tokens * 15.0) / 1e6
        await bot.user_says("/usage")
        assert bot.texts()[-1].startswith(f"Today (26 November, UTC): 12 tokens in and {line.output_tokens} out")


async def test_a_finished_answer_is_counted_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Hello.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE], llm_prices=PRICE))
        await bot.user_says("hi")
        await bot.user_says("/cancel")  # nothing left to stop
        [line] = await bot.app.services.features.usage.lines(days=1, user_id=USER)
        assert (line.requests, line.input_tokens) == (1, 12)
