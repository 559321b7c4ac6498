"""Chat history per chat, kept in SQLite so conversations and unanswered messages survive restarts.

A chat has at most one open conversation; /reset ends it (its rows stay) and the next message
starts a new one. A user message is stored as 'pending' before the bot answers it, then becomes
'answered' or 'failed'; messages still pending after a crash are answered after the restart.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Literal

from integrations.llm import ChatMessage
from integrations.resilience.clock import Clock
from state.db import Database, iso_timestamp

Status = Literal["pending", "answered", "failed"]

_MESSAGE_COLUMNS = "id, chat_id, user_id, telegram_message_id, content, status, created_at"


@dataclass(frozen=True)
class StoredMessage:
    """A user message as stored; `status` is as of when it was read."""

    id: int
    chat_id: int
    user_id: int
    telegram_message_id: int | None
    text: str
    status: Status
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredMessage:
        return cls(
            id=row["id"],
            chat_id=row["chat_id"],
            user_id=row["user_id"],
            telegram_message_id=row["telegram_message_id"],
            text=row["content"],
            status=row["status"],
            created_at=row["created_at"],
        )


class HistoryStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def record_incoming(
        self, chat_id: int, user_id: int, telegram_message_id: int, text: str
    ) -> StoredMessage | None:
        """Store a user message as pending; None if this Telegram message was stored before."""
        async with self._db.transaction():
            seen = await self._db.fetchone(
                "SELECT 1 FROM messages WHERE chat_id = ? AND telegram_message_id = ? AND role = 'user'",
                (chat_id, telegram_message_id),
            )
            if seen is not None:
                return None
            now = self._now()
            conversation_id = await self._open_conversation(chat_id, now)
            message_id = await self._db.execute(
                "INSERT INTO messages (conversation_id, chat_id, user_id, telegram_message_id, role,"
                " content, status, created_at) VALUES (?, ?, ?, ?, 'user', ?, 'pending', ?)",
                (conversation_id, chat_id, user_id, telegram_message_id, text, now),
            )
        return StoredMessage(message_id, chat_id, user_id, telegram_message_id, text, "pending", now)

    async def context_for(self, incoming: StoredMessage) -> list[ChatMessage]:
        """The conversation up to and including `incoming`, oldest first, each answer after its question.

        Earlier user messages count once they were answered or failed; messages still pending
        (or newer than `incoming`) belong to other turns.
        """
        rows = await self._db.fetchall(
            "SELECT role, content FROM messages"
            " WHERE conversation_id = (SELECT conversation_id FROM messages WHERE id = :id)"
            "   AND ((role = 'user' AND (id = :id OR (id < :id AND status IN ('answered', 'failed'))))"
            "        OR (role = 'assistant' AND in_reply_to < :id))"
            " ORDER BY COALESCE(in_reply_to, id), id",
            {"id": incoming.id},
        )
        return [ChatMessage(role=row["role"], content=row["content"]) for row in rows]

    async def record_answer(self, incoming: StoredMessage, text: str, model: str) -> None:
        """Store the bot's answer and mark `incoming` answered, both or neither."""
        async with self._db.transaction():
            await self._insert_answer(incoming.id, incoming.chat_id, text, model, self._now())
            await self._db.execute(
                "UPDATE messages SET status = 'answered' WHERE id = ?", (incoming.id,)
            )

    async def mark_failed(self, incoming: StoredMessage) -> None:
        """The user was told it failed: keep it in context, but do not retry it after a restart."""
        await self._db.execute(
            "UPDATE messages SET status = 'failed' WHERE id = ? AND status = 'pending'", (incoming.id,)
        )

    async def record_exchange(
        self, chat_id: int, user_id: int, question: str, answer: str, model: str
    ) -> None:
        """Store a question already answered elsewhere (e.g. /search), so follow-ups see it."""
        async with self._db.transaction():
            now = self._now()
            conversation_id = await self._open_conversation(chat_id, now)
            question_id = await self._db.execute(
                "INSERT INTO messages (conversation_id, chat_id, user_id, role, content, status,"
                " created_at) VALUES (?, ?, ?, 'user', ?, 'answered', ?)",
                (conversation_id, chat_id, user_id, question, now),
            )
            await self._insert_answer(question_id, chat_id, answer, model, now)

    async def pending(self) -> list[StoredMessage]:
        """User messages stored but never answered nor failed (e.g. cut off by a crash), oldest first."""
        rows = await self._db.fetchall(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE status = 'pending' ORDER BY id"
        )
        return [StoredMessage.from_row(row) for row in rows]

    async def reset(self, chat_id: int) -> None:
        """End the chat's conversation; its rows stay, the next message starts a new one."""
        await self._db.execute(
            "UPDATE conversations SET ended_at = ? WHERE chat_id = ? AND ended_at IS NULL",
            (self._now(), chat_id),
        )

    async def last_answer(self, chat_id: int) -> str | None:
        """The newest answer in the chat's open conversation."""
        row = await self._db.fetchone(
            "SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            " WHERE c.chat_id = ? AND c.ended_at IS NULL AND m.role = 'assistant'"
            " ORDER BY m.id DESC LIMIT 1",
            (chat_id,),
        )
        return None if row is None else row["content"]

    async def conversation_count(self, chat_id: int) -> int:
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM conversations WHERE chat_id = ?", (chat_id,)
        )
        return int(row[0]) if row else 0

    async def _open_conversation(self, chat_id: int, now: str) -> int:
        """The chat's open conversation, started if there is none. Call inside a transaction."""
        row = await self._db.fetchone(
            "SELECT id FROM conversations WHERE chat_id = ? AND ended_at IS NULL", (chat_id,)
        )
        if row is not None:
            return int(row["id"])
        return await self._db.execute(
            "INSERT INTO conversations (chat_id, started_at) VALUES (?, ?)", (chat_id, now)
        )

    async def _insert_answer(self, question_id: int, chat_id: int, text: str, model: str, now: str) -> None:
        inserted = await self._db.execute_rowcount(
            "INSERT INTO messages (conversation_id, chat_id, role, content, status, model,"
            " in_reply_to, created_at)"
            " SELECT conversation_id, ?, 'assistant', ?, 'answered', ?, id, ? FROM messages WHERE id = ?",
            (chat_id, text, model, now, question_id),
        )
        if inserted != 1:
            raise LookupError(f"message {question_id} is not stored, so its answer cannot be")

    def _now(self) -> str:
        return iso_timestamp(self._clock.now())
