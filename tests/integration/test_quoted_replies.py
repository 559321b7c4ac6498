"""Replies to earlier messages, from the user's side: the text replied to goes with the question
to the model (the bot's answer, the user's own message, Telegram's partial quote, someone else's
message fetched from Telegram), bounded, kept across a restart, and never holding the answer up."""
from contextlib import AsyncExitStack

from telethon import errors

from handlers import chat, quoted
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.telegram import new_message_event
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
GROUP = -1001234567
BOB = 5151
POLL = 0.05


async def started(stack: AsyncExitStack, tmp_path, answer: str = "Paris is the capital. Lyon is second."):
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(answer)))
    bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
    return claude, bot


async def restartable(stack: AsyncExitStack, tmp_path):
    """Claude answering "Lyon.", and the settings of a bot to start, stop and start again."""
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Lyon.")))
    return claude, settings_for(tmp_path, anthropic=claude, models=[CLAUDE])


def replying(text: str, reply_to: int, *, quote: str | None = None, chat_id: int = USER, sender_id: int = USER, **extra):
    return new_message_event(
        chat_id=chat_id, sender_id=sender_id, text=text, message_id=next(MESSAGE_IDS), reply_to=reply_to, quote=quote, **extra
    )


async def send(bot, event) -> None:
    await bot.clock.run_until_complete(bot.client.deliver(event))
    await bot.settle()


def last_question(claude: FakeAnthropic, index: int = -1) -> str:
    return claude.message_requests[index].json["messages"][-1]["content"]


