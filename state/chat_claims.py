"""Chat claims: which of the instances sharing one PostgreSQL answers which chat, until when.

A chat's unfinished messages are answered by the instance holding its claim, so they stay in
order and on one instance (its lane, /cancel, the queued notice). A claim is taken when the chat
has none or its `until` has passed (its holder died) or it is already ours; the holder moves
`until` on while the chat has work there and deletes the row when the chat is idle. `take_next`
finds the oldest unfinished message whose chat nobody holds, locking it `FOR UPDATE SKIP LOCKED`
in the claiming transaction, so instances looking at the same time pass each other by; the
INSERT ... ON CONFLICT that takes the claim is what makes two never hold one chat.

`until` is an ISO timestamp from each instance's injected clock: the instances' clocks must agree
to well within a lease (NTP does that).
"""
from __future__ import annotations

from datetime import timedelta

from integrations.clock import Clock
from state.database import Database
from state.db import iso_timestamp

# The PostgreSQL channel an instance is woken on when a chat it may answer got a message: the
# payload is the chat id, or empty for "some chat nobody holds".
CHANNEL = "switchboard_work"

_TAKE = (
    "INSERT INTO chat_claims (chat_id, instance, until) VALUES (:chat, :me, :until)"
    " ON CONFLICT (chat_id) DO UPDATE SET instance = excluded.instance, until = excluded.until"
    " WHERE chat_claims.until < :now OR chat_claims.instance = excluded.instance"
    " RETURNING chat_id"
)
_OLDEST_UNHELD = (
    "SELECT m.chat_id FROM messages m"
    " WHERE m.status IN ('pending', 'answering', 'delivering') AND m.created_at <= :stored_before"
    " AND NOT EXISTS (SELECT 1 FROM chat_claims c WHERE c.chat_id = m.chat_id AND c.until >= :now)"
    " ORDER BY m.id LIMIT 1 FOR UPDATE OF m SKIP LOCKED"
)
_GIVE_UP = (
    "DELETE FROM chat_claims WHERE chat_id = :chat AND instance = :me AND NOT EXISTS (SELECT 1 FROM messages m"
    " WHERE m.chat_id = :chat AND m.status IN ('pending', 'answering', 'delivering'))"
)
# Whether an instance seen lately (it reports itself every second, state/instances.py) holds fewer chats.
_LESS_BUSY = (
    "SELECT i.name FROM instances i WHERE i.name <> :me AND i.role <> 'stopped' AND i.last_seen >= :seen"
    " AND (SELECT COUNT(*) FROM chat_claims c WHERE c.instance = i.name AND c.until >= :now) < :mine LIMIT 1"
)


class ChatClaims:
    def __init__(self, database: Database, clock: Clock, instance: str, *, hold_seconds: float) -> None:
        self._db = database
        self._clock = clock
        self.instance = instance
        self.hold_seconds = hold_seconds

    async def take(self, chat_id: int) -> bool:
        """Hold the chat (True), unless another live instance holds it."""
        row = await self._db.fetchone(_TAKE, self._claim(chat_id))
        return row is not None

    async def take_next(self, *, waited: float = 0.0) -> int | None:
        """The chat of the oldest unfinished message that nobody holds (one stored at least
        `waited` seconds ago), now held here; None if there is none."""
        stored_before = iso_timestamp(self._clock.now() - timedelta(seconds=waited))
        async with self._db.transaction():
            row = await self._db.fetchone(_OLDEST_UNHELD, {"now": self._now(), "stored_before": stored_before})
            if row is None:
                return None
            taken = await self._db.fetchone(_TAKE, self._claim(int(row["chat_id"])))
        return int(taken["chat_id"]) if taken is not None else None

    async def someone_less_busy(self, mine: int) -> bool:
        """Whether another live instance holds fewer than `mine` chats (it should take the next one)."""
        seen = iso_timestamp(self._clock.now() - timedelta(seconds=self.hold_seconds))
        row = await self._db.fetchone(_LESS_BUSY, {"me": self.instance, "seen": seen, "now": self._now(), "mine": mine})
        return row is not None

    async def holder(self, chat_id: int) -> str | None:
        """The instance holding the chat now, or None."""
        row = await self._db.fetchone(
            "SELECT instance FROM chat_claims WHERE chat_id = ? AND until >= ?", (chat_id, self._now())
        )
        return row["instance"] if row is not None else None

    async def keep(self, chat_ids: set[int]) -> set[int]:
        """Move the claims on `chat_ids` on; returns those still held (one taken over after this
        instance could not keep it in time is no longer among them). Only these: rows of an
        earlier run under this name are not this process's to keep (see `give_up_all`)."""
        if not chat_ids:
            return set()
        rows = await self._db.fetchall(
            "UPDATE chat_claims SET until = :until WHERE instance = :me AND chat_id = ANY(:chats) RETURNING chat_id",
            {"until": self._until(), "me": self.instance, "chats": sorted(chat_ids)},
        )
        return {int(row["chat_id"]) for row in rows}

    async def give_up(self, chat_id: int) -> bool:
        """Let the chat go, unless it has unfinished messages (stored for this instance by another
        a moment ago): True once given up."""
        return bool(await self._db.execute_rowcount(_GIVE_UP, {"chat": chat_id, "me": self.instance}))

    async def give_up_all(self) -> None:
        """Every claim under this instance's name: at its stop, and at its start (what a killed run
        of it held is free at once, for whichever instance is least busy)."""
        await self._db.execute("DELETE FROM chat_claims WHERE instance = ?", (self.instance,))

    async def wake(self, chat_id: int | None = None) -> None:
        """Wake the instances: `chat_id`'s holder takes its new message up; None: anyone may take work."""
        await self._db.execute("SELECT pg_notify(?, ?)", (CHANNEL, "" if chat_id is None else str(chat_id)))

    def _claim(self, chat_id: int) -> dict[str, object]:
        return {"chat": chat_id, "me": self.instance, "until": self._until(), "now": self._now()}

    def _now(self) -> str:
        return iso_timestamp(self._clock.now())

    def _until(self) -> str:
        return iso_timestamp(self._clock.now() + timedelta(seconds=self.hold_seconds))
