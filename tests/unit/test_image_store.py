"""The image store, on SQLite and PostgreSQL: an image noted once, an album's images in the order
sent, and an album settled as one question in one step (the others answered with it)."""
from state.history import HistoryStore
from state.images import ImageStore

CHAT = -1001234567890  # a supergroup: past 2^31
USER = 42
ALBUM = 13_800_000_000_000_000  # Telegram's grouped_id is a 64-bit number


async def _photo(history: HistoryStore, images: ImageStore, message_id: int, caption: str = "", album: int | None = ALBUM):
    stored = await history.record_incoming(CHAT, USER, message_id, "[photo]" + (f"\n{caption}" if caption else ""), kind="media")
    await images.note(stored, album=album, size=50_000)
    await images.note(stored, album=album, size=50_000)  # noted again after a restart: no change
    return stored


async def test_an_album_is_settled_as_one_question_and_its_other_photos_end_answered(state_db, clock):
    history, images = HistoryStore(state_db, clock), ImageStore(state_db)
    second = await _photo(history, images, 12)
    first = await _photo(history, images, 11, "Which is best?")
    lone = await _photo(history, images, 20, album=None)

    found = await images.find(second)
    album = await images.unsettled_album(found)
    assert [(i.telegram_message_id, i.caption) for i in album] == [(11, "Which is best?"), (12, "")]
    assert await images.unsettled_album(await images.find(lone)) == [await images.find(lone)]

    await history.begin(second)
    question = await images.settle(second, album, "[2 photos]\nWhich is best?")
    assert (question.kind, question.status, question.text) == ("chat", "pending", "[2 photos]\nWhich is best?")
    assert [i.telegram_message_id for i in await images.asked_with(second.id)] == [11, 12]
    assert await images.unsettled_album(found) == []
    # The question is what is left to answer; the other photo ended with it.
    assert [(m.id, m.kind) for m in await history.pending()] == [(second.id, "chat"), (lone.id, "media")]
    assert first.id not in [m.id for m in await history.pending()]


async def test_an_album_refused_ends_every_photo_but_the_one_replied_to(state_db, clock):
    history, images = HistoryStore(state_db, clock), ImageStore(state_db)
    first = await _photo(history, images, 31)
    second = await _photo(history, images, 32)
    album = await images.unsettled_album(await images.find(first))
    await images.end_unsettled(album, first, "too many images")
    assert [m.id for m in await history.pending()] == [first.id]
    assert second.id not in [m.id for m in await history.pending()]
