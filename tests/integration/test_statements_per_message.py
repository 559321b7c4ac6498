"""What one chat message costs in SQL, all of it on the loop's thread (issue 12)."""
from contextlib import AsyncExitStack

from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.integration.telegram_bot import ANTHROPIC_KEY, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"


async def test_an_answer_waits_for_one_transaction_and_few_statements_before_its_final_text_none_on_another_thread(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(
            FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("An answer in **four** parts.", chunks=4))
        )
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await bot.user_says("warm up")
        # (statement, how many trips to aiosqlite's thread were made before it, whether the chat
        # showed the final text yet); trips are counted where aiosqlite queues them.
        statements: list[tuple[str, int, bool]] = []
        trips: list[bool] = []
        shown_before = len(bot.texts())
        connection = bot.app.database._conn
        queue = connection._tx

        class CountedQueue:  # aiosqlite's thread goes on reading `queue` itself
            def put_nowait(self, item):
                trips.append(len(bot.texts()) > shown_before)
                queue.put_nowait(item)

        await connection.set_trace_callback(
            lambda sql: statements.append((" ".join(sql.split()), len(trips), len(bot.texts()) > shown_before))
        )
        connection._tx = CountedQueue()
        await bot.user_says("hello")
        connection._tx = queue
        await connection.set_trace_callback(None)
        listing = "\n".join(f"trip {trip}: {sql}" for sql, trip, _ in statements)

        assert bot.texts()[-1] == "An answer in four parts."
        # Every statement on the loop's thread: a trip to another thread and back costs more
        # than the statement (state/db.py).
        assert trips == [], listing
        before = [(sql, trip) for sql, trip, final_shown in statements if not final_shown]
        # Store (2), begin (1), context and summary (2), the user's model and the chat's prompt
        # (2); then the answer with its usage in one transaction (BEGIN, 3, COMMIT).
        assert len(before) <= 12, listing
        assert sum(sql.startswith("BEGIN") for sql, _ in before) == 1, listing
        # After the final text: the message showing it (1), the message answered (1); compaction's
        # check reads nothing (the answer knows what it was asked and said).
        assert len(statements) <= 14, listing
        sqls = [sql for sql, _ in before]
        usage = sqls.index(next(s for s in sqls if "usage_daily" in s))
        answer = sqls.index(next(s for s in sqls if s.startswith("INSERT INTO messages") and "'assistant'" in s))
        begin = max(i for i, s in enumerate(sqls[:usage]) if s.startswith("BEGIN"))
        commit = next(i for i, s in enumerate(sqls) if i > begin and s.startswith("COMMIT"))
        assert begin < usage < commit and begin < answer < commit, listing
        await bot.user_says("again")
        assert len(bot.texts()) == shown_before + 2
