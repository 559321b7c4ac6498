"""Documents, from the user's side: a text, Markdown, code or PDF file sent to the bot becomes the
context of its caption (answered at once) or of the next question (acknowledged), through the real
router, Telethon's own document types and `download_media`; and every way it can go wrong
(unsupported, too large, too many pages, scanned, password-protected, damaged, a restart)."""
import asyncio
from contextlib import AsyncExitStack
from dataclasses import replace

from telethon import errors

from bot.config import DocumentSettings
from handlers import documents
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.pdfs import damaged_pdf, scanned_pdf, text_pdf
from tests.fakes.telegram import document_file, new_message_event
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, kill, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
POLL = 0.05
CAN_READ = "I can read text, Markdown, code and PDF."


def sent(media, *, text: str = "", message_id: int | None = None):
    """A document as the user sends it, with its caption."""
    return new_message_event(chat_id=USER, sender_id=USER, text=text, message_id=message_id or next(MESSAGE_IDS), media=media)


async def claude_at(stack: AsyncExitStack, answer: str = "It is about Paris.") -> FakeAnthropic:
    return await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(answer)))


def doc_settings(tmp_path, claude, **limits):
    return settings_for(tmp_path, anthropic=claude, models=[CLAUDE], documents=DocumentSettings(**limits))


async def send(bot, event) -> None:
    await bot.clock.run_until_complete(bot.client.deliver(event))
    await bot.settle()


def asked(claude: FakeAnthropic, index: int = -1) -> list[dict]:
    return claude.message_requests[index].json["messages"]


async def test_a_captioned_text_file_is_answered_at_once_with_its_text_as_context(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude))
        notes = "# Trip\nWe land in Paris on Monday.\n"
        await send(bot, sent(document_file("trip.md", notes.encode(), mime_type="text/markdown"), text="Where do we land?"))

        assert bot.texts() == ["It is about Paris."]
        [question] = asked(claude)
        assert question["role"] == "user"
        assert question["content"] == f'[Document "trip.md"]\n{notes.strip()}\n[End of document "trip.md"]\n\nWhere do we land?'
        assert await bot.statuses() == ["answered"]


async def test_a_pdf_without_a_caption_is_acknowledged_and_is_the_context_of_the_next_question(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude))
        pdf = text_pdf("Quarterly report", "Revenue grew by 12 percent.", "Costs fell.")
        await send(bot, sent(document_file("report.pdf", pdf, mime_type="application/pdf")))

        assert bot.texts() == ["Got it: report.pdf, 3 pages; ask me about it."]
        assert claude.calls == 0  # reading a document costs nothing

        await bot.user_says("By how much did revenue grow?")
        document, acknowledgement, question = asked(claude)
        assert document["role"] == "user" and document["content"].startswith('[Document "report.pdf", 3 pages]\nQuarterly report')
        assert "Revenue grew by 12 percent." in document["content"]
        assert acknowledgement == {"role": "assistant", "content": "Got it: report.pdf, 3 pages; ask me about it."}
        assert question == {"role": "user", "content": "By how much did revenue grow?"}
        assert await bot.statuses() == ["answered", "answered"]


async def test_code_files_and_untyped_text_files_are_read_but_binaries_are_not(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude))
        code = 'def greet():\n    return "héllo"\n'
        await send(bot, sent(document_file("greet.py", code.encode(), mime_type="text/x-python")))
        # Telegram apps label what they do not know application/octet-stream: read if it is text.
        await send(bot, sent(document_file("NOTES", b"buy milk\n", mime_type="application/octet-stream")))
        await send(bot, sent(document_file("blob", bytes(range(256)) * 4, mime_type="application/octet-stream")))
        # A name is shown as it is, never taken for Markdown.
        await send(bot, sent(document_file("my_*draft*_[v2].md", b"# Draft", mime_type="text/markdown")))
        assert bot.texts() == [
            "Got it: greet.py, 1 kB; ask me about it.",
            "Got it: NOTES, 1 kB; ask me about it.",
            documents.NOT_TEXT.format(name="blob"),
            "Got it: my_*draft*_[v2].md, 1 kB; ask me about it.",
        ]


async def test_an_archive_or_a_word_file_gets_a_clear_reply_and_is_not_downloaded(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude))
        await send(bot, sent(document_file("photos.zip", b"PK\x03\x04" + bytes(100), mime_type="application/zip")))
        docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        await send(bot, sent(document_file("cv.docx", b"PK\x03\x04", mime_type=docx), text="Is my CV any good?"))
        await send(bot, sent(document_file(None, b"\x7fELF", mime_type="application/x-executable")))
        assert bot.texts() == [
            f"I can't read .zip files; {CAN_READ}",
            f"I can't read .docx files; {CAN_READ}",
            f"I can't read this kind of file (application/x-executable); {CAN_READ}",
        ]
        assert bot.client.downloads(USER) == 0 and claude.calls == 0


async def test_a_file_over_the_size_limit_is_refused_before_it_is_downloaded(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude, max_bytes=2 * 2**20))
        await send(bot, sent(document_file("big.pdf", b"%PDF-1.7", mime_type="application/pdf", size=3 * 2**20)))
        [reply] = bot.texts()
        assert reply.startswith("big.pdf is 3.0 MB; I can read documents of up to 2.0 MB.")
        assert bot.client.downloads(USER) == 0


async def test_a_pdf_with_too_many_pages_gets_a_clear_reply(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude, max_pages=3))
        await send(bot, sent(document_file("book.pdf", text_pdf(*["page"] * 4), mime_type="application/pdf")))
        [reply] = bot.texts()
        assert reply.startswith("book.pdf has 4 pages; I can read PDFs of up to 3 pages.")