async def test_a_reply_to_the_bots_answer_gives_the_model_that_answer_with_the_question(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await started(stack, tmp_path)
        await bot.user_says("Which cities matter in France?")
        answer_id = bot.client.messages(USER)[-1].id
        await send(bot, replying("Why the first?", answer_id))
        assert last_question(claude) == (
            "[Replying to your earlier message:]\n> Paris is the capital. Lyon is second.\n\nWhy the first?"
        )
        assert bot.texts()[-1] == "Paris is the capital. Lyon is second."
        # The conversation keeps the question as the model saw it, for later turns too.
        await bot.user_says("Thanks")
        assert claude.message_requests[-1].json["messages"][2]["content"].startswith("[Replying to your earlier message:]")


async def test_telegrams_partial_quote_wins_over_the_whole_message(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await started(stack, tmp_path)
        await bot.user_says("Which cities matter in France?")
        answer_id = bot.client.messages(USER)[-1].id
        await send(bot, replying("How big is it?", answer_id, quote="Lyon is second."))
        assert last_question(claude) == "[Replying to your earlier message:]\n> Lyon is second.\n\nHow big is it?"


async def test_a_reply_to_the_users_own_earlier_message_quotes_it_as_theirs(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await started(stack, tmp_path)
        first = next(MESSAGE_IDS)
        await bot.user_says("My cat is called Miso.\nShe is four.", message_id=first)
        await bot.user_says("Something else entirely.")
        await send(bot, replying("How old is she in human years?", first))
        assert last_question(claude) == (
            "[Replying to my earlier message:]\n> My cat is called Miso.\n> She is four.\n\nHow old is she in human years?"
        )


async def test_continue_sent_as_a_reply_asks_for_the_rest_without_a_quote(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await started(stack, tmp_path)
        await bot.user_says("Which cities matter in France?")
        await send(bot, replying("continue", bot.client.messages(USER)[-1].id))
        assert last_question(claude) == chat.CONTINUE_REQUEST


async def test_a_message_the_bot_never_stored_is_fetched_from_telegram(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await started(stack, tmp_path)
        bobs = new_message_event(chat_id=GROUP, sender_id=BOB, text="The Eiffel Tower is 330 m tall.", sender_name="Bob", message_id=next(MESSAGE_IDS))
        await send(bot, bobs)  # not addressed to the bot: not answered, not stored
        assert bot.texts(GROUP) == [] and await bot.statuses(GROUP) == []
        await send(bot, replying("@switchboard_bot is that right?", bobs.message.id, chat_id=GROUP, mentioned=True))
        assert last_question(claude) == (
            "[Replying to a message from Bob:]\n> The Eiffel Tower is 330 m tall.\n\nis that right?"
        )
        assert any(call.kind == "get_messages" and call.chat_id == GROUP for call in bot.client.calls)


async def test_a_bot_message_the_history_does_not_hold_is_fetched_as_the_bots_own(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await started(stack, tmp_path)
        await bot.user_says("Hello")
        # A notice the bot sent outside any answer (as a voice message's transcript is).
        notice = await bot.clock.run_until_complete(bot.client.send_message(USER, "🎤 Bonjour", formatting_entities=[]))
        await send(bot, replying("Translate it", notice.id))
        assert last_question(claude) == "[Replying to your earlier message:]\n> 🎤 Bonjour\n\nTranslate it"


async def test_a_long_quoted_message_is_cut_to_a_bound(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await started(stack, tmp_path)
        long_id = next(MESSAGE_IDS)
        await bot.user_says("word " * 2000, message_id=long_id)
        await send(bot, replying("Summarise that", long_id))
        question = last_question(claude)
        assert question.endswith(" […]\n\nSummarise that")
        assert len(question) < quoted.QUOTE_MAX_CHARS + 100


async def test_a_quote_that_cannot_be_fetched_is_left_out_and_the_question_answered(tmp_path, caplog):
    async with AsyncExitStack() as stack:
        claude, bot = await started(stack, tmp_path, answer="Sure.")
        bot.client.fail_next("get_messages", errors.RpcCallFailError(request=None), times=20)
        await send(bot, replying("What did you mean?", 999_999))
        assert last_question(claude) == "What did you mean?"
        assert bot.texts() == ["Sure."] and await bot.statuses() == ["answered"]
        assert "could not fetch the message" in caplog.text


async def test_a_restart_mid_answer_keeps_the_quote(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await restartable(stack, tmp_path)
        first_run = AsyncExitStack()
        bot = await start_telegram_bot(first_run, settings)
        first = next(MESSAGE_IDS)
        await bot.user_says("Name a French city.", message_id=first)
        claude.script(anth.stall_after(1, "Ly"))
        await bot.client.deliver(replying("Another one?", first))
        await bot.clock.run_until(lambda: claude.calls == 2 and bool(bot.client.drafts(USER)), poll=POLL)
        client, clock = bot.client, bot.clock
        await first_run.aclose()  # killed mid-answer

        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        expected = "[Replying to my earlier message:]\n> Name a French city.\n\nAnother one?"
        assert last_question(claude, 1) == last_question(claude, 2) == expected
        assert bot.texts() == ["Lyon.", "Lyon."] and await bot.statuses() == ["answered", "answered"]


async def test_a_reply_taken_during_a_shutdown_is_quoted_after_the_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await restartable(stack, tmp_path)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            first = next(MESSAGE_IDS)
            await bot.user_says("Name a French city.", message_id=first)
            bot.app.router.stop_accepting()  # stored, answered after the restart
            await send(bot, replying("Another one?", first, quote="French city"))
            assert await bot.statuses() == ["answered", "pending"]
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert last_question(claude) == "[Replying to my earlier message:]\n> French city\n\nAnother one?"
        assert await bot.statuses() == ["answered", "answered"]


async def test_a_plain_message_resumed_after_a_restart_is_answered_as_it_is(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await restartable(stack, tmp_path)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            bot.app.router.stop_accepting()
            await bot.user_says("Name a French city.")
        bot.client.fail_next("get_messages", errors.RpcCallFailError(request=None), times=20)
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert last_question(claude) == "Name a French city."
        assert bot.texts() == ["Lyon."] and await bot.statuses() == ["answered"]
