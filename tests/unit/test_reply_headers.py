"""What a message replies to, written down when it arrives, on SQLite and PostgreSQL."""
from state.history import HistoryStore
from state.reply_headers import ReplyHeader, ReplyHeaders

GROUP = -1001234567890  # past 2^31, as Telegram's supergroup ids are


async def test_only_replies_have_a_header_and_a_quote_changes_only_the_text(state_db, clock):
    history = HistoryStore(state_db, clock)
    headers = ReplyHeaders(state_db)
    plain = await history.record_incoming(GROUP, 42, 10, "hello")
    reply = await history.record_incoming(GROUP, 42, 11, "why?")
    await headers.note(reply, 3_000_000_001, "the part quoted")
    await headers.note(reply, 5, None)  # noted again (a redelivery): unchanged

    assert await headers.of(plain) is None
    assert await headers.of(reply) == ReplyHeader(3_000_000_001, "the part quoted")
    attempts = await history.begin(reply)
    quoted = await headers.quote_into(reply, "[Replying to …]\n> the part quoted\n\nwhy?")
    assert quoted.text.endswith("why?")
    [pending] = [m for m in await history.pending() if m.id == reply.id]
    assert pending.text == quoted.text and pending.attempts == attempts


async def test_the_first_reply_among_an_albums_messages_is_found(state_db, clock):
    history = HistoryStore(state_db, clock)
    headers = ReplyHeaders(state_db)
    first, second, third = [await history.record_incoming(GROUP, 42, i, "[photo]") for i in (20, 21, 22)]
    unknown = await history.record_incoming(GROUP, 42, 23, "[photo]")
    await headers.note(third, 3_000_000_002, None)
    await headers.note(second, 3_000_000_001, "a part")
    await state_db.execute("INSERT INTO reply_headers (message_id, reply_to) VALUES (?, NULL)", (unknown.id,))

    assert await headers.first_reply_among([first.id, second.id, third.id]) == (second.id, ReplyHeader(3_000_000_001, "a part"))
    assert await headers.first_reply_among([first.id, unknown.id]) is None  # stored before the table: not known
    assert await headers.first_reply_among([]) is None
