"""Each chat's summary failures in a row and when it may try again (compaction's backoff), kept across restarts."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from state.database import Database
from state.db import iso_timestamp


@dataclass(frozen=True)
class SummaryBackoff:
    failures: int
    retry_at: datetime


class CompactionBackoffs:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> dict[int, SummaryBackoff]:
        """Every chat that is backing off (read once at start: a handful of rows)."""
        rows = await self._db.fetchall("SELECT chat_id, failures, retry_at FROM compaction_backoff")
        return {row["chat_id"]: SummaryBackoff(row["failures"], datetime.fromisoformat(row["retry_at"])) for row in rows}

    async def failed(self, chat_id: int, backoff: SummaryBackoff) -> None:
        await self._db.execute(
            "INSERT INTO compaction_backoff (chat_id, failures, retry_at) VALUES (?, ?, ?)"
            " ON CONFLICT (chat_id) DO UPDATE SET failures = excluded.failures, retry_at = excluded.retry_at",
            (chat_id, backoff.failures, iso_timestamp(backoff.retry_at)),
        )

    async def succeeded(self, chat_id: int) -> None:
        await self._db.execute("DELETE FROM compaction_backoff WHERE chat_id = ?", (chat_id,))
