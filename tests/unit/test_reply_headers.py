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
