"""Long conversations: older turns summarised by the cheapest model, idle conversations started afresh.

The bot is built by the real composition root on a fake Telegram; Claude (the dearer model) answers,
GPT (the cheaper one) is asked for summaries. A small context window (1000 tokens, so summaries start
at 750) makes four questions of ~200 tokens a long conversation.
"""
from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import replace

from bot.config import ConversationSettings, LimitSettings
from integrations.context_window import SUMMARY_CLOSING, SUMMARY_OPENING, estimate_tokens
from tests.fakes import anthropic_server as anth
from tests.fakes import openai_server as oai
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.http_server import STALL
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.telegram_bot import ANTHROPIC_KEY, OPENAI_KEY, USER, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
GPT = "openai:gpt-test"
PRICES = (("claude-test", 3.0, 15.0), ("gpt-test", 0.25, 2.0))
SUMMARY = "- The user is planning a garden with tomatoes, basil and a pond."
# Far beyond how far the test clock jumps on its own while the fakes answer over real sockets.
NO_TIMEOUT = 10_000.0


def question(n: int) -> str:
    """About 200 tokens, each question's words its own."""
    return f"Question {n}: " + " ".join(f"garden{n}word{i}" for i in range(50))


def long_chat_settings(tmp_path, claude, gpt, **conversation):
    return settings_for(
        tmp_path,
        anthropic=claude,
        openai=gpt,
        models=[CLAUDE, GPT],
        llm_context_tokens=1000,
        llm_max_tokens=100,
        llm_prices=PRICES,
        conversation=ConversationSettings(**{"compact_timeout": NO_TIMEOUT, **conversation}),
        # Summaries that keep failing must not open the breakers the answers go through.
        limits=replace(LimitSettings(), breaker_failures=100),
    )


def contents(request) -> list[str]:
    return [m["content"] for m in request.json["messages"]]


async def long_chat(stack: AsyncExitStack, tmp_path, *, summariser=oai.Reply(SUMMARY, chunks=2), asked: int = 0, **conversation):
    """Claude answering "Noted.", GPT summarising, and the bot after `asked` questions."""
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Noted.")))
    gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=summariser))
    bot = await start_telegram_bot(stack, long_chat_settings(tmp_path, claude, gpt, **conversation))
    for n in range(1, asked + 1):
        await bot.user_says(question(n))
    return claude, gpt, bot


async def test_a_long_conversation_is_summarised_and_the_next_request_holds_the_summary_instead_of_the_old_turns(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="handlers.compaction")
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, asked=3)
        assert gpt.calls == 0, "three turns fit under the threshold"
        await bot.user_says(question(4))
        assert bot.texts() == ["Noted."] * 4, "the summary is never shown to the user"

        # The cheapest model summarised the three older turns; the newest stays as it is.
        [summary_request] = gpt.chat_requests
        assert summary_request.json["model"] == "gpt-test"
        system, asked = summary_request.json["messages"]
        assert system["role"] == "system" and "condense a chat" in system["content"]
        assert all(question(n) in asked["content"] for n in (1, 2, 3)) and question(4) not in asked["content"]

        await bot.user_says("What am I planning?")
        sent = contents(claude.message_requests[-1])
        assert sent[0].startswith(f"{SUMMARY_OPENING}\n{SUMMARY}\n{SUMMARY_CLOSING}\n\n")
        assert sent[0].endswith(question(4)), "the summary opens the first turn kept"
        assert sent[1:] == ["Noted.", "What am I planning?"]
        assert not any(question(n) in text for text in sent for n in (1, 2, 3))
        assert [r["role"] for r in claude.message_requests[-1].json["messages"]] == ["user", "assistant", "user"]
        assert "summarised 6 messages" in caplog.text and "with openai:gpt-test" in caplog.text

        # The turns themselves stay stored, for the record.
        rows = await bot.app.database.fetchall("SELECT content FROM messages WHERE role = 'user' ORDER BY id")
        assert [row["content"] for row in rows][:4] == [question(n) for n in range(1, 5)]


async def test_the_summary_is_folded_into_the_next_summary_when_the_conversation_grows_again(tmp_path):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, asked=4)
        gpt.script(oai.Reply("- Garden, pond, and now a greenhouse.", chunks=2))
        for n in range(5, 8):
            await bot.user_says(question(n))
        assert gpt.calls == 2
        asked = contents(gpt.chat_requests[-1])[-1]
        assert SUMMARY in asked, "the summary so far is part of what is summarised"
        assert question(4) in asked and question(1) not in asked
        await bot.user_says("And now?")
        sent = contents(claude.message_requests[-1])
        assert "Garden, pond, and now a greenhouse." in sent[0] and SUMMARY not in sent[0]
        assert not any(question(n) in text for text in sent for n in range(1, 7))


