"""Every message gets exactly one answer: one regression test per finding of the exactly-once issue,
each seen from outside (what the user sees in the chat, what the operator sees from the process)."""
import asyncio
import os
import signal
import sqlite3
import sys
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import timedelta

import pytest
from telethon import errors

from bot.shutdown import drain
from handlers.chat import SOMETHING_WENT_WRONG
from handlers.router import ALREADY_FINISHING, EXPIRED_NOTE, NOT_ACCEPTED
from state.lock import StateLock
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.telegram import new_message_event, photo, sticker, voice_note
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, kill, settings_for, start_telegram_bot
from tests.integration.test_cli import clean_env, run_cli

CLAUDE = "anthropic:claude-test"
GROUP = -1001234567890
STORY = "one two three four five six"
POLL = 0.05


def event(text: str, *, chat_id: int = USER, message_id: int | None = None, **extra):
    return new_message_event(
        chat_id=chat_id, sender_id=USER, text=text, message_id=message_id or next(MESSAGE_IDS), **extra
    )


async def claude_with(stack: AsyncExitStack, *behaviours, default=anth.Reply("The answer.")) -> FakeAnthropic:
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=default))
    claude.script(*behaviours)
    return claude


async def stored_then_crashed(settings, text: str, message_id: int):
    """A run that stored a user's message and died before answering it; returns its (stopped) bot."""
    async with AsyncExitStack() as crashed_run:
        bot = await start_telegram_bot(crashed_run, settings)
        bot.client.known_chats.add(USER)
        await bot.app.services.history.record_incoming(USER, USER, message_id, text)
    return bot


# --- 1. the console answers in every session, not only the first -----------------------------


async def test_a_second_console_session_on_the_same_state_answers_its_messages(tmp_path):
    async with FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Hello there.")) as claude:
        env = clean_env(tmp_path, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS=CLAUDE)
        first = await run_cli(["console"], env, tmp_path, stdin="hello\n")
        second = await run_cli(["console"], env, tmp_path, stdin="hello\n")
    assert first == (0, "Hello there.\n\n", "")
    assert second == (0, "Hello there.\n\n", "")
    assert claude.calls == 2


# --- 2. the console resumes a message cut off by a crash ---------------------------------------


async def start_console(env, cwd, *, stdin_open: bool = True) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "console",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env, cwd=cwd,
    )  # fmt: skip


async def test_a_console_killed_mid_reply_answers_that_message_in_the_next_session(tmp_path):
    async with FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(2, STORY)) as claude:
        env = clean_env(tmp_path, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS=CLAUDE)
        process = await start_console(env, tmp_path)
        process.stdin.write(b"tell me a story\n")
        await process.stdin.drain()
        await asyncio.wait_for(claude.server.stall_began.wait(), 30)
        process.kill()
        await process.wait()
        claude.default = anth.Reply("Once upon a time.")
        code, out, err = await run_cli(["console"], env, tmp_path, stdin="")
    assert (code, out) == (0, "Once upon a time.\n\n"), err
    assert claude.message_requests[-1].json["messages"] == [{"role": "user", "content": "tell me a story"}]


# --- 3. messages sent while the bot was stopped are answered once ------------------------------


async def test_messages_sent_while_the_bot_was_stopped_are_answered_once_after_it_starts(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack, anth.Reply("First answer."), anth.Reply("Second answer."))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
        bot.client.arrive_while_offline(event("first question"))
        bot.client.arrive_while_offline(event("second question"))
        await bot.clock.advance(300)  # the bot is down for five minutes
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert bot.texts() == ["First answer.", "Second answer."]
        assert claude.calls == 2


async def test_a_pending_message_redelivered_by_catch_up_is_answered_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        bot = await stored_then_crashed(settings, "are you there?", 901)
        bot = await start_telegram_bot(stack, settings, offline_updates=[event("are you there?", message_id=901)])
        await bot.settle()
        assert bot.texts() == ["The answer."]
        assert claude.calls == 1


# --- 4. one bot per state directory -------------------------------------------------------------


async def test_a_second_instance_on_the_same_state_stops_with_one_line_naming_the_first(tmp_path):
    env = clean_env(tmp_path)
    with StateLock(tmp_path / "state"):
        code, out, err = await run_cli(["console"], env, tmp_path, stdin="hello\n")
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert f"pid {os.getpid()}" in line and "STATE_DIR" in line
    assert "Traceback" not in err


# --- 5. an error that is not an upstream error ---------------------------------------------------


async def test_a_storage_fault_while_answering_ends_in_one_clear_message_and_stops_typing(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))

        async def broken_writes(*args, **kwargs):  # storing the answer (and what it cost) fails
            raise sqlite3.OperationalError("database or disk is full")

        bot.app.database.write_all = broken_writes
        await bot.user_says("hello")
        assert bot.texts() == [SOMETHING_WENT_WRONG]
        typing_before = len(bot.client.typing_actions(USER))
        await bot.clock.advance(60)
        assert len(bot.client.typing_actions(USER)) == typing_before, "the typing indicator stopped"
        assert await bot.statuses() == ["failed"]


