"""From a Telegram message to the reply the user sees and the history kept, through the real SDKs."""
from contextlib import AsyncExitStack

from telethon import types

from tests.fakes import anthropic_server as anth
from tests.fakes import openai_server as oai
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.telegram_bot import ANTHROPIC_KEY, OPENAI_KEY, USER, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
GPT = "openai:gpt-test"


async def test_private_message_streams_a_draft_then_the_final_answer(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Hello there, human.", chunks=4)))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await bot.user_says("hi")
        assert bot.texts() == ["Hello there, human."]
        assert bot.client.drafts(USER), "the reply should have streamed as a draft preview"
        assert bot.client.typing_actions(USER)
        body = claude.message_requests[-1].json
        assert body["system"] == "Be brief." and body["messages"] == [{"role": "user", "content": "hi"}]


async def test_history_survives_a_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Nice to meet you, Ada.")))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            await bot.user_says("My name is Ada.")
        async with AsyncExitStack() as second_run:
            bot = await start_telegram_bot(second_run, settings)
            await bot.user_says("What is my name?")
        messages = claude.message_requests[-1].json["messages"]
        assert messages == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
            {"role": "user", "content": "What is my name?"},
        ]


async def test_message_stored_before_a_crash_is_answered_after_restart_and_only_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Answer after restart.")))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        async with AsyncExitStack() as crashed_run:
            bot = await start_telegram_bot(crashed_run, settings)
            # The bot stored the message, then died before replying.
            bot.client.known_chats.add(USER)
            await bot.app.services.history.record_incoming(USER, USER, 77, "Are you there?")
        async with AsyncExitStack() as next_run:
            bot = await start_telegram_bot(next_run, settings)
            await bot.settle()
            assert bot.texts() == ["Answer after restart."]
            # Telegram redelivers the same update: it is not answered twice.
            await bot.user_says("Are you there?", message_id=77)
            assert bot.texts() == ["Answer after restart."]
        assert claude.calls == 1


async def test_long_answer_is_split_into_messages_within_4096_without_cutting_code(tmp_path):
    prose = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 25 for i in range(8))
    code = "```python\n" + "\n".join(f"print({i})" for i in range(300)) + "\n```"
    answer = prose + "\n\n" + code + "\n\nThat is all."
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(answer, chunks=40)))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await bot.user_says("write a lot")
        messages = bot.client.messages(USER)
        assert len(messages) >= 2
        assert all(len(m.text.encode("utf-16-le")) // 2 <= 4096 for m in messages)
        code_messages = [m for m in messages if any(isinstance(e, types.MessageEntityPre) for e in m.entities)]
        assert len(code_messages) == 1, "a code block that fits one message is never split"
        [pre] = [e for e in code_messages[0].entities if isinstance(e, types.MessageEntityPre)]
        assert pre.language == "python"
        assert code_messages[0].text[pre.offset:pre.offset + pre.length].count("print(") == 300
        assert messages[-1].text.endswith("That is all.")


async def test_markdown_becomes_telegram_entities(tmp_path):
    answer = "Use **bold**, _italic_ and `code`, see [docs](https://example.com).\n\n- one\n- two"
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(answer)))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await bot.user_says("format please")
        [message] = bot.client.messages(USER)
        assert message.text == "Use bold, italic and code, see docs.\n\n• one\n• two"
        kinds = {type(e) for e in message.entities}
        assert {types.MessageEntityBold, types.MessageEntityItalic, types.MessageEntityCode, types.MessageEntityTextUrl} <= kinds
        [link] = [e for e in message.entities if isinstance(e, types.MessageEntityTextUrl)]
        assert link.url == "https://example.com"


async def test_model_failing_before_first_token_falls_back_to_the_next(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.overloaded()))
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("GPT stands in.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT]))
        await bot.user_says("hello")
        assert bot.texts() == ["GPT stands in.\n\n— answered by openai:gpt-test (anthropic:claude-test was unavailable)"]
        # One retry of the overloaded model, then the next model answers.
        assert claude.calls == 2 and gpt.calls == 1


async def test_model_with_no_first_token_in_time_falls_back(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(0)))
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("Quick answer.")))
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT], llm_first_token_timeout=60.0)
        bot = await start_telegram_bot(stack, settings)
        await bot.user_says("hello")
        assert bot.texts() == ["Quick answer.\n\n— answered by openai:gpt-test (anthropic:claude-test was unavailable)"]


async def test_every_model_failing_gives_one_clear_message(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.overloaded()))
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.server_error(503)))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT]))
        await bot.user_says("hello")
        [text] = bot.texts()
        assert text.startswith("Sorry, I could not get an answer")
        assert ANTHROPIC_KEY not in text and OPENAI_KEY not in text


