"""The bot with its state in PostgreSQL (DATABASE_URL), end to end through the real composition
root and the Telegram runner, and the faults an operator meets: each says what to do, none shows
the password."""
import io
from contextlib import AsyncExitStack

from bot.check import check_command
from bot.config import Secret
from bot.status import status_from_database
from integrations.clock import ManualClock
from state.postgres import connect
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.providers import Script, ScriptedProvider
from tests.harness import start_bot
from tests.integration.telegram_bot import ANTHROPIC_KEY, settings_for, start_telegram_bot
from tests.pg import PASSWORD

CLAUDE = "anthropic:claude-test"


async def test_a_chat_on_postgresql_is_remembered_across_a_restart_and_a_redelivery_is_not_answered_twice(
    tmp_path, postgres_backend
):
    await postgres_backend.empty()
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Nice to meet you, Ada.")))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], database_url=Secret(postgres_backend.url))
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            await bot.user_says("My name is Ada.", message_id=41)
            assert bot.texts() == ["Nice to meet you, Ada."]
        assert not (tmp_path / "switchboard.sqlite3").exists(), "the state went to PostgreSQL, not SQLite"
        async with AsyncExitStack() as second_run:
            bot = await start_telegram_bot(second_run, settings)
            await bot.user_says("My name is Ada.", message_id=41)  # Telegram hands it out again
            await bot.user_says("What is my name?", message_id=42)
            assert bot.texts() == ["Nice to meet you, Ada."]
        assert claude.calls == 2
        assert claude.message_requests[-1].json["messages"] == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
            {"role": "user", "content": "What is my name?"},
        ]
        report = await status_from_database(tmp_path / "none.sqlite3", ManualClock(), database_url=postgres_backend.url)
        # `switchboard status` reads the same database: the two answers' usage is there.
        assert "Usage today" in report and "none yet" not in report


async def check_lines(tmp_path, url: str) -> str:
    out = io.StringIO()
    await check_command(settings_for(tmp_path, database_url=Secret(url)), out, offline=True)
    return out.getvalue()


async def test_check_probes_postgresql_and_names_the_schema_without_the_password(tmp_path, postgres_backend):
    lines = await check_lines(tmp_path, postgres_backend.url)
    [database] = [line for line in lines.splitlines() if line.startswith(("✓ database", "✗ database"))]
    assert database.startswith("✓ database: PostgreSQL postgresql://switchboard@127.0.0.1:")
    assert PASSWORD not in lines


async def test_check_says_which_part_of_database_url_is_wrong(tmp_path, postgres_cluster):
    refused = await check_lines(tmp_path, postgres_cluster.url(password="not-the-password-123"))
    assert "✗ database: PostgreSQL at postgresql://switchboard@127.0.0.1:" in refused
    assert "refused the password of user switchboard: check the password in DATABASE_URL" in refused
    assert "not-the-password-123" not in refused

    missing = await check_lines(tmp_path, postgres_cluster.url("no_such_db"))
    assert "the database no_such_db does not exist" in missing and "createdb no_such_db" in missing

    down = await check_lines(tmp_path, f"postgresql://switchboard:{PASSWORD}@127.0.0.1:1/switchboard")
    assert "✗ database: cannot reach PostgreSQL at postgresql://switchboard@127.0.0.1:1/switchboard" in down
    assert "is the server running" in down and PASSWORD not in down


async def test_a_message_arriving_as_the_server_drops_the_connection_is_stored_and_answered_once(
    tmp_path, postgres_backend
):
    await postgres_backend.empty()
    provider = ScriptedProvider("a", default=Script(("Still here.",)))
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [("anthropic:m", provider)], database_url=postgres_backend.url)
        await bot.say("hello", message_id=1)
        killer = await connect(postgres_backend.url)
        try:  # a server restart: every session of the bot's ends
            await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await killer.close()
        await bot.say("are you there?", message_id=2)
        await bot.say("are you there?", message_id=2)  # and Telegram hands it out again
        assert bot.replies() == ["Still here.", "Still here."]
        assert [m.content for m in provider.requests[-1].messages] == ["hello", "Still here.", "are you there?"]