async def test_the_summarys_tokens_are_recorded_in_the_users_usage(tmp_path):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, summariser=oai.Reply(SUMMARY, chunks=2, prompt_tokens=800), asked=4)
        lines = {line.model: line for line in await bot.app.services.features.usage.lines(1, USER)}
        summary = lines[GPT]
        assert (summary.requests, summary.input_tokens, summary.output_tokens) == (1, 800, len(SUMMARY.split()))
        assert summary.cost_usd == (800 * 0.25 + len(SUMMARY.split()) * 2.0) / 1e6
        assert lines[CLAUDE].requests == 4


async def test_a_summariser_that_times_out_leaves_the_answer_alone_and_the_next_request_is_trimmed(tmp_path, caplog):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, summariser=STALL, asked=4, compact_timeout=20.0)
        answer = bot.client.messages(USER)[-1]
        assert answer.text == "Noted."
        assert bot.clock.monotonic() - answer.sent_at >= 20, "the answer was out before the summary was tried"
        assert gpt.calls == 1 and claude.calls == 4, "the hard timeout ended it before any other model was asked"
        assert "could not summarise the conversation of chat 4242 (no summary within 20 s)" in caplog.text

        await bot.user_says(question(5))
        assert bot.texts()[-1] == "Noted."
        sent = contents(claude.message_requests[-1])
        assert not any(SUMMARY_OPENING in text for text in sent)
        assert question(1) not in sent and sent[-1] == question(5), "trimmed as before: the oldest turn is left out"


async def test_a_failing_summariser_leaves_the_conversation_to_trimming_and_the_answers_arrive(tmp_path, caplog):
    refused = oai.Fail(400, "invalid_request_error", "Invalid request.")
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, summariser=refused, asked=3)
        # The cheapest model refuses; the next cheapest (Claude) is asked, and refuses too.
        claude.script(anth.Reply("Noted."), anth.Fail(400, "invalid_request_error", "Invalid request."))
        await bot.user_says(question(4))
        assert bot.texts() == ["Noted."] * 4
        assert gpt.calls == 1 and claude.calls == 5
        assert "could not summarise the conversation of chat 4242" in caplog.text
        assert "next try after the next answer" in caplog.text

        await bot.user_says(question(5))
        assert bot.texts()[-1] == "Noted."
        assert not any(SUMMARY_OPENING in text for text in contents(claude.message_requests[-2]))
        assert gpt.calls == 2, "the next answer tries again"


async def test_a_summariser_failing_again_and_again_is_tried_less_and_less_often(tmp_path, caplog):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, summariser=STALL, asked=4, compact_timeout=20.0)
        await bot.user_says(question(5))
        assert gpt.calls == 2, "after one failure the next answer tries again"
        assert "next try in 300 s" in caplog.text

        await bot.user_says(question(6))
        await bot.user_says(question(7))
        assert gpt.calls == 2, "backing off: not tried after every answer"

        await bot.clock.advance(300)
        await bot.user_says(question(8))
        assert gpt.calls == 3
        assert "next try in 600 s" in caplog.text, "each failure doubles the wait"

        gpt.default = oai.Reply(SUMMARY, chunks=2)
        await bot.clock.advance(300)
        await bot.user_says(question(9))
        assert gpt.calls == 3, "still backing off"
        await bot.clock.advance(300)
        await bot.user_says(question(10))
        assert gpt.calls == 4
        await bot.user_says("So?")
        assert contents(claude.message_requests[-1])[0].startswith(SUMMARY_OPENING)
        assert bot.texts() == ["Noted."] * 11


def estimated_request_tokens(request) -> int:
    """What the summariser's request is estimated at: its system prompt and its one message."""
    return sum(estimate_tokens(m["content"]) for m in request.json["messages"])


async def test_a_summary_cut_by_the_timeout_before_its_first_token_is_charged_its_input(tmp_path):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, summariser=STALL, asked=4, compact_timeout=20.0)
        lines = {line.model: line for line in await bot.app.services.features.usage.lines(1, USER)}
        [asked] = gpt.chat_requests
        summary = lines[GPT]
        assert (summary.requests, summary.input_tokens, summary.output_tokens) == (1, estimated_request_tokens(asked), 0)
        assert summary.cost_usd == summary.input_tokens * 0.25 / 1e6 > 0
        await bot.user_says("/usage")
        assert f"{lines[CLAUDE].input_tokens + summary.input_tokens:,} tokens in" in bot.texts()[-1]


