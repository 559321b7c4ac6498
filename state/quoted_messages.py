"""Earlier messages of a chat looked up by their Telegram id, for a reply that quotes one.

A user's message is found by its own id; the bot's messages are the ids recorded as showing a
user message's reply (`shown_ids`), and stand for that reply's answer as the conversation keeps it.
Read-only; plain SQL that every engine runs (the JSON of `shown_ids` is read here, not in SQL):
only the newest RECENT_REPLIES replies of the chat are searched, since people reply to recent ones.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from state.database import Database

# How many of a chat's newest replies are searched for a bot message id.
RECENT_REPLIES = 500


@dataclass(frozen=True)
class StoredText:
    text: str
    from_bot: bool
    # The user who sent it, or whose message the bot's one answered.
    user_id: int | None


class StoredMessages:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def by_telegram_id(self, chat_id: int, telegram_id: int) -> StoredText | None:
        """The stored text of message `telegram_id` in the chat (the user's, or the bot's answer it
        showed), or None when the bot has no record of it."""
        row = await self._db.fetchone(
            "SELECT content, user_id FROM messages WHERE chat_id = ? AND telegram_message_id = ? AND role = 'user'",
            (chat_id, telegram_id),
        )
        if row is not None:
            return StoredText(row["content"], False, row["user_id"])
        rows = await self._db.fetchall(
            "SELECT id, user_id, shown_ids, reply_text FROM messages"
            " WHERE chat_id = ? AND role = 'user' AND shown_ids <> '[]' ORDER BY id DESC LIMIT ?",
            (chat_id, RECENT_REPLIES),
        )
        for row in rows:
            if telegram_id in json.loads(row["shown_ids"]):
                return StoredText(await self._answer(row["id"]) or row["reply_text"] or "", True, row["user_id"])
        return None

    async def _answer(self, question_id: int) -> str | None:
        row = await self._db.fetchone(
            "SELECT content FROM messages WHERE role = 'assistant' AND in_reply_to = ? AND replaced_by IS NULL"
            " ORDER BY id DESC LIMIT 1",
            (question_id,),
        )
        return None if row is None else row["content"]
