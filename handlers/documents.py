"""Documents (text, Markdown, code, PDF): their text becomes context for the caption, or for the
next question in the chat.

A document is stored like any medium ("[file]" and its caption), and its job (`read`, run by the
router inside the message's lifecycle, also after a restart) goes:

1. Telegram's metadata first, before anything is downloaded: an image goes to the photo feature
   (or is declined while there is none), a kind of file the bot cannot read (an archive, a
   program, a Word file) gets "I can't read .xyz files", and one over DOC_MAX_MB is refused.
2. A captioned document will be answered, which costs money: the user's limits are checked.
3. The file is downloaded and its text read (`integrations.document_text`; a PDF over
   DOC_MAX_PAGES, a scanned, a password-protected or a damaged PDF gets a clear reply), and cut
   to DOC_MAX_CHARS characters, saying so where it was cut.
4. The text (as one block naming the file) replaces the placeholder in the history:
   - with a caption, document and caption are the question, answered at once like a typed one;
   - without one, the user gets "got it: <name>, N pages; ask me about it", which is stored as the
     bot's answer in the same transaction, so the next question in the chat has the document in
     its context, and a restart delivers the acknowledgement instead of reading the file again.

A download that fails in a way that may pass tells the user once and leaves the message for the
router's safety net (`AnswerLater`), as voice messages do.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from handlers.render import escape_markdown
from handlers.reply import DOCUMENT_CUT_STREAM, DOCUMENT_DELAYED_STREAM, notify_once, reply
from handlers.services import Services
from handlers.transport import IncomingMessage, Media, MediaSource
from handlers.voice import AnswerLater, end_with_note
from integrations.document_text import DocumentKind, DocumentText, Unreadable, document_kind, file_extension, read_document
from integrations.errors import UpstreamError
from state.history import StoredMessage

log = logging.getLogger(__name__)

# A document's text as `context_block` makes it, and nothing after it (no caption).
_BLOCK_ALONE = re.compile(r'\A\[Document "(?P<name>.*?)"(?:, \d+ pages?)?\]\n.*\n\[End of document "(?P=name)"\]\Z', re.DOTALL)

# How a user calls what Telegram calls a document (the transport's word for it).
DOCUMENT = "file"

CAN_READ = "I can read text, Markdown, code and PDF."
UNSUPPORTED = "I can't read .{extension} files; " + CAN_READ
UNSUPPORTED_UNNAMED = "I can't read this kind of file ({mime}); " + CAN_READ
NOT_TEXT = "I can't read {name}: it doesn't look like text. " + CAN_READ
IMAGES_NOT_YET = (
    "I can't look at images yet, so I haven't read {name}. "
    "Please type your question (or paste the text) and I'll answer it."
)
NOT_HERE = "I can't open files here. Please paste the text and I'll answer it."
TOO_LARGE = "{name} is {size}; I can read documents of up to {limit}. Please send a smaller one, or paste the part you need."
TOO_MANY_PAGES = (
    "{name} has {pages} pages; I can read PDFs of up to {limit} pages. Please send only the pages you "
    "need (most PDF viewers can print a page range to a new PDF)."
)
SCANNED = (
    "{name} has no text I can read: it looks like a scan (its pages are pictures). Please send a "
    "PDF with a text layer (run it through OCR first), or paste the text."
)
ENCRYPTED = "{name} is password-protected, so I can't read it. Please send a copy without the password, or paste the text."
DAMAGED = "I couldn't open {name}: the PDF seems to be damaged. Please export it again, or paste the text."
EMPTY = "{name} is empty, so there is nothing to read."
GONE = "I can't fetch {name} from Telegram any more (was it deleted?), so I haven't read it. Please send it again."
NOT_NOW = (
    "⚠️ I couldn't fetch {name} from Telegram just now. I'll try again by myself in a few minutes; "
    "there's no need to send it again."
)
GAVE_UP = "Sorry, I still couldn't fetch {name} from Telegram after {attempts} tries. Please send it again."
GOT_IT = "Got it: {name}, {extent}; ask me about it."
CUT_NOTE = "It is long, so I kept only its first {kept:,} of {total:,} characters."


@dataclass(frozen=True)
class DocumentsFeature:
    """Documents users send: where they come from (Telegram), and how much of them is read."""

    media: MediaSource
    max_bytes: int = 20 * 1024 * 1024
    max_pages: int = 100
    # How many characters of a document go into the conversation (every later request carries them).
    max_chars: int = 40_000


def is_document(message: IncomingMessage) -> bool:
    """Whether the message carries a document: a file that is not audio, an image, a sticker, a
    GIF or a video (the transport calls only those a "file")."""
    return message.media is not None and message.media.kind == "other" and message.media.words == DOCUMENT


def stored_as_document(stored: StoredMessage) -> bool:
    """Whether a stored medium is a document still to be read."""
    return stored.kind == "media" and stored.text.partition("\n")[0] == f"[{DOCUMENT}]"


async def read(services: Services, message: IncomingMessage, stored: StoredMessage) -> StoredMessage | None:
    """The job of a document message: the message with the document (and caption) as its text, to
    be answered as a chat message, or acknowledged (status 'delivering'); None when it ended here."""
    caption = stored.text.partition("\n")[2].strip()
    feature = services.features.documents
    if feature is None:
        await reply(services, message, NOT_HERE)
        return None
    try:
        media = message.media or await feature.media.describe(message.chat_id, message.message_id)
        if media is None:
            await end_with_note(services, message, stored, GONE.format(name="this file"), "the file is gone")
            return None
        title = media.file_name or "this file"
        name = escape_markdown(title)  # in replies, shown as it is
        kind = document_kind(media.file_name, media.mime_type)
        refusal = _refusal(feature, media, kind, name)
        if refusal is not None or kind is None or kind == "image":
            await reply(services, message, refusal or IMAGES_NOT_YET.format(name=name))
            return None
        if caption:
            limit = await services.limits.check(message.user_id)
            if limit is not None:
                await end_with_note(services, message, stored, limit, "over the user's limits")
                return None
        data = await feature.media.download(message.chat_id, message.message_id)
    except UpstreamError as error:
        await _download_failed(services, message, stored, error, stored.attempts + 1)
        return None
    if len(data) > feature.max_bytes:
        await reply(services, message, _too_large(feature, len(data), name))
        return None
    try:
        document = await asyncio.to_thread(read_document, data, kind, max_pages=feature.max_pages)
    except Unreadable as problem:
        log.info("document %s in chat %s not read: %s", stored.id, message.chat_id, problem)
        await reply(services, message, _unreadable(feature, problem, name))
        return None
    if not document.text.strip():
        await reply(services, message, EMPTY.format(name=name))
        return None
    block, cut = context_block(title, document, feature.max_chars)
    if caption:
        if cut:
            await notify_once(services, message, f"📄 {name}: {cut}", stream=DOCUMENT_CUT_STREAM)
        return await services.history.record_document(stored, f"{block}\n\n{caption}")
    extent = _extent(document, len(data))
    # The conversation keeps the plain words; the user sees them as Markdown (the name escaped).
    words = GOT_IT.format(name=title, extent=extent) + (f"\n\n({cut})" if cut else "")
    shown = GOT_IT.format(name=name, extent=extent) + (f"\n\n_({cut})_" if cut else "")
    return await services.history.record_document(stored, block, acknowledgement=words, shown=shown)


def only_read(question: StoredMessage) -> str | None:
    """The file's name if `question` is a document sent without a caption (acknowledged, not
    answered: its text is the document's block alone), else None."""
    match = _BLOCK_ALONE.match(question.text)
    return match.group("name") if match else None