async def test_a_scanned_an_encrypted_and_a_damaged_pdf_each_get_a_clear_reply(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude))
        pdf = "application/pdf"
        await send(bot, sent(document_file("scan.pdf", scanned_pdf(), mime_type=pdf), text="What does it say?"))
        await send(bot, sent(document_file("secret.pdf", text_pdf("Top secret", password="hunter2"), mime_type=pdf)))
        await send(bot, sent(document_file("broken.pdf", damaged_pdf(), mime_type=pdf)))
        assert bot.texts() == [
            documents.SCANNED.format(name="scan.pdf"),
            documents.ENCRYPTED.format(name="secret.pdf"),
            documents.DAMAGED.format(name="broken.pdf"),
        ]
        assert claude.calls == 0


async def test_a_pdf_encrypted_without_a_user_password_is_read(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude))
        pdf = text_pdf("Printing is restricted, reading is not.", password="")
        await send(bot, sent(document_file("locked.pdf", pdf, mime_type="application/pdf"), text="Summarise"))
        assert bot.texts() == ["It is about Paris."]
        assert "Printing is restricted, reading is not." in asked(claude)[0]["content"]


async def test_a_long_document_is_cut_to_the_limit_and_says_so(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude, max_chars=1000))
        text = "".join(f"line {i:04d}\n" for i in range(300))  # 3,000 characters
        await send(bot, sent(document_file("log.txt", text.encode())))
        [acknowledgement] = bot.texts()
        assert acknowledgement.startswith("Got it: log.txt, 3 kB; ask me about it.")
        assert "I kept only its first 1,000 of 2,999 characters" in acknowledgement
        await send(bot, sent(document_file("log2.txt", text.encode()), text="What is the last line?"))
        assert bot.texts()[1:] == ["📄 log2.txt: It is long, so I kept only its first 1,000 of 2,999 characters.", "It is about Paris."]
        content = asked(claude)[-1]["content"]
        assert "line 0000" in content and "line 0299" not in content
        assert "[… It is long, so I kept only its first 1,000 of 2,999 characters.]" in content
        assert content.endswith("What is the last line?")


async def test_a_user_over_budget_is_refused_before_a_captioned_document_is_downloaded(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        settings = doc_settings(tmp_path, claude)
        settings = replace(settings, limits=replace(settings.limits, user_daily_budget_usd=0.05))
        bot = await start_telegram_bot(stack, settings)
        await bot.app.services.features.usage.record_audio(USER, "whisper-1", 600)  # $0.06 spent today
        await send(bot, sent(document_file("a.txt", b"text"), text="Summarise"))
        [reply] = bot.texts()
        assert reply.startswith("You've used $0.06 of your $0.05 daily budget")
        assert bot.client.downloads(USER) == 0 and claude.calls == 0 and await bot.statuses() == ["failed"]


async def test_a_restart_mid_answer_answers_again_without_reading_the_document_again(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        claude.script(anth.stall_after(1, "It is about"))
        settings = doc_settings(tmp_path, claude)
        crashed_run = AsyncExitStack()
        bot = await start_telegram_bot(crashed_run, settings)
        await bot.client.deliver(sent(document_file("trip.md", b"We land in Paris."), text="Where do we land?"))
        await bot.clock.run_until(lambda: claude.calls == 1 and bool(bot.client.drafts(USER)), poll=POLL)
        client, clock = bot.client, bot.clock
        await kill(bot, crashed_run)  # killed mid-answer

        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        assert bot.texts() == ["It is about Paris."]
        assert client.downloads(USER) == 1 and claude.calls == 2
        assert asked(claude, 0) == asked(claude, 1)
        assert await bot.statuses() == ["answered"]


async def test_a_document_taken_during_a_shutdown_is_fetched_again_and_read_after_the_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        settings = doc_settings(tmp_path, claude)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            bot.app.router.stop_accepting()
            await send(bot, sent(document_file("plan.txt", b"Step one: coffee.")))
            assert bot.texts() == [] and await bot.statuses() == ["pending"]
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert bot.texts() == ["Got it: plan.txt, 1 kB; ask me about it."]
        await bot.user_says("What is step one?")
        assert "Step one: coffee." in asked(claude)[0]["content"]


async def test_a_document_deleted_before_the_restart_gets_a_note_instead(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        settings = doc_settings(tmp_path, claude)
        event = sent(document_file("plan.txt", b"Step one: coffee."))
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            bot.app.router.stop_accepting()
            await send(bot, event)
        bot.client.user_deletes(USER, event.message.id)
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert bot.texts() == [documents.GONE.format(name="this file")]
        assert await bot.statuses() == ["failed"]


async def test_a_download_that_fails_is_tried_again_later_and_the_user_told_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_at(stack)
        bot = await start_telegram_bot(stack, doc_settings(tmp_path, claude))
        bot.client.fail_next("download", errors.RpcCallFailError(request=None), times=10)
        await send(bot, sent(document_file("plan.txt", b"Step one: coffee.")))
        assert bot.texts() == [documents.NOT_NOW.format(name="plan.txt")]
        assert await bot.statuses() == ["answering"]  # nothing lost: left for the next try

        bot.client._faults["download"].clear()  # Telegram is back
        safety_net = asyncio.ensure_future(bot.app.router.keep_resuming(every=300, older_than=120))
        await bot.clock.run_until(lambda: len(bot.texts()) == 2, poll=POLL)
        await bot.settle()
        safety_net.cancel()
        assert bot.texts()[1:] == ["Got it: plan.txt, 1 kB; ask me about it."]
        assert await bot.statuses() == ["answered"]
