"""Loading a conversation's context reads an index in order: SQLite never sorts it in a temporary B-tree."""
import pytest

from integrations.clock import ManualClock
from state.db import Database
from state.history import CONTEXT_QUERY, HistoryStore

CHAT, USER = 100, 42


@pytest.fixture
async def db(tmp_path):
    clock = ManualClock()
    database = await Database.open(tmp_path / "state" / "bot.db", clock)
    history = HistoryStore(database, clock)
    for n in range(1, 30):  # rows, so the planner sees more than an empty table
        stored = await history.record_incoming(CHAT + n % 3, USER, n, f"question {n}")
        assert stored is not None
        await history.record_answer(stored, f"answer {n}", "test:model")
    yield database
    await database.close()


async def query_plan(db: Database, *, analyzed: bool) -> list[str]:
    if analyzed:
        await db.execute("ANALYZE")
    # After a summary (turns up to 2 left out), with the message's own answer.
    rows = await db.fetchall(f"EXPLAIN QUERY PLAN {CONTEXT_QUERY}", {"id": 5, "after": 2, "answers_before": 6})
    return [row["detail"] for row in rows]


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh", "after ANALYZE"])
async def test_context_is_read_in_order_from_the_index_without_a_temp_b_tree(db, analyzed):
    plan = await query_plan(db, analyzed=analyzed)
    assert not [step for step in plan if "TEMP B-TREE" in step], plan
    assert any("messages_in_context_order" in step for step in plan), plan
