"""A reply's quote and a document's acknowledgement in the state, on each engine: earlier messages
found by their Telegram id (the user's own, and the bot's that showed an answer), and a document
stored with the bot's acknowledgement as its answer."""
from __future__ import annotations

import pytest

from integrations.llm import ChatMessage
from state.history import HistoryStore
from state.quoted_messages import StoredMessages, StoredText

CHAT, USER = 77, 5


@pytest.fixture
def history(state_db, clock) -> HistoryStore:
    return HistoryStore(state_db, clock)


async def test_a_users_message_and_the_bots_answer_are_found_by_their_telegram_ids(state_db, history):
    question = await history.record_incoming(CHAT, USER, 10, "Which cities matter?")
    await history.record_shown(question.id, [11, 12])  # a long answer, in two messages
    await history.record_answer(question, "Paris. Lyon.", "m", reply_text="Paris. Lyon.\n\n_— answered by m_")
    retried = await history.record_incoming(CHAT, USER, 13, "/retry")
    await history.record_answer(retried, "Paris, then Lyon.", "m", answers=question)
    stored = StoredMessages(state_db)

    assert await stored.by_telegram_id(CHAT, 10) == StoredText("Which cities matter?", False, USER)
    # The answer as the conversation keeps it now (a /retry replaced the first one), not the footer.
    assert await stored.by_telegram_id(CHAT, 12) == StoredText("Paris, then Lyon.", True, USER)
    assert await stored.by_telegram_id(CHAT, 99) is None
    assert await stored.by_telegram_id(CHAT + 1, 10) is None


async def test_a_document_stored_with_its_acknowledgement_is_the_context_of_the_next_question(history):
    document = await history.record_incoming(CHAT, USER, 20, "[file]", kind="media")
    acknowledged = await history.record_document(document, '[Document "a.txt"]\nhi', acknowledgement="Got it: a.txt")
    assert (acknowledged.status, acknowledged.kind, acknowledged.reply_text) == ("delivering", "chat", "Got it: a.txt")
    [pending] = await history.pending()
    assert (pending.status, pending.reply_text) == ("delivering", "Got it: a.txt")  # a restart delivers it
    await history.mark_delivered(acknowledged)

    question = await history.record_incoming(CHAT, USER, 21, "What does it say?")
    assert await history.context_for(question) == [
        ChatMessage("user", '[Document "a.txt"]\nhi'),
        ChatMessage("assistant", "Got it: a.txt"),
        ChatMessage("user", "What does it say?"),
    ]
