"""Every accepted message and the chat history, kept in SQLite so both survive restarts.

A chat has at most one open conversation; /reset ends it (its rows stay) and the next message
starts a new one. Each accepted message (a chat question, a command, a medium the bot cannot read)
has one lifecycle, kept in its row and changed only here:

    pending -> answering -> delivering -> answered
    (any of the first three) -> failed | undeliverable | expired

A message is stored before any reply starts. `begin` marks that answering began (counting the
attempts); `record_answer` stores the generated answer as 'delivering' before the user sees its
final text, so a crash after generation never pays for the answer twice; `mark_delivered` ends it.
The bot's messages that showed a reply are recorded as they are sent (`record_shown`), so a reply
resumed after a crash replaces them. Messages not finished (`pending`) are resumed at start.

A long conversation's older turns may be replaced, in what models are sent, by one summary
(`record_summary`, written by handlers/compaction.py); the turns themselves stay stored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Iterable, Literal, Sequence

from integrations.clock import Clock
from integrations.context_window import with_summary
from integrations.llm import ChatMessage
from state.database import Database, Row, Write
from state.db import iso_timestamp

# The "model" of an answer the bot wrote itself: a document's acknowledgement.
DOCUMENT_READER = "switchboard:document"

Status = Literal["pending", "answering", "delivering", "answered", "failed", "undeliverable", "expired"]
Kind = Literal["chat", "command", "media"]


_MESSAGE_COLUMNS = (
    "m.id, m.chat_id, m.user_id, m.telegram_message_id, m.content, m.status, m.created_at,"
    " m.kind, m.is_private, m.attempts, m.shown_ids, m.reply_text"
)

# The conversation of message :id as context, each answer after its question (an answer a /retry
# replaced is left out: the one that replaced it answers the same question). The index
# messages_in_context_order (migration 0006) holds exactly this order, so no sort is needed.
# Each row comes with its turn (its question's id). Turns up to :after are left out (a summary
# stands for them); answers count to questions before :answers_before (:id, or :id + 1 to take
# :id's own answer too).
CONTEXT_QUERY = (
    "SELECT COALESCE(in_reply_to, id) AS turn, role, content FROM messages"
    " WHERE conversation_id = (SELECT conversation_id FROM messages WHERE id = :id)"
    "   AND COALESCE(in_reply_to, id) > :after"
    "   AND ((role = 'user' AND kind = 'chat' AND (id = :id OR (id < :id AND status IN"
    "         ('answered', 'failed', 'delivering', 'undeliverable'))))"
    "        OR (role = 'assistant' AND in_reply_to < :answers_before AND replaced_by IS NULL))"
    " ORDER BY COALESCE(in_reply_to, id), id"
)

# The newest summary of message :id's conversation, made of turns before :id.
SUMMARY_QUERY = (
    "SELECT covers_through, content FROM conversation_summaries"
    " WHERE conversation_id = (SELECT conversation_id FROM messages WHERE id = :id) AND covers_through < :id"
    " ORDER BY covers_through DESC LIMIT 1"
)


# A message id never used in chat :chat, by the user or by the bot (whose ids are in shown_ids, a
# JSON array): each engine reads JSON its own way.
_NEXT_MESSAGE_ID = {
    "sqlite": "SELECT MAX(top) AS top FROM ("
    " SELECT MAX(telegram_message_id) AS top FROM messages WHERE chat_id = :chat"
    " UNION ALL SELECT MAX(CAST(j.value AS INTEGER)) FROM messages m, json_each(m.shown_ids) j"
    " WHERE m.chat_id = :chat)",
    "postgresql": "SELECT MAX(top) AS top FROM ("
    " SELECT MAX(telegram_message_id) AS top FROM messages WHERE chat_id = :chat"
    " UNION ALL SELECT MAX(j.value::BIGINT) FROM messages m, jsonb_array_elements_text(m.shown_ids::jsonb) j(value)"
    " WHERE m.chat_id = :chat) AS ids",
}


# Message :shown joins the bot's messages that show message :id's reply, unless it is there already:
# one statement, each engine appending to the JSON array its own way.
_RECORD_SHOWN = {
    "sqlite": "UPDATE messages SET shown_ids = json_insert(shown_ids, '$[#]', :shown)"
    " WHERE id = :id AND NOT EXISTS (SELECT 1 FROM json_each(messages.shown_ids) WHERE value = :shown)",
    "postgresql": "UPDATE messages SET shown_ids = (shown_ids::jsonb || jsonb_build_array(:shown::BIGINT))::TEXT"
    " WHERE id = :id AND NOT shown_ids::jsonb @> jsonb_build_array(:shown::BIGINT)",
}


@dataclass(frozen=True)
class Summary:
    """A conversation's older turns as one text, standing for every turn up to `covers_through`."""

    text: str
    covers_through: int


