"""The Notion outbox's store, on SQLite and PostgreSQL: stored once per key, due in order,
progress and outcome kept across a restart, told notes pruned."""
from datetime import timedelta

from state.outbox import Outbox

CHAT = -1001234567890  # a supergroup: past 2^31
USER = 42


async def test_a_key_is_stored_once_and_the_second_add_returns_the_first_entry(state_db, clock):
    outbox = Outbox(state_db, clock)
    first, created = await outbox.add("note-1", CHAT, USER, {"title": "t", "body": "b"}, message_id=7)
    again, created_again = await outbox.add("note-1", CHAT, USER, {"title": "other"})

    assert (created, created_again) == (True, False)
    assert again == first
    assert (first.chat_id, first.message_id, first.payload, first.status) == (CHAT, 7, {"title": "t", "body": "b"}, "pending")
    assert await outbox.depth() == 1


async def test_a_retry_waits_its_delay_and_due_entries_come_oldest_first(state_db, clock):
    outbox = Outbox(state_db, clock)
    first, _ = await outbox.add("a", CHAT, USER, {"title": "a"})
    second, _ = await outbox.add("b", CHAT, USER, {"title": "b"})
    await outbox.schedule_retry(first.id, "Notion is down (503)", delay=30)

    assert [entry.key for entry in await outbox.due()] == ["b"]
    assert [entry.key for entry in await outbox.due(include_later=True)] == ["a", "b"]
    assert await outbox.next_due_at() == clock.now()
    await clock.advance(30)
    assert [entry.key for entry in await outbox.due()] == ["a", "b"]
    assert (await outbox.get(first.id)).last_error == "Notion is down (503)"


async def test_progress_and_outcome_survive_a_restart_and_told_entries_are_pruned(state_backend, state_db, clock):
    outbox = Outbox(state_db, clock)
    entry, _ = await outbox.add("note-1", CHAT, USER, {"title": "t"})
    await outbox.begin_attempt(entry.id)
    await outbox.record_page(entry.id, "page-1", "https://notion.so/page-1", blocks_done=100)
    failing, _ = await outbox.add("note-2", CHAT, USER, {"title": "u"})
    await outbox.mark_failed(failing.id, "validation_error")

    reopened = await state_backend.open(clock)
    try:
        after = Outbox(reopened, clock)
        resumed = await after.get(entry.id)
        assert (resumed.attempts, resumed.page_id, resumed.blocks_done) == (1, "page-1", 100)
        await after.record_progress(entry.id, 120)
        await after.mark_delivered(entry.id)
        assert [e.key for e in await after.untold()] == ["note-1", "note-2"]
        await after.mark_told(entry.id)
        assert await after.was_told(entry.id) and not await after.was_told(failing.id)
        assert [e.key for e in await after.untold()] == ["note-2"]
        await clock.advance(3600)
        assert await after.prune(keep=timedelta(minutes=30)) == 1
        assert await after.get(entry.id) is None and await after.get(failing.id) is not None
        assert await after.depth() == 0
    finally:
        await reopened.close()


async def test_an_entry_is_worked_on_by_one_instance_until_its_claim_is_given_up_or_expires(state_db, clock):
    a = Outbox(state_db, clock, instance="bot-a", hold_seconds=60)
    b = Outbox(state_db, clock, instance="bot-b", hold_seconds=60)
    entry, _ = await a.add("note-1", CHAT, USER, {"title": "t"})

    assert await a.claim(entry.id) and not await b.claim(entry.id)
    assert await a.claim(entry.id), "an instance keeps its own claim (and takes it again after a restart)"
    await a.release(entry.id)
    assert await b.claim(entry.id) and not await a.claim(entry.id)
    await b.release(entry.id)
    await a.claim(entry.id)
    await clock.advance(59)
    assert not await b.claim(entry.id)
    await clock.advance(2)  # bot-a stopped keeping it (died): it expires
    assert await b.claim(entry.id)