async def test_a_summary_cut_by_the_timeout_mid_stream_is_charged_its_input_and_the_text_received(tmp_path):
    async with AsyncExitStack() as stack:
        cut = oai.stall_after(2, "alpha beta gamma delta epsilon zeta")
        claude, gpt, bot = await long_chat(stack, tmp_path, summariser=cut, asked=4, compact_timeout=20.0)
        [asked] = gpt.chat_requests
        summary = {line.model: line for line in await bot.app.services.features.usage.lines(1, USER)}[GPT]
        # Two of six chunks arrived ("alpha beta "): 11 characters, about 4 tokens.
        assert (summary.requests, summary.input_tokens, summary.output_tokens) == (1, estimated_request_tokens(asked), 4)


async def test_a_summary_refused_outright_costs_nothing(tmp_path):
    refused = oai.Fail(400, "invalid_request_error", "Invalid request.")
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, summariser=refused, asked=3)
        claude.script(anth.Reply("Noted."), anth.Fail(400, "invalid_request_error", "Invalid request."))
        await bot.user_says(question(4))
        lines = {line.model: line for line in await bot.app.services.features.usage.lines(1, USER)}
        assert GPT not in lines and lines[CLAUDE].requests == 4, "nothing was billed for the refusals"


async def test_the_backoff_of_a_failing_summariser_survives_a_restart(tmp_path, caplog):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Noted.")))
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=STALL))
        settings = long_chat_settings(tmp_path, claude, gpt, compact_timeout=20.0)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            for n in range(1, 6):
                await bot.user_says(question(n))
            assert gpt.calls == 2 and "next try in 300 s" in caplog.text
        clock = bot.clock
        async with AsyncExitStack() as second_run:
            bot = await start_telegram_bot(second_run, settings, clock)
            await bot.user_says(question(6))
            assert gpt.calls == 2, "the restarted bot still waits"
            await clock.advance(300)
            gpt.default = oai.Reply(SUMMARY, chunks=2)
            await bot.user_says(question(7))
            assert gpt.calls == 3
            rows = await bot.app.database.fetchall("SELECT * FROM compaction_backoff")
            assert rows == [], "a summary that worked ends the backoff"
        async with AsyncExitStack() as third_run:
            bot = await start_telegram_bot(third_run, settings, clock)
            await bot.user_says("So?")
            assert contents(claude.message_requests[-1])[0].startswith(SUMMARY_OPENING)


async def test_the_size_check_counts_the_chats_own_prompt(tmp_path):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path)
        own = "Answer as a gardener would, with the season in mind. " * 20  # about 300 tokens
        await bot.user_says(f"/prompt {own}")
        for n in range(1, 4):
            await bot.user_says(question(n))
        assert claude.message_requests[-1].json["system"] == own.strip()
        assert gpt.calls == 1, "three turns and this prompt pass the threshold (with the operator's they do not)"


async def test_compaction_off_sends_the_whole_conversation_as_before(tmp_path):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, asked=4, compact_at=None)
        await bot.user_says(question(5))
        assert gpt.calls == 0
        assert contents(claude.message_requests[-2]) == [question(1), "Noted.", question(2), "Noted.", question(3), "Noted.", question(4)]
        assert question(1) not in contents(claude.message_requests[-1]), "trimmed as before"


async def test_a_conversation_idle_longer_than_the_setting_starts_afresh_and_says_so_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path, idle_reset=6 * 3600)
        await bot.user_says("My name is Ada.")
        await bot.clock.advance(5 * 3600)
        await bot.user_says("I like tomatoes.")
        assert contents(claude.message_requests[-1]) == ["My name is Ada.", "Noted.", "I like tomatoes."]

        await bot.clock.advance(7 * 3600)
        await bot.user_says("What is my name?")
        assert bot.texts()[-1] == "(New conversation: the last one was idle for 7 h.)\n\nNoted."
        assert contents(claude.message_requests[-1]) == ["What is my name?"]

        await bot.user_says("And what do I like?")
        assert bot.texts()[-1] == "Noted.", "said once"
        assert contents(claude.message_requests[-1]) == ["What is my name?", "Noted.", "And what do I like?"]
        rows = await bot.app.database.fetchall("SELECT ended_at FROM conversations ORDER BY id")
        assert [row["ended_at"] is not None for row in rows] == [True, False], "the old conversation is kept, ended"


async def test_idle_reset_off_keeps_the_conversation_however_long_it_was_idle(tmp_path):
    async with AsyncExitStack() as stack:
        claude, gpt, bot = await long_chat(stack, tmp_path)
        await bot.user_says("My name is Ada.")
        await bot.clock.advance(30 * 86400)
        await bot.user_says("What is my name?")
        assert bot.texts() == ["Noted.", "Noted."]
        assert contents(claude.message_requests[-1]) == ["My name is Ada.", "Noted.", "What is my name?"]
