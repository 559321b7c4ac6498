"""Compaction's failure backoff per chat, kept in the database: on SQLite and on PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timezone

from state.compaction_backoff import CompactionBackoffs, SummaryBackoff

LATER = datetime(2026, 11, 26, 12, 5, tzinfo=timezone.utc)


async def test_a_chats_backoff_is_kept_updated_and_ended(state_backend, clock):
    database = await state_backend.open(clock)
    backoffs = CompactionBackoffs(database)
    assert await backoffs.all() == {}
    await backoffs.failed(-100123, SummaryBackoff(1, LATER))
    await backoffs.failed(-100123, SummaryBackoff(2, LATER.replace(minute=10)))
    await backoffs.failed(42, SummaryBackoff(1, LATER))
    await database.close()

    database = await state_backend.open(clock)  # a restart
    backoffs = CompactionBackoffs(database)
    assert await backoffs.all() == {-100123: SummaryBackoff(2, LATER.replace(minute=10)), 42: SummaryBackoff(1, LATER)}
    await backoffs.succeeded(-100123)
    assert list(await backoffs.all()) == [42]
    await database.close()
