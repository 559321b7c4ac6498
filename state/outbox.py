"""A durable outbox for writes to Notion: stored before any call, delivered until they land.

An entry is 'pending' until it is 'delivered' (its page exists with all its content) or 'failed'
(Notion refused it for good). A pending entry carries its delivery progress (the page once it
exists, how many top-level blocks are on it), so a delivery cut short by a crash resumes where it
stopped. `user_told` records whether the user heard how it ended; `mark_told` sets it once the
notice is out (the delivery worker lets one task at a time tell about an entry), so a notice that
could not be sent is sent again later: the user is told at least once.

Several instances on one PostgreSQL each run a delivery worker: an entry is worked on (delivered,
or its outcome told) only under a `claim` of the instance's name, kept alive while it works and
given up after; a claim its instance stopped keeping expires after `hold_seconds`. One instance
alone always gets its own claims, a restart of it included.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Mapping

from integrations.clock import Clock
from state.database import Database, Row
from state.db import iso_timestamp

Status = Literal["pending", "delivered", "failed"]

_COLUMNS = (
    "id, idempotency_key, chat_id, user_id, message_id, payload, status, attempts, next_attempt_at,"
    " last_error, page_id, page_url, blocks_done, user_told, created_at"
)
_ERROR_LIMIT = 500


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    key: str
    chat_id: int
    user_id: int
    message_id: int | None
    payload: dict[str, Any]
    status: Status
    attempts: int
    next_attempt_at: str
    last_error: str | None
    page_id: str | None
    page_url: str | None
    blocks_done: int
    user_told: bool
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> OutboxEntry:
        return cls(
            id=row["id"],
            key=row["idempotency_key"],
            chat_id=row["chat_id"],
            user_id=row["user_id"],
            message_id=row["message_id"],
            payload=json.loads(row["payload"]),
            status=row["status"],
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            last_error=row["last_error"],
            page_id=row["page_id"],
            page_url=row["page_url"],
            blocks_done=row["blocks_done"],
            user_told=bool(row["user_told"]),
            created_at=row["created_at"],
        )


# Seconds a claim on an entry outlives the last time its instance kept it.
HOLD_SECONDS = 60.0


class Outbox:
    def __init__(self, db: Database, clock: Clock, *, instance: str = "local", hold_seconds: float = HOLD_SECONDS) -> None:
        self._db = db
        self._clock = clock
        self.instance = instance
        self.hold_seconds = hold_seconds

    async def add(
        self, key: str, chat_id: int, user_id: int, payload: Mapping[str, Any], *, message_id: int | None = None
    ) -> tuple[OutboxEntry, bool]:
        """Store a write (due now); with a key seen before, the existing entry and False."""
        now = self._now()
        async with self._db.transaction():
            existing = await self._by_key(key)
            if existing is not None:
                return existing, False
            inserted = await self._db.fetchone(
                "INSERT INTO note_outbox (idempotency_key, chat_id, user_id, message_id, payload,"
                " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (key, chat_id, user_id, message_id, json.dumps(dict(payload)), now, now, now),
            )
            entry = await self._by_id(inserted["id"])
        assert entry is not None
        return entry, True

    async def get(self, entry_id: int) -> OutboxEntry | None:
        return await self._by_id(entry_id)

    async def due(self, *, include_later: bool = False, limit: int = 50) -> list[OutboxEntry]:
        """Pending entries whose next attempt is due (or all pending ones), oldest first."""
        condition = "" if include_later else " AND next_attempt_at <= ?"
        params: tuple[Any, ...] = () if include_later else (self._now(),)
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM note_outbox WHERE status = 'pending'{condition} ORDER BY id LIMIT ?",
            (*params, limit),
        )
        return [OutboxEntry.from_row(row) for row in rows]

    async def next_due_at(self) -> datetime | None:
        row = await self._db.fetchone("SELECT MIN(next_attempt_at) FROM note_outbox WHERE status = 'pending'")
        return datetime.fromisoformat(row[0]) if row is not None and row[0] is not None else None

    async def untold(self, limit: int = 50) -> list[OutboxEntry]:
        """Entries that ended (delivered or failed) without the user having heard of it."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM note_outbox WHERE status <> 'pending' AND user_told = 0 ORDER BY id LIMIT ?",
            (limit,),
        )
        return [OutboxEntry.from_row(row) for row in rows]

    async def depth(self) -> int:
        """How many writes are still waiting to land (for /status)."""
        row = await self._db.fetchone("SELECT COUNT(*) FROM note_outbox WHERE status = 'pending'")
        return int(row[0]) if row is not None else 0

    async def record_page(self, entry_id: int, page_id: str, page_url: str, blocks_done: int) -> None:
        await self._db.execute(
            "UPDATE note_outbox SET page_id = ?, page_url = ?, blocks_done = ?, updated_at = ? WHERE id = ?",
            (page_id, page_url, blocks_done, self._now(), entry_id),
        )

    async def record_progress(self, entry_id: int, blocks_done: int) -> None:
        await self._db.execute(
            "UPDATE note_outbox SET blocks_done = ?, updated_at = ? WHERE id = ?",
            (blocks_done, self._now(), entry_id),
        )

    async def claim(self, entry_id: int) -> bool:
        """Take (or keep) the entry for this instance for `hold_seconds`; False while another
        instance's claim on it is alive."""
        now = self._clock.now()
        until = iso_timestamp(now + timedelta(seconds=self.hold_seconds))
        taken = await self._db.execute_rowcount(
            "UPDATE note_outbox SET claimed_by = ?, claimed_until = ? WHERE id = ?"
            " AND (claimed_by IS NULL OR claimed_by = ? OR claimed_until < ?)",
            (self.instance, until, entry_id, self.instance, iso_timestamp(now)),
        )
        return taken == 1

    async def release(self, entry_id: int) -> None:
        await self._db.execute(
            "UPDATE note_outbox SET claimed_by = NULL, claimed_until = NULL WHERE id = ? AND claimed_by = ?",
            (entry_id, self.instance),
        )

    async def mark_delivered(self, entry_id: int) -> None:
        await self._db.execute(
            "UPDATE note_outbox SET status = 'delivered', last_error = NULL, updated_at = ?"
            " WHERE id = ? AND status = 'pending'",
            (self._now(), entry_id),
        )

    async def begin_attempt(self, entry_id: int) -> None:
        """Count an attempt before it calls Notion: after a crash mid-call, the next attempt knows
        that a page may exist already."""
        await self._db.execute(
            "UPDATE note_outbox SET attempts = attempts + 1, updated_at = ? WHERE id = ?", (self._now(), entry_id)
        )

    async def mark_failed(self, entry_id: int, error: str) -> None:
        await self._db.execute(
            "UPDATE note_outbox SET status = 'failed', last_error = ?, updated_at = ?"
            " WHERE id = ? AND status = 'pending'",
            (error[:_ERROR_LIMIT], self._now(), entry_id),
        )

    async def schedule_retry(self, entry_id: int, error: str, delay: float) -> None:
        """Make the entry due again in `delay` seconds, remembering why this attempt failed."""
        due = iso_timestamp(self._clock.now() + timedelta(seconds=max(0.0, delay)))
        await self._db.execute(
            "UPDATE note_outbox SET last_error = ?, next_attempt_at = ?, updated_at = ?"
            " WHERE id = ? AND status = 'pending'",
            (error[:_ERROR_LIMIT], due, self._now(), entry_id),
        )

    async def was_told(self, entry_id: int) -> bool:
        row = await self._db.fetchone("SELECT user_told FROM note_outbox WHERE id = ?", (entry_id,))
        return row is not None and bool(row["user_told"])

    async def mark_told(self, entry_id: int) -> None:
        """The user has been told how the note ended."""
        await self._db.execute(
            "UPDATE note_outbox SET user_told = 1, updated_at = ? WHERE id = ?", (self._now(), entry_id)
        )

    async def prune(self, keep: timedelta) -> int:
        """Forget notes that ended and were told more than `keep` ago; returns how many."""
        cutoff = iso_timestamp(self._clock.now() - keep)
        return await self._db.execute_rowcount(
            "DELETE FROM note_outbox WHERE status <> 'pending' AND user_told = 1 AND updated_at < ?", (cutoff,)
        )

    def age_of(self, entry: OutboxEntry) -> timedelta:
        return self._clock.now() - datetime.fromisoformat(entry.created_at)

    async def _by_key(self, key: str) -> OutboxEntry | None:
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM note_outbox WHERE idempotency_key = ?", (key,))
        return OutboxEntry.from_row(row) if row is not None else None

    async def _by_id(self, entry_id: int) -> OutboxEntry | None:
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM note_outbox WHERE id = ?", (entry_id,))
        return OutboxEntry.from_row(row) if row is not None else None

    def _now(self) -> str:
        return iso_timestamp(self._clock.now())