def context_block(name: str, document: DocumentText, max_chars: int) -> tuple[str, str]:
    """The document as the conversation keeps it (one block naming the file, cut to `max_chars`
    characters), and the note saying where it was cut ("" when whole)."""
    text = document.text.strip()
    cut = ""
    if len(text) > max_chars:
        cut = CUT_NOTE.format(kept=max_chars, total=len(text))
        text = text[:max_chars] + f"\n[… {cut}]"
    pages = f", {_pages(document.pages)}" if document.pages else ""
    return f'[Document "{name}"{pages}]\n{text}\n[End of document "{name}"]', cut


def _refusal(feature: DocumentsFeature, media: Media, kind: DocumentKind | None, name: str) -> str | None:
    """The reply for a file not to be downloaded (by Telegram's own account of it), else None."""
    if kind is None:
        extension = file_extension(media.file_name)
        if extension:
            return UNSUPPORTED.format(extension=escape_markdown(extension))
        return UNSUPPORTED_UNNAMED.format(mime=escape_markdown(media.mime_type or "no type given"))
    if media.size is not None and media.size > feature.max_bytes:
        return _too_large(feature, media.size, name)
    return None


def _unreadable(feature: DocumentsFeature, problem: Unreadable, name: str) -> str:
    if problem.problem == "too_many_pages":
        return TOO_MANY_PAGES.format(name=name, pages=problem.pages, limit=feature.max_pages)
    if problem.problem == "scanned":
        return SCANNED.format(name=name)
    if problem.problem == "encrypted":
        return ENCRYPTED.format(name=name)
    if problem.problem == "damaged":
        return DAMAGED.format(name=name)
    return NOT_TEXT.format(name=name)


async def _download_failed(
    services: Services, message: IncomingMessage, stored: StoredMessage, error: UpstreamError, attempt: int
) -> None:
    """Telegram did not hand the file over: gone for good, or to be tried again later."""
    name = escape_markdown(message.media.file_name or "this file") if message.media is not None else "this file"
    log.warning("could not download document %s in chat %s: %s", stored.id, message.chat_id, error)
    if not error.retryable:
        await end_with_note(services, message, stored, GONE.format(name=name), f"download failed: {error}")
        return
    if attempt >= services.chat.max_attempts:
        note = GAVE_UP.format(name=name, attempts=attempt)
        await end_with_note(services, message, stored, note, f"download failed {attempt} times: {error}")
        return
    await notify_once(services, message, NOT_NOW.format(name=name), stream=DOCUMENT_DELAYED_STREAM)
    raise AnswerLater(f"download failed: {error}")


def _too_large(feature: DocumentsFeature, size: int, name: str) -> str:
    return TOO_LARGE.format(name=name, size=_size(size), limit=_size(feature.max_bytes))


def _extent(document: DocumentText, size: int) -> str:
    return _pages(document.pages) if document.pages else _size(size)


def _pages(count: int) -> str:
    return f"{count} page" + ("" if count == 1 else "s")


def _size(size: int) -> str:
    if size < 1024 * 1024:
        return f"{max(1, round(size / 1024))} kB"
    return f"{size / (1024 * 1024):.1f} MB"