# --- 6. a message that arrives while storage fails -----------------------------------------------


async def test_a_message_that_cannot_be_stored_is_refused_with_a_message_and_the_bot_keeps_going(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        history = bot.app.services.history
        real_record = history.record_incoming

        async def disk_full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        history.record_incoming = disk_full
        await bot.user_says("first")
        history.record_incoming = real_record
        await bot.user_says("second")
        assert bot.texts() == [NOT_ACCEPTED, "The answer."]
        assert claude.calls == 1


async def test_the_console_keeps_answering_after_a_line_it_could_not_store(tmp_path):
    # A database that refuses writes to the messages table only: the first insert fails.
    async with FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Fine.")) as claude:
        env = clean_env(tmp_path, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS=CLAUDE)
        await run_cli(["console"], env, tmp_path, stdin="")
        database = tmp_path / "state" / "switchboard.sqlite3"
        with sqlite3.connect(database) as connection:
            connection.execute(
                "CREATE TRIGGER refuse_once BEFORE INSERT ON messages WHEN NEW.content = 'first'"
                " BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END"
            )
        code, out, err = await run_cli(["console"], env, tmp_path, stdin="first\nsecond\n")
    assert code == 0 and "Traceback" not in err
    assert out == NOT_ACCEPTED + "\n\n" + "Fine.\n\n"


# --- 7. an undeliverable reply is not generated again ------------------------------------------


async def test_a_reply_the_chat_refuses_for_good_is_not_generated_again_after_a_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            bot.client.fail_next("send", errors.UserIsBlockedError(request=None), times=10)
            await bot.user_says("hello")
            assert bot.texts() == []
        bot = await start_telegram_bot(stack, settings)
        await bot.settle()
        assert claude.calls == 1
        assert await bot.app.services.history.pending() == []


async def test_a_resumed_message_is_checked_against_access_again(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        bot = await stored_then_crashed(settings, "still allowed?", 902)
        bot = await start_telegram_bot(stack, replace(settings, allowed_user_ids=frozenset()))
        await bot.settle()
        assert bot.texts() == [] and claude.calls == 0
        assert await bot.app.services.history.pending() == []


async def test_a_message_older_than_the_pending_age_gets_a_note_instead_of_an_answer(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        bot = await stored_then_crashed(settings, "what's the weather now?", 903)
        clock = bot.clock
        await clock.advance(timedelta(hours=3).total_seconds())
        bot = await start_telegram_bot(stack, settings, clock=clock)
        await bot.settle()
        assert bot.texts() == [EXPIRED_NOTE.format(age="3 hours")]
        assert claude.calls == 0 and await bot.app.services.history.pending() == []


# --- 8. /cancel or shutdown during the final delivery -------------------------------------------


async def test_a_shutdown_during_the_final_delivery_does_not_answer_twice_after_the_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack, default=anth.Reply(STORY))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            # The final send meets a long flood wait; the stop cuts it off while it waits.
            bot.client.fail_next("send", errors.FloodWaitError(request=None, capture=600), times=1)
            await bot.client.deliver(event("tell me a story", chat_id=GROUP, mentioned=True))
            await bot.clock.run_until_complete(drain(bot.app, bot.clock, grace=5, finalise=5), poll=POLL)
            assert bot.texts(GROUP) == []
        bot = await start_telegram_bot(stack, settings, clock=bot.clock)
        await bot.settle()
        assert bot.texts(GROUP) == [STORY]
        assert claude.calls == 1, "the stored answer is delivered, the model is not asked again"


async def test_cancel_typed_while_the_final_text_is_being_delivered_still_delivers_it_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack, default=anth.Reply(STORY))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        bot.client.fail_next("send", errors.FloodWaitError(request=None, capture=600), chat_id=GROUP)
        asking = asyncio.ensure_future(bot.client.deliver(event("a story please", chat_id=GROUP, mentioned=True)))
        await bot.clock.run_until(lambda: claude.calls == 1 and bot.paused(GROUP), poll=POLL)
        await bot.clock.run_until_complete(_until_status(bot, GROUP, "delivering"), poll=POLL)
        assert bot.paused(GROUP), "the final text is waiting out the flood wait"
        await bot.clock.run_until_complete(bot.client.deliver(event("/cancel", chat_id=GROUP)), poll=POLL)
        await bot.clock.run_until_complete(asking, poll=POLL)
        await bot.settle()
        assert bot.texts(GROUP) == [STORY, ALREADY_FINISHING]
        assert await bot.statuses(GROUP) == ["answered", "answered"]


async def _until_status(bot, chat_id: int, status: str) -> None:
    while status not in await bot.statuses(chat_id):
        await asyncio.sleep(0)


# --- 9. a crash mid-stream leaves no stale partial reply ------------------------------------------


async def test_the_answer_after_a_crash_replaces_the_partial_reply_instead_of_adding_one(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack, default=anth.stall_after(2, STORY))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        crashed_run = AsyncExitStack()
        bot = await start_telegram_bot(crashed_run, settings)
        await bot.client.deliver(event("tell me a story", chat_id=GROUP, mentioned=True))
        await bot.clock.run_until_complete(claude.server.stall_began.wait(), poll=POLL)
        await bot.clock.run_until(lambda: bot.texts(GROUP)[:1] == ["one two"], poll=POLL)
        [partial] = bot.texts(GROUP)
        assert partial != STORY
        client, clock = bot.client, bot.clock
        await kill(bot, crashed_run)  # the process is gone: nothing of it runs any more
        claude.default = anth.Reply("Once upon a time, the end.")
        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        assert bot.texts(GROUP) == ["Once upon a time, the end."]


@pytest.mark.parametrize("chat_id", [USER, GROUP])
async def test_killed_after_telegram_took_the_answer_but_before_it_was_recorded_the_chat_shows_it_once(
    tmp_path, chat_id
):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack, default=anth.Reply("The answer."))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        crashed_run = AsyncExitStack()
        bot = await start_telegram_bot(crashed_run, settings)
        never = asyncio.Event()

        async def dies_before_recording(*_args) -> None:
            await never.wait()

        bot.app.services.history.record_shown = dies_before_recording
        await bot.client.deliver(event("hello?", chat_id=chat_id, mentioned=True))
        # In a group the first preview is the message sent; in a private chat, the answer.
        await bot.clock.run_until(lambda: len(bot.texts(chat_id)) == 1, poll=POLL)
        client, clock = bot.client, bot.clock
        await kill(bot, crashed_run)  # SIGKILL: the record of the sent message never happened

        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()

        assert bot.texts(chat_id) == ["The answer."]
        assert await bot.statuses(chat_id) == ["answered"]


