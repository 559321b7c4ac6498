"""A reply to an earlier message: the quoted text goes with the question, as context.

When a user replies to a message (theirs, the bot's, or in a group someone else's), the model is
shown what they replied to, above their question, bounded to QUOTE_MAX_CHARS. Where it comes from,
first found first:

1. Telegram's own partial quote (the user selected part of the message): exactly what they meant.
2. The history, by Telegram message id: the user's earlier message as stored (a transcript, a
   document's text), or the bot's answer that the replied-to message showed.
3. Telegram itself (`RepliedMessages`, Telethon's get_reply_message): a message the bot never
   stored (a notice, someone else's message in a group, one from before the history).

The job (`with_quote`, run by the router inside the message's lifecycle) writes the question with
its quote into the history before answering, so the answer, a restart mid-answer and later turns
all see the same words. What a message replies to is written down when it arrives (`remember`,
state/reply_headers.py), so a message taken up after a restart before its quote was written
(stored during a shutdown, or the bot stopped in between) is quoted from that; only one stored
before that table existed is read again from Telegram for what it replies to (`with_quote_again`).
A voice note or a document that replies to a message gets the same quote above its transcript
or text (`with_quote_of_medium`); a photo or an album, after its placeholder ("[photo]", which
photos code knows its question by), above its caption (`with_quote_of_images`): the history
keeps the quote in words, the image is not sent again on later turns. A quote that cannot be
found (deleted, Telegram unreachable) is left out: the question is answered as it is, never held up.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

from handlers import photos
from handlers.chat import CONTINUE_REQUEST
from handlers.services import Services
from handlers.transport import IncomingMessage
from integrations.errors import UpstreamError
from state.history import StoredMessage
from state.quoted_messages import StoredMessages
from state.reply_headers import ReplyHeaders

log = logging.getLogger(__name__)

# The most of a quoted message shown to the model: a reply is about a passage, not a whole document.
QUOTE_MAX_CHARS = 1500

Author = Literal["bot", "user", "someone"]
# How a question with its quote begins (also how a resumed one is known to have it already).
QUOTED_MARK = "[Replying to "


@dataclass(frozen=True)
class Quote:
    text: str
    # Whose message it was: the bot's, the asking user's own, or someone else's (`name`, if known).
    author: Author
    name: str = ""


@runtime_checkable
class RepliedMessages(Protocol):
    """The message a user's message replies to, fetched from the chat (bot/telegram.py)."""

    async def replied_to(self, chat_id: int, message_id: int) -> Quote | None:
        """None when there is none with text (deleted, or media only); raises UpstreamError."""
        ...

    async def reply_of(self, chat_id: int, message_id: int) -> tuple[int, str | None] | None:
        """What message `message_id` replies to, read again (its id and Telegram's partial quote);
        None when it replies to none; raises UpstreamError."""
        ...


@dataclass(frozen=True)
class QuotesFeature:
    stored: StoredMessages
    headers: ReplyHeaders
    # None where the transport cannot fetch messages (the console).
    telegram: RepliedMessages | None = None


def is_reply(services: Services, message: IncomingMessage) -> bool:
    """Whether the message replies to another whose text should go with it. Not /continue: it
    asks for the rest of the last answer, as it is, whatever it replies to."""
    return message.reply_to is not None and services.features.quotes is not None and message.text != CONTINUE_REQUEST


async def remember(services: Services, message: IncomingMessage, stored: StoredMessage) -> None:
    """Write down what a just stored message replies to (nothing for one that replies to nothing)."""
    feature = services.features.quotes
    if feature is not None and message.reply_to is not None:
        await feature.headers.note(stored, message.reply_to, message.quote)


async def with_quote_of_medium(services: Services, message: IncomingMessage, said: StoredMessage) -> StoredMessage:
    """A voice note's transcript or a document's text (`said`, recorded by its job) with the text
    its message quotes above it, as for a typed reply; as it is when it replies to nothing or is
    only acknowledged (a document without a caption: there is no question)."""
    feature = services.features.quotes
    if feature is None or said.status == "delivering" or has_quote(said.text):
        return said
    if message.reply_to is None:
        if message.trace is None or not message.trace.resumed:
            return said  # as it arrived: it replies to nothing
        header = await feature.headers.of(said)  # taken up after a restart: as it was written down
        if header is None or header.reply_to is None:
            return said
        message = replace(message, reply_to=header.reply_to, quote=header.quote)
    quote = await find_quote(services, message)
    if quote is None:
        return said
    return await feature.headers.quote_into(said, quoted_question(quote, said.text))


async def with_quote_of_images(services: Services, message: IncomingMessage, question: StoredMessage) -> StoredMessage:
    """A photo's (or an album's) question, settled by its job, with the text quoted by the photo
    that replies (by the reply headers written down when they arrived: in an album, any of its
    photos, the job's own or another) between its placeholder and its caption; as it is when
    none replies."""
    feature = services.features.quotes
    if feature is None or question.status == "delivering" or has_quote(question.text):
        return question
    replying = await _replying_photo(services, feature, message, question)
    quote = await find_quote(services, replying) if replying is not None else None
    if quote is None:
        return question
    placeholder, asked = photos.split_placeholder(question.text)
    return await feature.headers.quote_into(question, placeholder + quoted_question(quote, asked))


