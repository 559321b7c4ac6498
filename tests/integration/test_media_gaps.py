"""The gaps left in photos, documents and quoted replies (issue 14), from the user's side: images
counted in the context window, an image download resumed after a restart, downloaded images
freed on every path, quotes for voice notes and documents, resumed messages asking Telegram only
when they are replies, /retry after a document's acknowledgement, AES-encrypted PDFs, and what
`switchboard check` says of voice on the console."""
from contextlib import AsyncExitStack

from bot.config import ConversationSettings
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.telegram import new_message_event, photo
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
POLL = 0.05


def sent(media, *, text: str = "", album: int | None = None, reply_to: int | None = None):
    return new_message_event(
        chat_id=USER, sender_id=USER, text=text, message_id=next(MESSAGE_IDS), media=media, grouped_id=album
    )


async def send(bot, *events) -> None:
    for event in events:
        await bot.client.deliver(event)
    await bot.settle()


async def test_an_album_takes_its_room_from_older_turns_instead_of_overflowing_the_window(tmp_path):
    """Two 1568 x 1176 photos are 2 x 2459 tokens to Claude: with the long conversation before
    them they would not fit its 8000-token window, and the text-only estimate never saw them."""
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(
            FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Noted."), windows={"claude-test": 8000})
        )
        settings = settings_for(
            tmp_path, anthropic=claude, models=[CLAUDE], llm_context_tokens=8000, llm_max_tokens=1024,
            conversation=ConversationSettings(compact_at=None),
        )
        bot = await start_telegram_bot(stack, settings)
        for n in range(6):
            await bot.user_says(f"Note {n}: " + "word " * 700)
        album = 5_560_001
        await send(bot, sent(photo(1568, 1176), album=album, text="Which is sharper?"), sent(photo(1568, 1176), album=album))

        assert bot.texts() == ["Noted."] * 7
        last = claude.message_requests[-1].json["messages"]
        assert [b["type"] for b in last[-1]["content"]] == ["image", "image", "text"]
        assert len(last) < 13  # older notes left out to make room for the photos
        assert claude.calls == 7  # never refused as too long


def test_image_tokens_are_counted_as_each_provider_documents():
    from integrations.context_window import image_tokens, message_tokens
    from integrations.images import Image
    from integrations.llm import ChatMessage

    big = Image("image/png", b"", 4000, 3000)
    # Anthropic: scaled to 1568 x 1176 first, then width x height / 750.
    assert image_tokens(big, "anthropic") == 2459
    # OpenAI: 2048 x 1536, then 1024 x 768: 2 x 2 tiles.
    assert image_tokens(big, "openai") == 85 + 4 * 170
    # Unknown: the larger of the two.
    assert image_tokens(big, "local") == 2459
    assert message_tokens(ChatMessage("user", "hi", images=(big, big)), "openai") == 5 + 2 * 765
