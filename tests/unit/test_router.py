from contextlib import AsyncExitStack

from handlers.transport import IncomingMessage
from integrations.errors import Unavailable
from tests.fakes.providers import Script, ScriptedProvider
from tests.harness import USER, start_bot


async def test_stranger_gets_one_polite_refusal_with_their_id_and_no_upstream_call(tmp_path):
    provider = ScriptedProvider("a")
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", provider)])
        await bot.say("hello", chat_id=555, user_id=555)
        await bot.say("hello again", chat_id=555, user_id=555)
        replies = bot.replies(555)
        assert len(replies) == 1
        assert "555" in replies[0]
        assert provider.requests == []


async def test_unknown_command_gets_help(tmp_path):
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", ScriptedProvider("a"))])
        await bot.say("/frobnicate now")
        [text] = bot.replies()
        assert "/frobnicate" in text and "/reset" in text and "/model" in text


async def test_group_messages_not_addressed_to_the_bot_are_ignored(tmp_path):
    provider = ScriptedProvider("a")
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", provider)])
        await bot.say("chatter", chat_id=-100, private=False, addressed=False)
        assert bot.replies(-100) == [] and provider.requests == []
        await bot.say("question for the bot", chat_id=-100, private=False, addressed=True)
        assert bot.replies(-100) == ["ok"]


async def test_reset_starts_new_conversation_and_keeps_the_old(tmp_path):
    provider = ScriptedProvider("a")
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", provider)])
        await bot.say("first question")
        await bot.say("/reset")
        await bot.say("second question")
        assert [m.content for m in provider.requests[-1].messages] == ["second question"]
        assert await bot.services.history.conversation_count(USER) == 2


async def test_model_command_lists_and_picks(tmp_path):
    a = ScriptedProvider("a", default=Script(("from a",)))
    b = ScriptedProvider("b", default=Script(("from b",)))
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:alpha", a), ("openai:beta", b)])
        await bot.say("/model")
        assert "anthropic:alpha" in bot.replies()[-1] and "openai:beta" in bot.replies()[-1]
        await bot.say("/model 2")
        assert "openai:beta" in bot.replies()[-1]
        await bot.say("hi")
        assert bot.replies()[-1] == "from b"
        await bot.say("/model nonsense")
        assert "nonsense" in bot.replies()[-1]
        await bot.say("/model default")
        await bot.say("hi again")
        assert bot.replies()[-1] == "from a"


async def test_all_models_failing_gives_one_clear_message(tmp_path):
    a = ScriptedProvider("a", default=Script((), error=Unavailable("overloaded")))
    b = ScriptedProvider("b", default=Script((), error=Unavailable("down")))
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:alpha", a), ("openai:beta", b)])
        await bot.say("hello?")
        [text] = bot.replies()
        assert "every model failed" in text and "alpha" in text and "beta" in text


async def test_message_while_replying_is_queued_and_user_told(tmp_path):
    slow = ScriptedProvider("a", [Script(("first answer",), stall_after=0)], default=Script(("second answer",)))
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", slow)])
        router = bot.router
        await router.handle(IncomingMessage(USER, USER, 1, "one", True, True))
        await bot.clock.settle()
        await router.handle(IncomingMessage(USER, USER, 2, "two", True, True))
        await bot.clock.settle()
        assert any("right after" in t for t in bot.replies())
        await bot.clock.run_until_complete(bot.services.lanes.wait_all_idle())
        assert bot.replies()[-1] == "second answer"


async def test_cancel_stops_the_reply_in_progress_and_keeps_what_was_shown(tmp_path):
    stalled = ScriptedProvider("a", [Script(("partial words", "never"), stall_after=1)])
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", stalled)])
        await bot.router.handle(IncomingMessage(USER, USER, 1, "tell me a story", True, True))
        await bot.clock.run_until(lambda: "draft" in bot.transport.kinds(USER))
        await bot.router.handle(IncomingMessage(USER, USER, 2, "/cancel", True, True))
        await bot.clock.run_until_complete(bot.services.lanes.wait_all_idle())
        final = bot.replies()[-1]
        assert final.startswith("partial words") and "stopped" in final
        assert await bot.services.history.pending() == []


async def test_oversized_message_gets_a_clear_answer_and_no_upstream_call(tmp_path):
    provider = ScriptedProvider("a")
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", provider)])
        await bot.say("x" * 20_000)
        assert "20,000" in bot.replies()[-1]
        assert provider.requests == []


async def test_help_shows_admin_commands_only_to_admins(tmp_path):
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", ScriptedProvider("a"))])
        await bot.say("/help")
        assert "/cancel" in bot.replies()[-1]
