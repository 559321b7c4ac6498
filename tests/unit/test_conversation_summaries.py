"""A summary standing in for a conversation's older turns, and a conversation started afresh after idling."""
import pytest

from handlers.idle_reset import describe_idle
from integrations.context_window import SUMMARY_CLOSING, SUMMARY_OPENING, with_summary
from integrations.llm import ChatMessage
from state.history import HistoryStore, StoredMessage, Summary

CHAT, USER = 100, 42


@pytest.fixture
def history(state_db, clock) -> HistoryStore:
    """On SQLite and on PostgreSQL."""
    return HistoryStore(state_db, clock)


async def turn(history: HistoryStore, telegram_id: int, text: str) -> StoredMessage:
    stored = await history.record_incoming(CHAT, USER, telegram_id, text)
    assert stored is not None
    await history.record_answer(stored, f"answer to {text}", "test:model")
    return stored


async def test_a_summary_stands_in_for_the_turns_it_covers_and_opens_the_first_turn_kept(history):
    first, second, third = [await turn(history, n, f"q{n}") for n in (1, 2, 3)]
    await history.record_summary(third, Summary("They asked q1 and q2.", covers_through=second.id), "test:cheap")
    fourth = await history.record_incoming(CHAT, USER, 4, "q4")
    assert fourth is not None

    context = await history.context_for(fourth)

    assert [m.content for m in context] == [
        f"{SUMMARY_OPENING}\nThey asked q1 and q2.\n{SUMMARY_CLOSING}\n\nq3", "answer to q3", "q4",
    ]
    summary, turns = await history.conversation_so_far(fourth)
    assert summary == Summary("They asked q1 and q2.", second.id)
    assert [t for t, _ in turns] == [third.id, third.id, fourth.id]


async def test_a_message_older_than_a_summary_is_answered_from_its_own_turns(history):
    first, second = [await turn(history, n, f"q{n}") for n in (1, 2)]
    await history.record_summary(second, Summary("Everything up to q2.", covers_through=second.id), "test:cheap")
    assert [m.content for m in await history.context_for(second)] == ["q1", "answer to q1", "q2"]


async def test_the_turns_so_far_can_include_the_answer_just_given(history):
    stored = await turn(history, 1, "q1")
    _, without = await history.conversation_so_far(stored)
    _, with_answer = await history.conversation_so_far(stored, with_its_answer=True)
    assert [m.content for _, m in without] == ["q1"]
    assert [m.content for _, m in with_answer] == ["q1", "answer to q1"]


def test_a_summary_before_an_answer_gets_a_user_turn_of_its_own():
    messages = with_summary("S", [ChatMessage("assistant", "a"), ChatMessage("user", "q")])
    assert [(m.role, m.content) for m in messages] == [
        ("user", f"{SUMMARY_OPENING}\nS\n{SUMMARY_CLOSING}"), ("assistant", "a"), ("user", "q"),
    ]
    assert with_summary(None, [ChatMessage("user", "q")]) == [ChatMessage("user", "q")]


async def test_idle_time_counts_from_the_last_question_or_answer_not_from_commands(history, clock):
    await turn(history, 1, "q1")
    await clock.advance(3600)
    command = await history.record_incoming(CHAT, USER, 2, "/model", kind="command")
    assert command is not None
    await clock.advance(60)
    question = await history.record_incoming(CHAT, USER, 3, "q2")
    assert question is not None
    assert await history.idle_before(question) == 3660


async def test_starting_afresh_ends_the_conversation_and_takes_the_message_and_those_after_it_along(history, clock):
    await turn(history, 1, "q1")
    await clock.advance(7 * 3600)
    late = await history.record_incoming(CHAT, USER, 2, "q2")
    queued = await history.record_incoming(CHAT, USER, 3, "q3")
    assert late is not None and queued is not None

    assert await history.start_afresh(late)

    assert await history.idle_before(late) is None
    assert [m.content for m in await history.context_for(late)] == ["q2"]
    await history.record_answer(late, "a2", "test:model")
    assert [m.content for m in await history.context_for(queued)] == ["q2", "a2", "q3"]
    assert await history.conversation_count(CHAT) == 2


async def test_starting_afresh_leaves_a_conversation_already_ended_alone(history):
    stored = await turn(history, 1, "q1")
    await history.reset(CHAT)
    assert not await history.start_afresh(stored)
    assert await history.conversation_count(CHAT) == 1


@pytest.mark.parametrize(
    ("seconds", "said"), [(5, "5 s"), (89, "89 s"), (2700, "45 min"), (7 * 3600 + 1000, "7 h"), (47 * 3600, "47 h"), (3 * 86400, "3 days")]
)
def test_idle_time_is_said_in_the_unit_that_reads_well(seconds, said):
    assert describe_idle(seconds) == said
