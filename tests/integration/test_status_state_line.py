"""Which engine holds the state: one "State:" line in /status and `switchboard status`, never a password."""
from __future__ import annotations

from contextlib import AsyncExitStack

from bot.config import Secret
from bot.status import status_from_database
from integrations.clock import ManualClock
from state.db import bundled_migrations, load_migrations
from state.postgres import bundled_postgres_migrations
from tests.integration.telegram_bot import USER, settings_for, start_telegram_bot
from tests.pg import PASSWORD


async def status_on_telegram(settings) -> str:
    async with AsyncExitStack() as stack:
        bot = await start_telegram_bot(stack, settings)
        await bot.user_says("/status")
        return bot.texts()[-1]


def state_lines(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("State:")]


async def test_status_names_the_sqlite_file_that_holds_the_state(tmp_path):
    settings = settings_for(tmp_path, admin_ids=frozenset({USER}))
    schema = len(load_migrations(bundled_migrations()))
    expected = f"State: SQLite at {tmp_path / 'switchboard.sqlite3'}, schema {schema}"

    assert state_lines(await status_on_telegram(settings)) == [expected]
    from_shell = await status_from_database(tmp_path / "switchboard.sqlite3", ManualClock())
    assert state_lines(from_shell) == [expected]


async def test_status_names_the_postgresql_server_and_database_without_the_password(tmp_path, postgres_backend):
    settings = settings_for(tmp_path, admin_ids=frozenset({USER}), database_url=Secret(postgres_backend.url))
    schema = len(load_migrations(bundled_postgres_migrations()))
    port = postgres_backend.cluster.port
    expected = f"State: PostgreSQL at 127.0.0.1:{port}/switchboard, schema {schema}"

    report = await status_on_telegram(settings)
    assert state_lines(report) == [expected]
    from_shell = await status_from_database(tmp_path / "unused.sqlite3", ManualClock(), database_url=postgres_backend.url)
    assert state_lines(from_shell) == [expected]
    assert PASSWORD not in report + from_shell
