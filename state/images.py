"""Which stored messages carry an image, their albums, and the question each image was asked with.

Only where Telegram keeps the image is stored (the chat and message id), never its bytes: it is
downloaded again when a question is asked again after a restart. A photo message is stored like
any medium (history.record_incoming, kind 'media'), then noted here (`note`). An album arrives as
one message per photo; once it is complete, `settle` makes one of them the question (kind 'chat',
its text the placeholder and caption) and ends the others as answered with it, in one
transaction: a restart before it finds every photo still pending, a restart after it finds one
question to answer, never two.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from state.database import Database, Row
from state.history import StoredMessage


@dataclass(frozen=True)
class StoredImage:
    """One image-carrying message: where Telegram keeps it, its album, its size by Telegram's word."""

    message_id: int  # the stored message's id
    chat_id: int
    telegram_message_id: int
    album: int | None
    size: int | None
    caption: str = ""


class ImageStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def note(self, stored: StoredMessage, *, album: int | None, size: int | None) -> None:
        """`stored` carries an image (of `album`, if any); noting it again changes nothing."""
        await self._db.execute(
            "INSERT INTO message_images (message_id, chat_id, telegram_message_id, album, size)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
            (stored.id, stored.chat_id, stored.telegram_message_id or 0, album, size),
        )

    async def find(self, stored: StoredMessage) -> StoredImage | None:
        row = await self._db.fetchone(
            "SELECT i.*, m.content FROM message_images i JOIN messages m ON m.id = i.message_id WHERE i.message_id = ?",
            (stored.id,),
        )
        return None if row is None else _image(row)

    async def unsettled_album(self, image: StoredImage) -> list[StoredImage]:
        """The images of `image`'s album not yet asked about (just `image` outside an album), in
        the order the user sent them."""
        if image.album is None:
            return [image]
        rows = await self._db.fetchall(
            "SELECT i.*, m.content FROM message_images i JOIN messages m ON m.id = i.message_id"
            " WHERE i.chat_id = ? AND i.album = ? AND i.question_id IS NULL"
            "   AND m.status IN ('pending', 'answering')"
            " ORDER BY i.telegram_message_id",
            (image.chat_id, image.album),
        )
        return [_image(row) for row in rows]

    async def settle(self, question: StoredMessage, images: Sequence[StoredImage], text: str) -> StoredMessage:
        """`question` becomes a chat question with `text`, asked about `images`; the other messages
        of `images` end as answered with it. Its answer begins next (this attempt counted once, as
        history.record_transcript does)."""
        others = [image.message_id for image in images if image.message_id != question.id]
        async with self._db.transaction():
            await self._db.execute(
                "UPDATE messages SET content = ?, kind = 'chat', status = 'pending',"
                " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
                " WHERE id = ? AND status IN ('pending', 'answering')",
                (text, question.id),
            )
            for message_id in [question.id, *others]:
                await self._db.execute(
                    "UPDATE message_images SET question_id = ? WHERE message_id = ?", (question.id, message_id)
                )
            for message_id in others:
                await self._db.execute(
                    "UPDATE messages SET status = 'answered', outcome = ? WHERE id = ?"
                    " AND status IN ('pending', 'answering')",
                    (f"asked with message {question.id}, in one question", message_id),
                )
        return StoredMessage(
            question.id, question.chat_id, question.user_id, question.telegram_message_id, text, "pending",
            question.created_at, kind="chat", is_private=question.is_private, attempts=max(question.attempts - 1, 0),
            shown_ids=question.shown_ids,
        )

    async def end_unsettled(self, images: Sequence[StoredImage], keep: StoredMessage, reason: str) -> None:
        """The messages of `images` other than `keep` end as failed (the user was told why, in a
        reply to `keep`)."""
        for image in images:
            if image.message_id != keep.id:
                await self._db.execute(
                    "UPDATE messages SET status = 'failed', outcome = ? WHERE id = ?"
                    " AND status IN ('pending', 'answering')",
                    (reason[:200], image.message_id),
                )

    async def asked_with(self, question_id: int) -> list[StoredImage]:
        """The images the question `question_id` was asked with, in the order the user sent them."""
        rows = await self._db.fetchall(
            "SELECT i.*, m.content FROM message_images i JOIN messages m ON m.id = i.message_id"
            " WHERE i.question_id = ? ORDER BY i.telegram_message_id",
            (question_id,),
        )
        return [_image(row) for row in rows]


def _image(row: Row) -> StoredImage:
    _, _, caption = row["content"].partition("\n")
    return StoredImage(
        row["message_id"], row["chat_id"], row["telegram_message_id"], row["album"], row["size"], caption.strip()
    )
