"""The gaps left in photos, documents and quoted replies (issue 14), from the user's side: images
counted in the context window, an image download resumed after a restart, downloaded images
freed on every path, quotes for voice notes and documents, resumed messages asking Telegram only
when they are replies, /retry after a document's acknowledgement, AES-encrypted PDFs, and what
`switchboard check` says of voice on the console."""
import asyncio
import sqlite3
from contextlib import AsyncExitStack
from dataclasses import replace

from telethon import errors

from bot.config import ConversationSettings, Secret, SttSettings
from handlers import conversation, documents, photos
from handlers.chat import SOMETHING_WENT_WRONG
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.pdfs import text_pdf
from tests.fakes.telegram import document_file, new_message_event, photo, voice_note
from tests.fakes.transcription_server import FakeTranscription, Heard
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, kill, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
STT_KEY = "sk-sentinel-media-gaps-stt-000000000000"
POLL = 0.05


def sent(media, *, text: str = "", album: int | None = None, reply_to: int | None = None):
    return new_message_event(
        chat_id=USER, sender_id=USER, text=text, message_id=next(MESSAGE_IDS), media=media, grouped_id=album
    )


def last_question(claude: FakeAnthropic) -> str:
    return claude.message_requests[-1].json["messages"][-1]["content"]


def user_content(request) -> list:
    """The last user message's content blocks of a recorded Anthropic request."""
    return request.json["messages"][-1]["content"]


def chat_text_gone(bot) -> bool:
    """Nothing says "something went wrong": the user was told what happened instead."""
    return SOMETHING_WENT_WRONG not in bot.texts()


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


async def photo_question_killed_mid_answer(stack: AsyncExitStack, tmp_path):
    """A photo asked about, and the bot killed while it answered: the model, the settings, and the
    Telegram and clock a restarted bot will see."""
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("A cat on a mat.")))
    claude.script(anth.stall_after(1, "A cat on a mat, sitting."))
    settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
    crashed_run = AsyncExitStack()
    bot = await start_telegram_bot(crashed_run, settings)
    await bot.client.deliver(sent(photo(), text="What is it?"))
    await bot.clock.run_until(lambda: claude.calls == 1 and bool(bot.client.drafts(USER)), poll=POLL)
    await kill(bot, crashed_run)
    return claude, settings, bot.client, bot.clock


