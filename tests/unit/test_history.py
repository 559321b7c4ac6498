import pytest

from integrations.clock import ManualClock
from integrations.llm import ChatMessage
from state.database import Write
from state.history import HistoryStore, StoredMessage

CHAT = 100
OTHER_CHAT = 200
USER = 42


def user(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def bot(text: str) -> ChatMessage:
    return ChatMessage("assistant", text)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def db(state_backend, clock):
    database = await state_backend.open(clock)
    yield database
    await database.close()


@pytest.fixture
def history(db, clock) -> HistoryStore:
    return HistoryStore(db, clock)


async def ask(history: HistoryStore, telegram_id: int, text: str, chat: int = CHAT) -> StoredMessage:
    stored = await history.record_incoming(chat, USER, telegram_id, text)
    assert stored is not None
    return stored


async def test_incoming_message_is_stored_pending_with_the_clock_time(history, clock):
    await clock.advance(90)
    stored = await history.record_incoming(CHAT, USER, 5, "hello")

    assert stored is not None
    assert (stored.chat_id, stored.user_id, stored.telegram_message_id, stored.text) == (CHAT, USER, 5, "hello")
    assert stored.status == "pending"
    assert stored.created_at == "2026-11-26T12:01:30.000+00:00"
    assert await history.pending() == [stored]


async def test_redelivered_update_is_not_stored_twice(history):
    await ask(history, 5, "hello")

    assert await history.record_incoming(CHAT, USER, 5, "hello") is None
    assert len(await history.pending()) == 1


async def test_a_message_redelivered_after_a_reset_is_still_not_stored_twice(history):
    first = await ask(history, 5, "hello")
    await history.record_answer(first, "hi", "m")
    await history.reset(CHAT)

    assert await history.record_incoming(CHAT, USER, 5, "hello") is None
    after = await ask(history, 6, "a new start")
    assert await history.context_for(after) == [user("a new start")]


async def test_the_answer_and_what_it_cost_are_stored_together_or_not_at_all(history, db):
    question = await ask(history, 5, "hello")
    cost = Write("INSERT INTO usage_daily (day, user_id, model, requests) VALUES ('2026-11-26', 1, 'm', 1)")
    fails = Write("INSERT INTO usage_daily (day, user_id, model, requests) VALUES ('2026-11-26', 1, 'm', 1)")

    with pytest.raises(Exception, match="(?i)unique"):  # the second write breaks the table's key
        await history.record_answer(question, "hi", "m", reply_text="hi", also=[cost, fails])
    assert await db.fetchall("SELECT * FROM usage_daily") == []
    assert [m.status for m in await history.pending()] == ["pending"]
    assert await history.context_for(question) == [user("hello")]


async def test_same_telegram_message_id_in_another_chat_is_a_new_message(history):
    await ask(history, 5, "hello")

    assert await history.record_incoming(OTHER_CHAT, USER, 5, "hello") is not None


async def test_redelivery_after_the_answer_is_still_recognised(history):
    first = await ask(history, 5, "hello")
    await history.record_answer(first, "hi", "m")

    assert await history.record_incoming(CHAT, USER, 5, "hello") is None
    assert await history.pending() == []


async def test_context_is_the_conversation_so_far_ending_with_the_new_message(history):
    first = await ask(history, 1, "what is 2+2?")
    await history.record_answer(first, "4", "openai:gpt-5")
    second = await ask(history, 2, "and doubled?")

    assert await history.context_for(second) == [user("what is 2+2?"), bot("4"), user("and doubled?")]


async def test_history_survives_a_restart(state_backend, clock):
    db = await state_backend.open(clock)
    history = HistoryStore(db, clock)
    first = await ask(history, 1, "remember 7")
    await history.record_answer(first, "ok, 7", "m")
    await db.close()

    db = await state_backend.open(clock)
    try:
        history = HistoryStore(db, clock)
        second = await ask(history, 2, "what number?")
        assert await history.context_for(second) == [user("remember 7"), bot("ok, 7"), user("what number?")]
        assert await history.last_answer(CHAT) == "ok, 7"
    finally:
        await db.close()


async def test_messages_left_pending_by_a_crash_are_found_after_restart(state_backend, clock):
    crashed = await state_backend.open(clock)
    try:
        before = HistoryStore(crashed, clock)
        answered = await ask(before, 1, "answered before the crash")
        await before.record_answer(answered, "done", "m")
        failed = await ask(before, 2, "failed before the crash")
        await before.mark_failed(failed)
        cut_off = await ask(before, 3, "cut off by the crash")
        other_chat = await ask(before, 4, "also cut off", chat=OTHER_CHAT)

        # The crashed process never closed its connection; a new one must see what it committed.
        restarted = await state_backend.open(clock)
        try:
            after = HistoryStore(restarted, clock)
            assert await after.pending() == [cut_off, other_chat]
            await after.record_answer(cut_off, "late answer", "m")
            assert await after.pending() == [other_chat]
        finally:
            await restarted.close()
    finally:
        await crashed.close()


async def test_context_leaves_out_later_and_still_pending_messages(history):
    first = await ask(history, 1, "one")
    second = await ask(history, 2, "two")
    third = await ask(history, 3, "three")

    assert await history.context_for(first) == [user("one")]
    assert await history.context_for(second) == [user("two")]

    await history.record_answer(first, "answer one", "m")
    assert await history.context_for(third) == [user("one"), bot("answer one"), user("three")]


async def test_answers_written_out_of_order_stay_after_their_questions(history):
    first = await ask(history, 1, "one")
    second = await ask(history, 2, "two")
    await history.record_answer(second, "answer two", "m")
    await history.record_answer(first, "answer one", "m")
    third = await ask(history, 3, "three")

    assert await history.context_for(third) == [
        user("one"), bot("answer one"), user("two"), bot("answer two"), user("three"),
    ]


async def test_failed_message_stays_in_context_but_is_not_retried(history):
    first = await ask(history, 1, "this one failed")
    await history.mark_failed(first)
    second = await ask(history, 2, "try again")

    assert await history.pending() == [second]
    assert await history.context_for(second) == [user("this one failed"), user("try again")]


async def test_marking_an_answered_message_failed_does_not_undo_the_answer(history):
    first = await ask(history, 1, "q")
    await history.record_answer(first, "a", "m")
    await history.mark_failed(first)
    second = await ask(history, 2, "next")

    assert await history.context_for(second) == [user("q"), bot("a"), user("next")]


async def test_context_never_mixes_chats(history):
    mine = await ask(history, 1, "mine")
    await history.record_answer(mine, "for you", "m")
    theirs = await ask(history, 1, "theirs", chat=OTHER_CHAT)

    assert await history.context_for(theirs) == [user("theirs")]


async def test_reset_starts_a_fresh_conversation_and_keeps_the_old_one(history, db):
    before = await ask(history, 1, "old topic")
    await history.record_answer(before, "old answer", "m")
    assert await history.conversation_count(CHAT) == 1

    await history.reset(CHAT)
    assert await history.last_answer(CHAT) is None
    after = await ask(history, 2, "new topic")

    assert await history.context_for(after) == [user("new topic")]
    assert await history.conversation_count(CHAT) == 2
    assert await history.context_for(before) == [user("old topic")]
    kept = await db.fetchall("SELECT content FROM messages WHERE chat_id = ? ORDER BY id", (CHAT,))
    assert [row["content"] for row in kept] == ["old topic", "old answer", "new topic"]
    ended = await db.fetchall("SELECT ended_at FROM conversations WHERE chat_id = ? ORDER BY id", (CHAT,))
    assert ended[0]["ended_at"] is not None and ended[1]["ended_at"] is None


async def test_reset_of_a_chat_without_history_changes_nothing(history):
    await history.reset(CHAT)
    assert await history.conversation_count(CHAT) == 0


async def test_pending_message_from_before_a_reset_is_answered_in_its_own_conversation(history):
    old = await ask(history, 1, "old question")
    await history.reset(CHAT)
    new = await ask(history, 2, "new question")
    await history.record_answer(old, "old answer", "m")

    assert await history.context_for(new) == [user("new question")]
    assert await history.last_answer(CHAT) is None


async def test_last_answer_is_the_newest_in_the_open_conversation(history):
    first = await ask(history, 1, "q1")
    await history.record_answer(first, "a1", "m")
    second = await ask(history, 2, "q2")
    await history.record_answer(second, "a2", "m")

    assert await history.last_answer(CHAT) == "a2"
    assert await history.last_answer(OTHER_CHAT) is None


async def test_recorded_exchange_is_context_for_a_follow_up(history):
    await history.record_exchange(CHAT, USER, "search: tallest tree", "Hyperion, 116 m", "perplexity:sonar")
    follow_up = await ask(history, 9, "where is it?")

    assert await history.pending() == [follow_up]
    assert await history.last_answer(CHAT) == "Hyperion, 116 m"
    assert await history.context_for(follow_up) == [
        user("search: tallest tree"), bot("Hyperion, 116 m"), user("where is it?"),
    ]


async def test_answer_stores_its_model_and_time(history, db, clock):
    question = await ask(history, 1, "q")
    await clock.advance(3)
    await history.record_answer(question, "a", "anthropic:claude-sonnet-4-6")

    row = await db.fetchone("SELECT model, created_at FROM messages WHERE role = 'assistant'")
    assert row["model"] == "anthropic:claude-sonnet-4-6"
    assert row["created_at"] == "2026-11-26T12:00:03.000+00:00"


async def test_answer_to_an_unknown_message_stores_nothing(history, db):
    ghost = StoredMessage(999, CHAT, USER, 1, "never stored", "pending", "2026-11-26T12:00:00.000+00:00")

    with pytest.raises(LookupError):
        await history.record_answer(ghost, "a", "m")
    assert await db.fetchall("SELECT id FROM messages") == []


async def test_the_next_message_id_is_past_both_the_users_and_the_bots_messages(history):
    assert await history.next_message_id(CHAT) == 1
    stored = await ask(history, 3, "hello")
    assert await history.next_message_id(CHAT) == 4
    await history.record_shown(stored.id, [4, 9])
    await history.record_shown(stored.id, [5])
    assert await history.next_message_id(CHAT) == 10
    assert await history.next_message_id(OTHER_CHAT) == 1
