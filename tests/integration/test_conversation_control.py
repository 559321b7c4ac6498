"""/retry, /mode, /prompt and the fallback footer, from Telegram through the real router to the fake LLMs."""
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bot.config import ConfigError, LimitSettings, load_settings
from handlers.conversation import NOT_A_CHAT_ANSWER, NOTHING_TO_RETRY
from handlers.modes import BUILTIN_MODES, PROMPT_MAX_CHARS
from tests.fakes import anthropic_server as anth
from tests.fakes import openai_server as oai
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.telegram_bot import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    USER,
    TelegramBot,
    settings_for,
    start_telegram_bot,
)
from tests.integration.test_cli import clean_env, run_cli

CLAUDE = "anthropic:claude-test"
GPT = "openai:gpt-test"
OTHER = 5151  # another user, in their own private chat
CODER = next(m for m in BUILTIN_MODES if m.name == "coder")


async def _claude(stack: AsyncExitStack, *replies: str) -> FakeAnthropic:
    fake = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("(default)")))
    fake.script(*(anth.Reply(text) for text in replies))
    return fake


async def _bot_on_claude(stack: AsyncExitStack, tmp_path: Path, *replies: str, **overrides) -> tuple[FakeAnthropic, TelegramBot]:
    """A bot on Claude alone (answering `replies`, then "(default)"), for USER and OTHER."""
    claude = await _claude(stack, *replies)
    settings = settings_for(
        tmp_path, anthropic=claude, models=[CLAUDE], allowed_user_ids=frozenset({USER, OTHER}), **overrides
    )
    return claude, await start_telegram_bot(stack, settings)


def _conversation(request) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request.json["messages"]]


# /retry


async def test_retry_answers_the_last_question_again_and_the_new_answer_replaces_the_old_in_history(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path, "Paris, I think.", "It is Paris.", "About 2.1 million.")
        await bot.user_says("What is the capital of France?")
        await bot.user_says("/retry")
        await bot.user_says("How many people live there?")
        assert bot.texts() == ["Paris, I think.", "It is Paris.", "About 2.1 million."]
        retried, following = claude.message_requests[1:]
        # The retry is asked the question alone, without the answer it replaces.
        assert _conversation(retried) == [("user", "What is the capital of France?")]
        assert _conversation(following) == [
            ("user", "What is the capital of France?"),
            ("assistant", "It is Paris."),
            ("user", "How many people live there?"),
        ]
        assert await bot.statuses() == ["answered", "answered", "answered"]


async def test_retry_twice_keeps_only_the_newest_answer_and_continue_continues_it(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path, "One.", "Two.", "Three.", "And four.")
        await bot.user_says("Count for me")
        await bot.user_says("/retry")
        await bot.user_says("/retry")
        await bot.user_says("/continue")
        assert bot.texts() == ["One.", "Two.", "Three.", "And four."]
        assert _conversation(claude.message_requests[-1])[:2] == [("user", "Count for me"), ("assistant", "Three.")]