async def test_user_not_on_the_allowlist_is_refused_with_their_id_and_costs_nothing(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await bot.user_says("let me in", chat_id=999, user_id=999)
        [text] = bot.texts(999)
        assert "999" in text
        assert claude.calls == 0


async def test_group_answers_only_when_mentioned(tmp_path):
    group = -100200300
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Group answer.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await bot.user_says("just chatting", chat_id=group)
        assert bot.texts(group) == [] and claude.calls == 0
        await bot.user_says("@switchboard_bot what is 2+2?", chat_id=group, mentioned=True)
        assert bot.texts(group) == ["Group answer."]
        assert claude.message_requests[-1].json["messages"][-1]["content"] == "what is 2+2?"
        assert bot.client.drafts(group) == []


async def test_user_over_daily_budget_is_told_and_costs_no_upstream_call(tmp_path):
    from bot.config import LimitSettings

    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Expensive answer.")))
        settings = settings_for(
            tmp_path, anthropic=claude, models=[CLAUDE],
            limits=LimitSettings(user_daily_budget_usd=0.01), llm_prices=(("claude-test", 1000.0, 1000.0),),
        )
        bot = await start_telegram_bot(stack, settings)
        await bot.user_says("first question")
        await bot.user_says("second question")
        assert bot.texts()[0] == "Expensive answer."
        assert "budget" in bot.texts()[1]
        assert claude.calls == 1


async def test_user_sending_too_fast_is_asked_to_slow_down(tmp_path):
    from bot.config import LimitSettings

    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Answer.")))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], limits=LimitSettings(user_messages_per_minute=2))
        bot = await start_telegram_bot(stack, settings)
        for text in ("one", "two", "three"):
            await bot.user_says(text)
        assert bot.texts()[:2] == ["Answer.", "Answer."]
        assert "slow down" in bot.texts()[2].lower() or "too many" in bot.texts()[2].lower()
        assert claude.calls == 2


async def test_an_answer_cut_at_the_token_limit_says_so_and_continue_joins_the_rest(tmp_path):
    first = "Step one: mix the flour and"
    rest = "mix the flour and the water. Step two: bake."
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY))
        claude.script(anth.Reply(first, stop_reason="max_tokens"), anth.Reply(rest))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await bot.user_says("How do I bake bread?")
        assert bot.texts() == [first + "\n\n(This answer reached its length limit. Send /continue for the rest.)"]
        await bot.user_says("/continue")
        assert bot.texts()[-1] == "the water. Step two: bake."
        asked = claude.message_requests[-1].json["messages"]
        assert asked[-2] == {"role": "assistant", "content": first}
        assert asked[-1]["content"].startswith("Continue your previous answer")


async def test_a_reply_of_just_continue_asks_for_the_rest_like_the_command(tmp_path):
    async with AsyncExitStack() as stack:
        openai_fake = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY))
        openai_fake.script(oai.Reply("The list: apples,", finish_reason="length"), oai.Reply("pears and plums."))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, openai=openai_fake, models=["openai:gpt-test"]))
        await bot.user_says("List fruit")
        assert bot.texts()[0].endswith("Send /continue for the rest.)")
        await bot.user_says("Continue.")
        assert bot.texts()[-1] == "pears and plums."


async def test_refused_keys_get_the_user_an_apology_and_the_admins_the_setting_to_fix_once_an_hour(tmp_path):
    admin = 777
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key="sk-ant-the-key-anthropic-expects-00000000"))
        gpt = await stack.enter_async_context(FakeOpenAI(api_key="sk-the-key-openai-expects-0000000000000"))
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT], admin_ids=frozenset({admin}))
        bot = await start_telegram_bot(stack, settings)
        bot.client.known_chats.add(admin)  # the admin has started a chat with the bot
        alerts = bot.app.operator_alerts

        async def user_fails(text: str) -> str:
            await bot.user_says(text)
            await bot.clock.run_until_complete(alerts.settle())
            return bot.texts()[-1]

        apology = await user_fails("hello")
        assert apology == (
            "Sorry, I can't answer right now: the bot's access to its AI models needs fixing. "
            "The operator has been told; please try again later."
        )
        told = bot.texts(admin)
        assert len(told) == 2
        assert any("anthropic refused ANTHROPIC_API_KEY" in text for text in told)
        assert any("openai refused OPENAI_API_KEY" in text for text in told)
        await bot.user_says("/status", chat_id=admin, user_id=admin)
        status = bot.texts(admin)[-1]
        assert "ANTHROPIC_API_KEY" in status and "OPENAI_API_KEY" in status

        # Still refused (the providers' breakers fail fast now): the same apology, no new message.
        assert await user_fails("hello?") == apology
        assert len(bot.texts(admin)) == 3  # the two alerts and the /status report
        # An hour later, the keys are still wrong: the admins hear of it again.
        await bot.clock.advance(3600)
        assert await user_fails("anyone there?") == apology
        assert len(bot.texts(admin)) == 5
        everything = "\n".join(bot.texts() + bot.texts(admin))
        assert ANTHROPIC_KEY not in everything and OPENAI_KEY not in everything
    assert all(word not in apology for word in ("credential", "authentication", "401", "minute"))
