from contextlib import AsyncExitStack

import pytest

from handlers.commands import ParsedCommand, parse_command
from tests.fakes.providers import ScriptedProvider
from tests.harness import start_bot


def test_command_name_and_arguments_are_split_at_the_first_space():
    assert parse_command("/ask what is a monad?") == ParsedCommand("ask", "what is a monad?")


def test_command_name_is_lowercased_and_loses_its_bot_address():
    assert parse_command("/Help@SwitchboardBot") == ParsedCommand("help", "")


def test_arguments_keep_their_inner_line_breaks_and_spaces():
    assert parse_command("  /note\nfirst line\n  second  line \n") == ParsedCommand("note", "first line\n  second  line")


@pytest.mark.parametrize("text", ["/help\x00", "/help\x00\x00", "/help\x07", "/help\u200b", "/help\ufffd"])
def test_a_control_or_invisible_character_ends_the_command_name(text):
    parsed = parse_command(text)
    assert parsed is not None and parsed.name == "help"


def test_what_follows_a_control_character_is_passed_on_as_the_arguments():
    assert parse_command("/ask\x00why?") == ParsedCommand("ask", "\x00why?")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("/help.", ParsedCommand("help", ".")),
        ("/help!", ParsedCommand("help", "!")),
        ("/model-list", ParsedCommand("model", "-list")),
        ("/ask:x", ParsedCommand("ask", ":x")),
        ("/ask@bot, hi", ParsedCommand("ask", ", hi")),
    ],
)
def test_punctuation_other_than_at_and_underscore_ends_the_command_name(text, parsed):
    assert parse_command(text) == parsed


def test_underscores_and_digits_are_part_of_the_name():
    assert parse_command("/set_model2 x") == ParsedCommand("set_model2", "x")


@pytest.mark.parametrize("text", ["/", "/ ", " / ", "/ help", "/\x00", "/@bot", "/.", "", "help", "hi /help"])
def test_text_without_a_command_name_right_after_the_slash_is_chat(text):
    assert parse_command(text) is None


def test_a_path_is_chat_not_a_command():
    # Telegram's clients do not mark "/usr" in "/usr/bin" as a command either.
    assert parse_command("/usr/bin/python crashes, why?") is None


def test_a_line_break_after_the_name_starts_the_arguments_and_keeps_their_spaces():
    assert parse_command("/ask\nwhat is it") == ParsedCommand("ask", "what is it")


async def test_help_followed_by_a_nul_byte_gets_the_help_and_no_model_call(tmp_path):
    provider = ScriptedProvider("a")
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", provider)])
        await bot.say("/help\x00")
        [text] = bot.replies()
        assert "/reset" in text and "/cancel" in text
        assert provider.requests == []