async def test_retry_with_a_model_name_asks_that_model(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await _claude(stack, "Claude's answer.")
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("GPT's answer.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT]))
        await bot.user_says("Explain monads")
        await bot.user_says("/retry gpt-test")
        # The model asked for answered: no footer, and Claude was not asked again.
        assert bot.texts() == ["Claude's answer.", "GPT's answer."]
        assert claude.calls == 1 and gpt.calls == 1
        assert [m["content"] for m in gpt.chat_requests[0].json["messages"] if m["role"] != "system"] == ["Explain monads"]
        await bot.user_says("/retry 1")  # numbers as /model lists them
        assert bot.texts()[-1] == "(default)" and claude.calls == 2


async def test_retry_with_an_unknown_model_names_the_models_and_asks_none(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path, "An answer.")
        await bot.user_says("hello")
        await bot.user_says("/retry gpt-9")
        assert bot.texts()[-1] == "I don't have a model called gpt-9. Available: anthropic:claude-test."
        assert claude.calls == 1
        assert await bot.statuses() == ["answered", "answered"]


async def test_retry_with_nothing_to_retry_says_so(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path, "An answer.")
        await bot.user_says("/retry")
        await bot.user_says("hello")
        await bot.user_says("/reset")
        await bot.user_says("/retry")  # a new conversation has nothing to retry either
        texts = bot.texts()
        assert texts[0] == NOTHING_TO_RETRY and texts[-1] == NOTHING_TO_RETRY
        assert claude.calls == 1


async def test_retry_after_a_web_search_points_to_the_search(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path)
        history = bot.app.services.history
        await history.record_exchange(USER, USER, "Web search: weather", "Sunny [1]", "perplexity:sonar")
        await bot.user_says("/retry")
        assert bot.texts() == [NOT_A_CHAT_ANSWER]
        assert claude.calls == 0


async def test_retry_over_the_message_rate_gets_the_usual_refusal(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path, "An answer.", limits=LimitSettings(user_messages_per_minute=1))
        await bot.user_says("hello")
        await bot.user_says("/retry")
        assert bot.texts()[-1].startswith("Please slow down: I take at most 1 messages a minute from you.")
        assert claude.calls == 1


async def test_a_retry_stored_before_a_crash_is_answered_after_the_restart_replacing_the_answer(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await _claude(stack, "Old answer.", "New answer.", "Follow-up.")
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        async with AsyncExitStack() as crashed_run:
            bot = await start_telegram_bot(crashed_run, settings)
            await bot.user_says("Tell me a fact")
            # The /retry was stored, then the bot died before answering it.
            await bot.app.services.history.record_incoming(USER, USER, 999_001, "/retry", kind="command")
        async with AsyncExitStack() as next_run:
            bot = await start_telegram_bot(next_run, settings, client=bot.client)
            await bot.settle()
            await bot.user_says("And another")
            assert bot.texts() == ["Old answer.", "New answer.", "Follow-up."]
        assert _conversation(claude.message_requests[-1]) == [
            ("user", "Tell me a fact"), ("assistant", "New answer."), ("user", "And another")
        ]


# /mode and /prompt


async def test_mode_lists_the_modes_and_marks_the_default(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path)
        await bot.user_says("/mode")
        [text] = bot.texts()
        assert text.startswith("This chat uses the default prompt.")
        for name in ("assistant", "translator", "coder", "concise"):
            assert f"• {name} — " in text


async def test_mode_switches_this_chats_system_prompt_and_not_another_chats(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path)
        await bot.user_says("/mode Coder")
        assert bot.texts()[-1].startswith("This chat's mode is now coder:")
        await bot.user_says("sort a list")
        await bot.user_says("hello", chat_id=OTHER, user_id=OTHER)
        ours, theirs = claude.message_requests
        assert ours.json["system"] == CODER.prompt
        assert theirs.json["system"] == "Be brief."
        await bot.user_says("/mode")
        assert bot.texts()[-1].startswith("This chat's mode: coder.")
        await bot.user_says("/mode assistant")
        await bot.user_says("and now?")
        assert claude.message_requests[-1].json["system"] == "Be brief."


async def test_unknown_mode_names_the_modes_and_changes_nothing(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path)
        await bot.user_says("/mode pirate")
        assert bot.texts()[-1] == "I don't have a mode called pirate. Modes: assistant, translator, coder, concise."
        await bot.user_says("hi")
        assert claude.message_requests[-1].json["system"] == "Be brief."


async def test_prompt_sets_shows_and_resets_this_chats_prompt(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path)
        await bot.user_says("/prompt")
        assert bot.texts()[-1] == "This chat uses the default prompt (/prompt <text> sets its own):\n\nBe brief."
        await bot.user_says("/prompt You are a pirate. Say *arr* a lot_.")
        assert bot.texts()[-1].startswith("Done: this chat now answers with your prompt (35 characters).")
        await bot.user_says("/prompt")
        assert bot.texts()[-1].endswith("\n\nYou are a pirate. Say *arr* a lot_.")
        await bot.user_says("hi")
        await bot.user_says("hi", chat_id=OTHER, user_id=OTHER)
        assert [r.json["system"] for r in claude.message_requests] == ["You are a pirate. Say *arr* a lot_.", "Be brief."]
        await bot.user_says("/mode")
        assert bot.texts()[-1].startswith("This chat uses its own prompt (/prompt shows it).")
        await bot.user_says("/prompt reset")
        assert bot.texts()[-1] == "This chat is back on the default prompt."
        await bot.user_says("hi again")
        assert claude.message_requests[-1].json["system"] == "Be brief."


async def test_a_prompt_over_the_limit_is_refused_with_its_length(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path)
        await bot.user_says("/prompt " + "x" * (PROMPT_MAX_CHARS + 1))
        assert bot.texts()[-1].startswith(f"That prompt is 4,001 characters long; the limit is {PROMPT_MAX_CHARS:,}.")
        await bot.user_says("hi")
        assert claude.message_requests[-1].json["system"] == "Be brief."


async def test_a_chats_mode_and_prompt_survive_a_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await _claude(stack)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], allowed_user_ids=frozenset({USER, OTHER}))
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            await bot.user_says("/mode coder")
            await bot.user_says("/prompt Answer in French.", chat_id=OTHER, user_id=OTHER)
        async with AsyncExitStack() as second_run:
            bot = await start_telegram_bot(second_run, settings)
            await bot.user_says("hi")
            await bot.user_says("hi", chat_id=OTHER, user_id=OTHER)
        assert [r.json["system"] for r in claude.message_requests] == [CODER.prompt, "Answer in French."]


# The operator's modes file


def _modes_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


async def test_a_modes_file_adds_modes_and_replaces_built_in_ones(tmp_path):
    path = _modes_file(tmp_path, "modes.toml", (
        '[pirate]\ndescription = "talks like a pirate"\nprompt = """\nYou are a pirate.\nSay arr.\n"""\n\n'
        '[concise]\nprompt = "One word answers."\n'
    ))
    loaded = load_settings({"LLM_MODES_FILE": str(path), "STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    async with AsyncExitStack() as stack:
        claude = await _claude(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE], modes=loaded.modes))
        await bot.user_says("/mode")
        assert "• pirate — talks like a pirate" in bot.texts()[-1]
        await bot.user_says("/mode pirate")
        await bot.user_says("hello")
        await bot.user_says("/mode concise")
        await bot.user_says("hello")
        assert [r.json["system"] for r in claude.message_requests] == ["You are a pirate.\nSay arr.", "One word answers."]


def test_a_json_modes_file_works_too(tmp_path):
    path = _modes_file(tmp_path, "modes.json", '{"poet": {"prompt": "Answer in verse.", "description": "rhymes"}}')
    loaded = load_settings({"LLM_MODES_FILE": str(path), "STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    assert [m.name for m in loaded.modes] == ["assistant", "translator", "coder", "concise", "poet"]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("modes.toml", '[pirate]\nprompt = "arr"\n\n[poet\nprompt = "verse"\n', "modes.toml, line 4: is not valid TOML"),
        ("modes.json", '{\n  "pirate": {"prompt": "arr"},\n}\n', "modes.json, line 3: is not valid JSON"),
        ("modes.toml", '[pirate]\nprompt = "arr"\n\n[poet]\ndescription = "verse"\n', "modes.toml, line 4: mode 'poet' needs a prompt"),
        ("modes.toml", '[pirate]\nprompt = "arr"\ncolour = "red"\n', "line 1: mode 'pirate' has unknown field(s) colour"),
        ("modes.toml", '["two words"]\nprompt = "arr"\n', "line 1: mode name 'two words' must be 1-32 letters"),
        ("modes.yaml", "pirate: arr\n", "modes.yaml: must be a .toml or .json file"),
        ("modes.toml", "", "modes.toml: defines no modes"),
    ],
)
def test_a_malformed_modes_file_stops_start_up_naming_the_file_and_line(tmp_path, name, text, expected):
    path = _modes_file(tmp_path, name, text)
    with pytest.raises(ConfigError) as raised:
        load_settings({"LLM_MODES_FILE": str(path), "STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    [problem] = raised.value.problems
    assert problem.startswith(f"LLM_MODES_FILE {tmp_path}")
    assert expected in problem
    assert "unset LLM_MODES_FILE" in problem


async def test_the_console_will_not_start_with_a_malformed_modes_file_and_says_where(tmp_path):
    path = _modes_file(tmp_path, "modes.toml", '[pirate]\nprompt = "arr"\n\n[poet\n')
    code, out, err = await run_cli(["console"], clean_env(tmp_path, LLM_MODES_FILE=str(path)), tmp_path, stdin="hi\n")
    assert code == 2 and out == ""
    assert f"LLM_MODES_FILE {path}, line 4: is not valid TOML: Expected ']' at the end of a table declaration." in err
    assert "Traceback" not in err


def test_a_missing_modes_file_is_a_start_up_error(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_settings({"LLM_MODES_FILE": "nowhere.toml", "STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    assert f"LLM_MODES_FILE {tmp_path / 'nowhere.toml'}: cannot be read (No such file or directory)" in str(raised.value)


# The fallback footer


FOOTER = "— answered by openai:gpt-test (anthropic:claude-test was unavailable)"


async def test_an_answer_from_a_fallback_model_names_it_in_a_footer_kept_out_of_history(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.overloaded()))
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("GPT stands in.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT]))
        await bot.user_says("hello")
        assert bot.texts() == [f"GPT stands in.\n\n{FOOTER}"]
        await bot.user_says("and again")
        history = [m for m in gpt.chat_requests[-1].json["messages"] if m["role"] != "system"]
        assert history == [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "GPT stands in."},
            {"role": "user", "content": "and again"},
        ]


async def test_no_footer_when_the_first_model_or_the_users_pick_answers(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await _claude(stack, "Claude here.")
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("GPT here.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT]))
        await bot.user_says("hello")
        await bot.user_says("/model gpt-test")
        await bot.user_says("hello again")
        texts = bot.texts()
        assert texts[0] == "Claude here." and texts[-1] == "GPT here."


async def test_footer_names_the_fallback_when_the_users_pick_fails(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await _claude(stack, "Claude stands in.")
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.server_error(503)))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT]))
        await bot.user_says("/model gpt-test")
        await bot.user_says("hello")
        assert bot.texts()[-1] == "Claude stands in.\n\n— answered by anthropic:claude-test (openai:gpt-test was unavailable)"


async def test_a_handover_mid_answer_keeps_its_marker_and_gets_no_footer(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.cut_after(3)))
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("four five six")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT]))
        await bot.user_says("count")
        [text] = bot.texts()
        assert "[continued by openai:gpt-test]" in text
        assert "answered by" not in text


async def test_a_retry_answered_by_a_fallback_gets_the_footer_too(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await _claude(stack, "First.")
        claude.script(anth.overloaded(), anth.overloaded())
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("Second.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT]))
        await bot.user_says("hello")
        await bot.user_says("/retry")
        assert bot.texts() == ["First.", f"Second.\n\n{FOOTER}"]


async def test_help_lists_retry_mode_and_prompt(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _bot_on_claude(stack, tmp_path)
        await bot.user_says("/help")
        [text] = bot.texts()
        assert "/retry [model] — the last answer again" in text
        assert "/mode [name] — " in text and "/prompt [text|reset] — " in text
        menu = {c.name for c in bot.app.router.commands if not c.admin_only}
        assert {"retry", "mode", "prompt"} <= menu

