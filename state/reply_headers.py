"""What each user message replies to, written down when it arrives (only replies get a row).

A reply's quote is put above it by its job (handlers/quoted.py). When the bot stops before that
job ran, the message is taken up after the restart with only its stored text; this table says
whether it was a reply, and to what, so that only replies are looked up, without asking Telegram
again. Messages stored before the table have a row with `reply_to` NULL: not known (Telegram is
asked, as before).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from state.database import Database
from state.history import StoredMessage


@dataclass(frozen=True)
class ReplyHeader:
    """Telegram's reply header as stored: the id replied to (None: not known) and the part quoted."""

    reply_to: int | None
    quote: str | None = None


class ReplyHeaders:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def note(self, stored: StoredMessage, reply_to: int, quote: str | None) -> None:
        """`stored` replies to message `reply_to` (quoting `quote`); noting it again changes nothing."""
        await self._db.execute(
            "INSERT INTO reply_headers (message_id, reply_to, quote) VALUES (?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
            (stored.id, reply_to, quote),
        )

    async def of(self, stored: StoredMessage) -> ReplyHeader | None:
        """What `stored` replies to; None when it replies to nothing."""
        return await self._header(stored.id)

    async def _header(self, message_id: int) -> ReplyHeader | None:
        row = await self._db.fetchone("SELECT reply_to, quote FROM reply_headers WHERE message_id = ?", (message_id,))
        return None if row is None else ReplyHeader(row["reply_to"], row["quote"])

    async def first_reply_among(self, message_ids: Sequence[int]) -> tuple[int, ReplyHeader] | None:
        """The first of `message_ids` (an album's messages, at most a few) known to reply to a
        message, with what it replies to; None when none does."""
        for message_id in sorted(message_ids):
            header = await self._header(message_id)
            if header is not None and header.reply_to is not None:
                return message_id, header
        return None

    async def quote_into(self, stored: StoredMessage, text: str) -> StoredMessage:
        """`stored`'s text becomes `text` (its words with the quote above them), its lifecycle and
        attempts as they are (a transcript or a document's text was already recorded)."""
        await self._db.execute(
            "UPDATE messages SET content = ? WHERE id = ? AND status IN ('pending', 'answering')", (text, stored.id)
        )
        return replace(stored, text=text)