async def _replying_photo(
    services: Services, feature: QuotesFeature, message: IncomingMessage, question: StoredMessage
) -> IncomingMessage | None:
    """The message of the question's photos that replies to one, as `find_quote` reads it."""
    images = await services.features.photos.store.asked_with(question.id) if services.features.photos else []
    found = await feature.headers.first_reply_among([image.message_id for image in images])
    if found is None:
        # Its header could not be written (storage failing then): the live message still says.
        return message if message.reply_to is not None else None
    message_id, header = found
    telegram_id = next(image.telegram_message_id for image in images if image.message_id == message_id)
    return replace(message, message_id=telegram_id, reply_to=header.reply_to, quote=header.quote)


def has_quote(text: str) -> bool:
    """Whether a question carries its quote already (after a photo's placeholder, if it has one)."""
    return photos.split_placeholder(text)[1].startswith(QUOTED_MARK)


async def with_quote(services: Services, message: IncomingMessage, stored: StoredMessage) -> StoredMessage:
    """The job of a reply: the message with the text it quotes above it, to be answered."""
    quote = await find_quote(services, message) if message.reply_to is not None else None
    text = quoted_question(quote, stored.text) if quote is not None else stored.text
    return await services.history.record_transcript(stored, text)


def may_reply(services: Services, stored: StoredMessage) -> bool:
    """Whether a chat message taken up after a restart may be a reply whose quote is not written
    down yet (the last run stopped before it was): Telegram is asked again (`with_quote_again`);
    a photo's question is quoted by its photos' reply headers alone."""
    feature = services.features.quotes
    return (
        feature is not None
        and (feature.telegram is not None or photos.asks_about_images(stored))
        and stored.kind == "chat"
        and stored.telegram_message_id is not None
        and not has_quote(stored.text)
        and stored.text != CONTINUE_REQUEST
    )


async def with_quote_again(services: Services, message: IncomingMessage, stored: StoredMessage) -> StoredMessage:
    """`with_quote` for a chat message resumed after a restart, its quote not written yet: by the
    reply header written down when it arrived; Telegram is asked only for a message stored before
    headers were (one that is not a reply costs no call)."""
    if photos.asks_about_images(stored):
        # By its photos' headers; recorded as `with_quote` does (this attempt is the answer's).
        question = await with_quote_of_images(services, message, stored)
        return await services.history.record_transcript(stored, question.text)
    feature = services.features.quotes
    assert feature is not None and feature.telegram is not None
    header = await feature.headers.of(stored)
    if header is not None and header.reply_to is not None:
        message = replace(message, reply_to=header.reply_to, quote=header.quote)
    elif header is not None:
        try:
            asked = await feature.telegram.reply_of(message.chat_id, message.message_id)
        except UpstreamError as error:
            log.warning("could not read again what message %s in chat %s replies to: %s", message.message_id, message.chat_id, error)
            asked = None
        if asked is not None:
            message = replace(message, reply_to=asked[0], quote=asked[1])
    return await with_quote(services, message, stored)


async def find_quote(services: Services, message: IncomingMessage) -> Quote | None:
    feature = services.features.quotes
    if feature is None or message.reply_to is None:
        return None
    stored = await feature.stored.by_telegram_id(message.chat_id, message.reply_to)
    author: Author = "someone"
    if stored is not None:
        author = "bot" if stored.from_bot else "user" if stored.user_id == message.user_id else "someone"
    if message.quote and message.quote.strip():
        return Quote(message.quote, author)
    if stored is not None and stored.text.strip():
        return Quote(stored.text, author)
    if feature.telegram is None:
        return None
    try:
        return await feature.telegram.replied_to(message.chat_id, message.message_id)
    except UpstreamError as error:
        log.warning("could not fetch the message %s replies to in chat %s: %s", message.message_id, message.chat_id, error)
        return None


def quoted_question(quote: Quote, question: str) -> str:
    """The question as the model reads it: whose words are quoted, the quote (bounded), then the question."""
    whose = {"bot": "your earlier message", "user": "my earlier message"}.get(quote.author)
    if whose is None:
        whose = f"a message from {quote.name}" if quote.name else "an earlier message"
    lines = "\n".join(f"> {line}" for line in bounded(quote.text).splitlines())
    return f"{QUOTED_MARK}{whose}:]\n{lines}\n\n{question}"


def bounded(text: str) -> str:
    """At most QUOTE_MAX_CHARS characters, cut at a word, saying so."""
    text = text.strip()
    if len(text) <= QUOTE_MAX_CHARS:
        return text
    return text[:QUOTE_MAX_CHARS].rsplit(" ", 1)[0] + " […]"