async def test_an_answer_resumed_after_a_restart_whose_photo_telegram_will_not_hand_over_is_answered_later(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings, client, clock = await photo_question_killed_mid_answer(stack, tmp_path)

        # After the restart Telegram's file servers fail every retry for a while.
        client.fail_next("download", errors.ServerError(request=None, message="RPC_CALL_FAIL", code=500), times=10)
        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        # (The killed run's last words, if Telegram got them, are replaced by the answer below.)
        assert photos.NOT_NOW.format(what="photo") in bot.texts()
        assert claude.calls == 1 and await bot.statuses() == ["answering"]

        client._faults["download"].clear()  # Telegram is back
        safety_net = asyncio.ensure_future(bot.app.router.keep_resuming(every=300, older_than=120))
        await bot.clock.run_until(lambda: "A cat on a mat." in bot.texts(), poll=POLL)
        await bot.settle()
        safety_net.cancel()
        assert sorted(bot.texts()) == sorted([photos.NOT_NOW.format(what="photo"), "A cat on a mat."])  # told once
        assert user_content(claude.message_requests[-1])[0]["type"] == "image"
        assert await bot.statuses() == ["answered"]


async def test_a_resumed_photo_question_whose_photo_was_deleted_ends_with_a_clear_note(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings, client, clock = await photo_question_killed_mid_answer(stack, tmp_path)

        client.fail_next("download", errors.MessageIdInvalidError(request=None), times=10)  # deleted meanwhile
        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        assert bot.texts()[-1] == photos.GONE.format(what="photo") and chat_text_gone(bot)
        assert claude.calls == 1 and await bot.statuses() == ["failed"]


async def test_images_downloaded_for_an_answer_that_fails_first_are_not_kept(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("A cat on a mat.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        history = bot.app.services.history

        async def disk_full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        real_context_for, history.context_for = history.context_for, disk_full  # the answer fails before it takes the images
        await send(bot, sent(photo(), text="What is it?"))
        await send(bot, sent(photo(), text="And this?"))
        history.context_for = real_context_for
        assert bot.texts() == [SOMETHING_WENT_WRONG, SOMETHING_WENT_WRONG]
        assert bot.client.downloads(USER) == 2 and claude.calls == 0
        assert bot.app.services.features.photos._ready == {}  # the downloaded images were let go


async def test_an_aes_encrypted_pdf_without_a_user_password_is_read(tmp_path):
    """What PDF readers open silently (AES-128 and AES-256, only printing restricted) is read."""
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("It is about Paris.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        for algorithm in ("AES-128", "AES-256"):
            pdf = text_pdf(f"Sealed with {algorithm}, readable by anyone.", password="", algorithm=algorithm)
            await send(bot, sent(document_file("sealed.pdf", pdf, mime_type="application/pdf"), text="Summarise"))
            assert f"Sealed with {algorithm}, readable by anyone." in claude.message_requests[-1].json["messages"][-1]["content"]
        assert bot.texts() == ["It is about Paris.", "It is about Paris."]
        # One with a real user password is still refused clearly.
        locked = text_pdf("Secret.", password="hunter2", algorithm="AES-256")
        await send(bot, sent(document_file("locked.pdf", locked, mime_type="application/pdf"), text="Summarise"))
        assert bot.texts()[-1] == documents.ENCRYPTED.format(name="locked.pdf")


def test_check_says_voice_is_on_only_where_voice_messages_can_arrive(tmp_path):
    from bot.check import _settings_summary
    from bot.config import TelegramSettings

    stt = SttSettings("whisper-1", Secret("sk-sentinel-stt-0000000000000000000000"), base_url="http://127.0.0.1:9/v1")
    console = settings_for(tmp_path, models=[CLAUDE], stt=stt)
    assert _settings_summary(console) == (
        f"valid; console (no TELEGRAM_* settings); models {CLAUDE}; "
        "voice on Telegram only (the console takes no voice messages)"
    )
    telegram = replace(console, telegram=TelegramSettings(1, Secret("0" * 32), Secret("1:" + "a" * 35), tmp_path / "bot.session"))
    assert _settings_summary(telegram) == f"valid; Telegram; models {CLAUDE}; voice on"
    assert _settings_summary(replace(console, stt=None)) == f"valid; console (no TELEGRAM_* settings); models {CLAUDE}"


def replying(reply_to: int, *, media=None, text: str = "", quote: str | None = None, message_id: int | None = None):
    return new_message_event(
        chat_id=USER, sender_id=USER, text=text, message_id=message_id or next(MESSAGE_IDS), media=media, reply_to=reply_to, quote=quote
    )


async def test_a_voice_note_and_a_document_that_reply_to_a_message_carry_its_quote(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Lyon is second.")))
        stt = await stack.enter_async_context(FakeTranscription(api_key=STT_KEY, default=Heard("Why that one?")))
        stt_settings = SttSettings("whisper-1", Secret(STT_KEY), base_url=stt.base_url)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE], stt=stt_settings))
        await bot.user_says("Name the second city of France.")
        answer_id = bot.client.messages(USER)[-1].id

        await send(bot, replying(answer_id, media=voice_note()))
        assert last_question(claude) == "[Replying to your earlier message:]\n> Lyon is second.\n\nWhy that one?"

        await send(bot, replying(answer_id, media=document_file("facts.txt", b"Lyon has 520,000 people."), text="Bigger than this?", quote="Lyon"))
        asked = last_question(claude)
        assert asked.startswith("[Replying to your earlier message:]\n> Lyon\n\n[Document \"facts.txt\"]\nLyon has 520,000 people.")
        assert asked.endswith("Bigger than this?")
        assert await bot.statuses() == ["answered"] * 3


async def test_a_voice_reply_taken_during_a_shutdown_is_quoted_after_the_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Lyon.")))
        stt = await stack.enter_async_context(FakeTranscription(api_key=STT_KEY, default=Heard("Another one?")))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], stt=SttSettings("whisper-1", Secret(STT_KEY), base_url=stt.base_url))
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            first = next(MESSAGE_IDS)
            await bot.user_says("Name a French city.", message_id=first)
            bot.app.router.stop_accepting()  # stored, transcribed and answered after the restart
            await send(bot, replying(first, media=voice_note()))
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert last_question(claude) == "[Replying to my earlier message:]\n> Name a French city.\n\nAnother one?"
        assert await bot.statuses() == ["answered", "answered"]


async def test_messages_resumed_after_a_restart_ask_telegram_nothing_unless_they_are_replies(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Lyon.")))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            first = next(MESSAGE_IDS)
            await bot.user_says("Name a French city.", message_id=first)
            bot.app.router.stop_accepting()  # stored, answered after the restart
            for n in range(3):
                await bot.user_says(f"Plain question {n}")
            await send(bot, replying(first, text="Another one?", quote="French city"))
        calls_before = len(bot.client.calls)
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert [call for call in bot.client.calls[calls_before:] if call.kind == "get_messages"] == []
        assert [r.json["messages"][-1]["content"] for r in claude.message_requests[1:]] == [
            "Plain question 0", "Plain question 1", "Plain question 2",
            "[Replying to my earlier message:]\n> French city\n\nAnother one?",
        ]
        assert await bot.statuses() == ["answered"] * 5


async def test_retry_right_after_a_documents_acknowledgement_says_there_is_no_answer_to_retry(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("We land in Paris.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await send(bot, sent(document_file("trip_plan.md", b"We land in Paris on Monday.")))
        await bot.user_says("/retry")
        assert bot.texts()[-1] == conversation.NOTHING_TO_RETRY_AFTER_DOCUMENT.format(name="trip_plan.md")  # shown as it is
        assert claude.calls == 0
        # The acknowledgement is still what the conversation keeps, and the file still in view.
        await bot.user_says("Where do we land?")
        context = claude.message_requests[-1].json["messages"]
        assert context[0]["content"].startswith('[Document "trip_plan.md"]') and context[1]["content"].startswith("Got it: trip_plan.md")
        # Once answered, /retry answers that question again.
        await bot.user_says("/retry")
        assert claude.calls == 2 and claude.message_requests[-1].json["messages"][-1]["content"] == "Where do we land?"