# --- 10. media the bot cannot read yet ----------------------------------------------------------


@pytest.mark.parametrize(
    ("media", "named"), [(voice_note(), "voice message"), (sticker(), "sticker")]
)
async def test_a_message_the_bot_cannot_read_gets_a_short_helpful_reply_once(tmp_path, media, named):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        voice = event("", media=media)
        await bot.clock.run_until_complete(bot.client.deliver(voice))
        await bot.clock.run_until_complete(bot.client.deliver(voice))  # redelivered
        await bot.settle()
        [reply] = bot.texts()
        assert named in reply and "text" in reply
        assert claude.calls == 0


async def test_a_photo_with_a_caption_redelivered_is_looked_at_and_answered_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        shown = event("what is this?", media=photo())
        await bot.clock.run_until_complete(bot.client.deliver(shown))
        await bot.clock.run_until_complete(bot.client.deliver(shown))  # redelivered
        await bot.settle()
        assert bot.texts() == ["The answer."] and claude.calls == 1
        image, question = claude.message_requests[0].json["messages"][0]["content"]
        assert image["type"] == "image" and question == {"type": "text", "text": "[photo]\nwhat is this?"}


# --- 11. Ctrl-C in the console stops the reply, it is not a model failure ------------------------


async def test_ctrl_c_in_the_console_stops_the_reply_and_the_next_line_is_answered(tmp_path):
    async with FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Next answer.")) as claude:
        claude.script(anth.stall_after(2, STORY))
        env = clean_env(tmp_path, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS=CLAUDE)
        process = await start_console(env, tmp_path)
        process.stdin.write(b"tell me a story\n")
        await process.stdin.drain()
        await asyncio.wait_for(claude.server.stall_began.wait(), 30)
        process.send_signal(signal.SIGINT)
        process.stdin.write(b"and now?\n")
        process.stdin.close()
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err
    # What had arrived of the story by then (maybe nothing yet), the note, then the next answer.
    stopped, _, rest = out.decode().partition("(stopped)\n\n")
    assert stopped.strip() in ("…", "one", "one two", "one two three")
    assert rest == "Next answer.\n\n"
    assert "every model failed" not in out.decode() and "Traceback" not in err.decode()


# --- the safety net -------------------------------------------------------------------------------


async def test_a_message_nobody_works_on_is_found_and_answered_while_serving(tmp_path, caplog):
    async with AsyncExitStack() as stack:
        claude = await claude_with(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        bot.client.known_chats.add(USER)
        # A lifecycle bug would leave a message like this: stored, no job, the bot still running.
        await bot.app.services.history.record_incoming(USER, USER, next(MESSAGE_IDS), "hello?")
        safety_net = asyncio.ensure_future(bot.app.router.keep_resuming(every=300, older_than=120))
        await bot.clock.advance(299)
        assert bot.texts() == []
        await bot.clock.run_until(lambda: bot.texts() == ["The answer."], poll=POLL)
        await bot.settle()
        safety_net.cancel()
        assert "found 1 unfinished message(s) nobody was working on" in caplog.text
        assert await bot.statuses() == ["answered"]