# One message of a conversation with its turn (the id of the question it belongs to).
TurnMessage = tuple[int, ChatMessage]


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
    kind: Kind = "chat"
    is_private: bool = True
    attempts: int = 0
    # The bot's messages that showed this message's reply so far.
    shown_ids: tuple[int, ...] = ()
    # The final reply as the user is to see it, once there is one (status 'delivering' and after).
    reply_text: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> StoredMessage:
        return cls(
            id=row["id"],
            chat_id=row["chat_id"],
            user_id=row["user_id"],
            telegram_message_id=row["telegram_message_id"],
            text=row["content"],
            status=row["status"],
            created_at=row["created_at"],
            kind=row["kind"],
            is_private=bool(row["is_private"]),
            attempts=row["attempts"],
            shown_ids=tuple(json.loads(row["shown_ids"])),
            reply_text=row["reply_text"],
        )


class HistoryStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def record_incoming(
        self,
        chat_id: int,
        user_id: int,
        telegram_message_id: int,
        text: str,
        *,
        kind: Kind = "chat",
        is_private: bool | None = None,
    ) -> StoredMessage | None:
        """Store a user message as pending; None if this message (chat and id) was stored before.

        Two statements, each atomic, and no transaction (this runs for every message): the
        chat's open conversation is made if there is none, then the message joins it unless the
        unique index on (chat_id, telegram_message_id) says it is stored already. A crash in
        between leaves an open conversation without messages, which the next message uses."""
        now = self._now()
        private = chat_id > 0 if is_private is None else is_private
        while True:
            await self._db.execute(
                "INSERT INTO conversations (chat_id, started_at) VALUES (?, ?)"
                " ON CONFLICT (chat_id) WHERE ended_at IS NULL DO NOTHING",
                (chat_id, now),
            )
            row = await self._db.fetchone(
                "INSERT INTO messages (conversation_id, chat_id, user_id, telegram_message_id, role, kind,"
                " content, status, created_at, is_private)"
                " SELECT id, ?, ?, ?, 'user', ?, ?, 'pending', ?, ? FROM conversations"
                " WHERE chat_id = ? AND ended_at IS NULL"
                " ON CONFLICT (chat_id, telegram_message_id) WHERE role = 'user' AND telegram_message_id IS NOT NULL"
                " DO NOTHING RETURNING id",
                (chat_id, user_id, telegram_message_id, kind, text, now, int(private), chat_id),
            )
            if row is not None:
                break
            if await self._db.fetchone(
                "SELECT 1 FROM messages WHERE chat_id = ? AND telegram_message_id = ? AND role = 'user'",
                (chat_id, telegram_message_id),
            ):
                return None
            # Neither stored nor a duplicate: a /reset ended the conversation in between.
        return StoredMessage(
            int(row["id"]), chat_id, user_id, telegram_message_id, text, "pending", now, kind=kind, is_private=private
        )

    async def begin(self, incoming: StoredMessage) -> int:
        """Answering begins (again): returns how many times it has begun, this time included."""
        row = await self._db.fetchone(
            "UPDATE messages SET status = 'answering', attempts = attempts + 1"
            " WHERE id = ? AND status IN ('pending', 'answering') RETURNING attempts",
            (incoming.id,),
        )
        if row is None:  # its answering has moved on (or ended): nothing begins
            row = await self._db.fetchone("SELECT attempts FROM messages WHERE id = ?", (incoming.id,))
        return int(row["attempts"]) if row else 0

    async def record_transcript(self, incoming: StoredMessage, text: str) -> StoredMessage:
        """A voice or audio message's transcript (or a reply's question with the text it quotes)
        becomes its text: from now on it is a chat message like a typed one (part of the context; answered after a restart without transcribing
        again). Its answer begins next, counting this attempt once, not twice."""
        await self._db.execute(
            "UPDATE messages SET content = ?, kind = 'chat', status = 'pending', attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
            " WHERE id = ? AND status IN ('pending', 'answering')",
            (text, incoming.id),
        )
        return replace(incoming, text=text, kind="chat", status="pending")

    async def record_document(
        self, incoming: StoredMessage, text: str, *, acknowledgement: str | None = None, shown: str | None = None
    ) -> StoredMessage:
        """A document's text (with its caption, if any) becomes the message's text, as a
        transcript does. Without a caption there is no question to answer: `acknowledgement`
        is then stored as the bot's answer, and `shown` (its Markdown for the user; by default
        the same) as the reply still to be shown ('delivering'), in the same transaction, so the
        next question has the document in its context and a restart delivers the
        acknowledgement without reading the file again."""
        if acknowledgement is None:
            return await self.record_transcript(incoming, text)
        reply_text = shown or acknowledgement
        await self._db.write_all([
            Write(
                "UPDATE messages SET content = ?, kind = 'chat', status = 'delivering', reply_text = ?"
                " WHERE id = ? AND status IN ('pending', 'answering')",
                (text, reply_text, incoming.id),
            ),
            _answer_write(incoming.id, incoming.chat_id, acknowledgement, DOCUMENT_READER, self._now()),
        ])
        return replace(incoming, text=text, kind="chat", status="delivering", reply_text=reply_text)

    async def record_shown(self, stored_id: int, message_ids: Iterable[int]) -> None:
        """The bot's messages that show this message's reply (added to those recorded before):
        one statement each, no read (a reply records its messages one by one as it sends them)."""
        for message_id in message_ids:
            await self._db.execute(_RECORD_SHOWN[self._db.dialect], {"id": stored_id, "shown": message_id})

    async def mark_delivered(self, incoming: StoredMessage) -> None:
        """The user has seen the final reply: never answered again."""
        await self._finish(incoming, "answered", None)

    async def mark_undeliverable(self, incoming: StoredMessage, reason: str) -> None:
        """The reply cannot reach the chat (the bot was blocked or removed): not tried again."""
        await self._finish(incoming, "undeliverable", reason)

    async def mark_expired(self, incoming: StoredMessage, reason: str) -> None:
        """Too old to answer when the bot came back; the user was told so (or it was logged)."""
        await self._finish(incoming, "expired", reason)

    async def next_message_id(self, chat_id: int) -> int:
        """A message id never used in this chat, by the user or by the bot (for transports that
        number messages themselves, like the console)."""
        row = await self._db.fetchone(_NEXT_MESSAGE_ID[self._db.dialect], {"chat": chat_id})
        return int(row["top"] or 0) + 1 if row else 1

    async def context_for(self, incoming: StoredMessage) -> list[ChatMessage]:
        """The conversation up to and including `incoming`, oldest first, each answer after its question.

        Earlier user messages count once they were answered or failed; messages still pending
        (or newer than `incoming`) belong to other turns. A summary of older turns stands in
        for them, opening the context.
        """
        summary, turns = await self.conversation_so_far(incoming)
        return with_summary(summary.text if summary else None, [message for _, message in turns])

    async def conversation_so_far(
        self, incoming: StoredMessage, *, with_its_answer: bool = False
    ) -> tuple[Summary | None, list[TurnMessage]]:
        """The newest summary before `incoming`, and the turns after it up to `incoming` (and its
        stored answer, `with_its_answer`)."""
        row = await self._db.fetchone(SUMMARY_QUERY, {"id": incoming.id})
        summary = Summary(row["content"], row["covers_through"]) if row else None
        rows = await self._db.fetchall(
            CONTEXT_QUERY,
            {
                "id": incoming.id,
                "after": summary.covers_through if summary else 0,
                "answers_before": incoming.id + int(with_its_answer),
            },
        )
        return summary, [(turn, ChatMessage(role, content)) for turn, role, content in rows]

    async def record_summary(self, incoming: StoredMessage, summary: Summary, model: str) -> None:
        """From now on `summary` stands for the turns it covers of `incoming`'s conversation."""
        await self._db.execute(
            "INSERT INTO conversation_summaries (conversation_id, covers_through, content, model, created_at)"
            " SELECT conversation_id, ?, ?, ?, ? FROM messages WHERE id = ?",
            (summary.covers_through, summary.text, model, self._now(), incoming.id),
        )

    async def idle_before(self, incoming: StoredMessage) -> float | None:
        """Seconds from the last chat turn of `incoming`'s conversation before it (a question or an
        answer; commands do not count) to `incoming`; None if there was none."""
        row = await self._db.fetchone(
            "SELECT MAX(created_at) AS last FROM messages"
            " WHERE conversation_id = (SELECT conversation_id FROM messages WHERE id = :id)"
            "   AND id < :id AND (role = 'assistant' OR kind = 'chat')",
            {"id": incoming.id},
        )
        if row is None or row["last"] is None:
            return None
        return (datetime.fromisoformat(incoming.created_at) - datetime.fromisoformat(row["last"])).total_seconds()

    async def start_afresh(self, incoming: StoredMessage) -> bool:
        """End `incoming`'s conversation before it, as /reset does, and move `incoming` (with any
        message after it) into a new one. False if that conversation had already ended."""
        async with self._db.transaction():
            row = await self._db.fetchone(
                "SELECT c.id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.id = ? AND c.ended_at IS NULL",
                (incoming.id,),
            )
            if row is None:
                return False
            await self.reset(incoming.chat_id)
            fresh = await self._open_conversation(incoming.chat_id, self._now())
            await self._db.execute(
                "UPDATE messages SET conversation_id = ? WHERE conversation_id = ? AND id >= ?",
                (fresh, row["id"], incoming.id),
            )
        return True

    async def record_answer(
        self,
        incoming: StoredMessage,
        text: str,
        model: str,
        *,
        reply_text: str | None = None,
        answers: StoredMessage | None = None,
        also: Sequence[Write] = (),
    ) -> None:
        """Store the bot's answer (`text`, as the conversation keeps it) and move `incoming` on,
        both or neither: to 'answered', or, given the `reply_text` the user is still to see, to
        'delivering' (then `mark_delivered`).

        `answers`: the earlier question `incoming` (a /retry) answers again. Its answer so far is
        marked replaced by `incoming`, and leaves the context, in the same transaction.
        `also`: more writes for the same transaction (what the answer cost). The user waits for
        this before seeing the final text, so it is written in one go (`write_all`)."""
        writes = list(also)
        question = incoming
        if answers is not None and answers.id != incoming.id:
            question = answers
            writes.append(Write(
                "UPDATE messages SET replaced_by = ? WHERE role = 'assistant' AND in_reply_to = ? AND replaced_by IS NULL",
                (incoming.id, question.id),
            ))
        writes.append(_answer_write(question.id, incoming.chat_id, text, model, self._now()))
        writes.append(Write(
            "UPDATE messages SET status = ?, reply_text = ? WHERE id = ?",
            ("answered" if reply_text is None else "delivering", reply_text, incoming.id),
        ))
        await self._db.write_all(writes)

    async def mark_failed(self, incoming: StoredMessage, reason: str | None = None) -> None:
        """The user was told it failed: keep it in context, but do not retry it after a restart."""
        await self._finish(incoming, "failed", reason)

    async def _finish(self, incoming: StoredMessage, status: Status, reason: str | None) -> None:
        await self._db.execute(
            "UPDATE messages SET status = ?, outcome = COALESCE(?, outcome) WHERE id = ?"
            " AND status IN ('pending', 'answering', 'delivering')",
            (status, reason, incoming.id),
        )

    async def record_exchange(
        self, chat_id: int, user_id: int, question: str, answer: str, model: str
    ) -> None:
        """Store a question already answered elsewhere (e.g. /search), so follow-ups see it."""
        async with self._db.transaction():
            now = self._now()
            conversation_id = await self._open_conversation(chat_id, now)
            question_id = await self._insert_id(
                "INSERT INTO messages (conversation_id, chat_id, user_id, role, content, status,"
                " created_at) VALUES (?, ?, ?, 'user', ?, 'answered', ?) RETURNING id",
                (conversation_id, chat_id, user_id, question, now),
            )
            await self._db.write_all([_answer_write(question_id, chat_id, answer, model, now)])

    async def pending(self, chat_id: int | None = None) -> list[StoredMessage]:
        """Messages whose lifecycle has not ended (e.g. cut off by a crash), oldest first; only
        those of `chat_id` when given (an instance answering that chat, state/chat_claims.py)."""
        in_chat = "" if chat_id is None else " AND m.chat_id = :chat"
        rows = await self._db.fetchall(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m"
            f" WHERE m.status IN ('pending', 'answering', 'delivering'){in_chat} ORDER BY m.id",
            {"chat": chat_id} if chat_id is not None else (),
        )
        return [StoredMessage.from_row(row) for row in rows]

    async def reset(self, chat_id: int) -> None:
        """End the chat's conversation; its rows stay, the next message starts a new one."""
        await self._db.execute(
            "UPDATE conversations SET ended_at = ? WHERE chat_id = ? AND ended_at IS NULL",
            (self._now(), chat_id),
        )

    async def last_answer(self, chat_id: int, *, before: int | None = None) -> str | None:
        """The newest answer in the chat's open conversation (to a message older than `before`)."""
        row = await self._db.fetchone(
            "SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            " WHERE c.chat_id = ? AND c.ended_at IS NULL AND m.role = 'assistant' AND m.in_reply_to < ?"
            " AND m.replaced_by IS NULL"
            " ORDER BY m.id DESC LIMIT 1",
            (chat_id, before if before is not None else 2**62),
        )
        return None if row is None else row["content"]

    async def last_question(self, incoming: StoredMessage) -> StoredMessage | None:
        """The newest chat question before `incoming` in its conversation whose answering has
        ended (what a /retry answers again), or None."""
        row = await self._db.fetchone(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m"
            " WHERE m.conversation_id = (SELECT conversation_id FROM messages WHERE id = :id)"
            "   AND m.role = 'user' AND m.kind = 'chat' AND m.id < :id"
            "   AND m.status IN ('answered', 'failed', 'delivering', 'undeliverable')"
            " ORDER BY m.id DESC LIMIT 1",
            {"id": incoming.id},
        )
        return None if row is None else StoredMessage.from_row(row)

    async def last_model(self, chat_id: int) -> str | None:
        """The model of the chat's newest answer (provider:model), if any."""
        row = await self._db.fetchone(
            "SELECT model FROM messages WHERE chat_id = ? AND role = 'assistant' ORDER BY id DESC LIMIT 1",
            (chat_id,),
        )
        return None if row is None else row["model"]

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
        return await self._insert_id(
            "INSERT INTO conversations (chat_id, started_at) VALUES (?, ?) RETURNING id", (chat_id, now)
        )

    async def _insert_id(self, insert_returning_id: str, params: tuple[object, ...]) -> int:
        """Run `insert_returning_id` (one row, `... RETURNING id`) and return the new row's id."""
        row = await self._db.fetchone(insert_returning_id, params)
        assert row is not None
        return int(row["id"])

    def _now(self) -> str:
        return iso_timestamp(self._clock.now())


def _answer_write(question_id: int, chat_id: int, text: str, model: str, now: str) -> Write:
    """The bot's answer to stored message `question_id`, which must exist."""
    return Write(
        "INSERT INTO messages (conversation_id, chat_id, role, content, status, model, in_reply_to, created_at)"
        " SELECT conversation_id, ?, 'assistant', ?, 'answered', ?, id, ? FROM messages WHERE id = ?",
        (chat_id, text, model, now, question_id),
        missing=f"message {question_id} is not stored, so its answer cannot be",
    )
