"""What one chat message costs in SQL: every statement is a round trip to SQLite's thread (issue 12)."""
from contextlib import AsyncExitStack

from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.integration.telegram_bot import ANTHROPIC_KEY, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"


async def test_an_answer_waits_for_one_transaction_and_few_statements_before_its_final_text(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(
            FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("An answer in **four** parts.", chunks=4))
        )
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await bot.user_says("warm up")
        # (statement, whether the chat showed the final text yet), noted in aiosqlite's thread.
        statements: list[tuple[str, bool]] = []
        shown_before = len(bot.texts())
        await bot.app.database._conn.set_trace_callback(
            lambda sql: statements.append((" ".join(sql.split()), len(bot.texts()) > shown_before))
        )
        await bot.user_says("hello")
        await bot.app.database._conn.set_trace_callback(None)

        assert bot.texts()[-1] == "An answer in four parts."
        before = [sql for sql, final_shown in statements if not final_shown]
        # Store (2), begin (1), context and summary (2), the question's photos (1), the user's
        # model and the chat's prompt (2); then the answer with its usage in one transaction
        # (BEGIN, 3, COMMIT).
        assert len(before) <= 13, "\n".join(before)
        assert sum(sql.startswith("BEGIN") for sql in before) == 1, "\n".join(before)
        assert len(statements) <= 20, "\n".join(sql for sql, _ in statements)
        usage, answer = before.index(next(s for s in before if "usage_daily" in s)), before.index(
            next(s for s in before if s.startswith("INSERT INTO messages") and "'assistant'" in s)
        )
        begin = max(i for i, s in enumerate(before[:usage]) if s.startswith("BEGIN"))
        assert begin < usage and begin < answer and all(not s.startswith("COMMIT") for s in before[begin:answer])
        await bot.user_says("again")
        assert len(bot.texts()) == shown_before + 2
