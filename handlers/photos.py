"""Photos and image files: looked at by a model that can see, with the caption as the question.

A photo (or an image sent as a file) is stored like any medium and noted in the image store
(`arrived`). An album arrives as one message per photo, each its own update; the first one to
arrive gets the job (`look`), the others only join its album. The job waits until no photo of
the album has arrived for `ALBUM_QUIET` seconds (on the injected clock), then:

1. Refusals, each a clear reply before anything is downloaded: no model of the chain can see
   images; more images than `max_images`; an image larger than `max_bytes` by Telegram's own
   figure; the user's limits (budget, message rate).
2. Every image is downloaded from Telegram and read (`integrations.images`). A download that
   fails in a way that may pass tells the user once, and the message is left for the router's
   safety net (`voice.AnswerLater`), a few minutes later; the last attempt ends it with a note.
3. The album becomes one question (`ImageStore.settle`): one stored message, kind 'chat', with
   the text "[photo]" (or "[3 photos]") and the caption, or a default question without one. The
   router answers it like a typed message; `with_images` hands the images to its last turn.

In a group the bot answers only what names it (a mention, a reply to it): of an album, only the
photo whose caption names it does. Its other photos count too (`joins_addressed_album`,
`take_strays`): those arriving before it are kept in memory for a few seconds, those after join.

What the conversation keeps: the placeholder and the caption, never the image. Later turns carry
"[photo]\\nWhat is this?" as the user's words, so a follow-up question is understood without
sending (and paying for) the image again each turn. Asking again (/retry, or an answer resumed
after a restart) fetches the images again from Telegram, which keeps them (`asked_with_images`):
a download that fails in a way that may pass is told once and left for the safety net, as on the
first attempt; one that cannot pass ends the message with a note (`ImagesUnavailable`).

Images downloaded for a question wait in memory (`keep_ready`) only until its answer takes them;
whatever becomes of the answer, the router's lifecycle `release`s them at its end.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

from handlers.reply import PHOTO_DELAYED_STREAM, notify_once, reply
from handlers.services import Services
from handlers.transport import IMAGE_FILE, PHOTO, IncomingMessage, MediaSource
from handlers.voice import AnswerLater
from integrations.chain import ModelChain
from integrations.clock import Clock
from integrations.errors import UpstreamError
from integrations.images import Image, UnreadableImage, read_image
from integrations.llm import ChatMessage
from integrations.local_model.bundle import LOCAL_PROVIDER
from state.history import StoredMessage
from state.images import ImageStore, StoredImage

log = logging.getLogger(__name__)

# Seconds without a new photo of an album after which it is taken as complete (Telegram hands
# out an album's messages within a second of each other).
ALBUM_QUIET = 2.0

# How long a group's album photo that did not name the bot is kept, waiting for one that does.
STRAY_SECONDS = 10.0

# How a photo's question opens: "[photo]", "[image]", "[3 photos]" (see `_question_text`).
_PLACEHOLDER = re.compile(rf"^\[({PHOTO}|{IMAGE_FILE}|\d+ photos)\](\n|$)")

DEFAULT_QUESTION = "What is in this photo?"
DEFAULT_ALBUM_QUESTION = "What is in these photos?"

NO_VISION = (
    "I can't look at this {what}: none of the models I use here can see images{offline}. "
    "Please describe it in words and I'll answer that."
)
OFFLINE_CANNOT = " (the small offline model can't)"
TOO_MANY = "This album has {count} images; I can look at up to {limit} at once. Please send them in smaller albums."
TOO_LARGE = "This {what} is {size}; I can look at images of up to {limit}. Please send a smaller one."
UNREADABLE = "I couldn't read this {what} as an image. Please send it as an ordinary photo (JPEG or PNG)."
GONE = "I can't fetch this {what} from Telegram any more (was it deleted?), so I haven't answered it. Please send it again."
NOT_NOW = "⚠️ I couldn't fetch this {what} from Telegram just now. I'll try again by myself in a few minutes; there's no need to send it again."
GAVE_UP = "Sorry, I still couldn't fetch this {what} from Telegram after {attempts} tries. Please send it again later."


@dataclass
class PhotoFeature:
    """Photos answered by a vision model: where the images come from, where they are noted, limits."""

    media: MediaSource
    store: ImageStore
    clock: Clock
    max_bytes: int = 20 * 1024 * 1024
    max_images: int = 10
    # Albums with a job waiting for their last photo: when the newest photo arrived.
    _albums: dict[tuple[int, int], float] = field(default_factory=dict)
    # Images downloaded by a job, until its question's answer takes them (by question id).
    _ready: dict[int, tuple[Image, ...]] = field(default_factory=dict)
    # Photos of a group's album that did not name the bot, kept a moment in case one that does
    # follows (by album: when each came, and the message).
    _strays: dict[tuple[int, int], list[tuple[float, IncomingMessage]]] = field(default_factory=dict)

    def joins_addressed_album(self, message: IncomingMessage) -> bool:
        """Whether a photo that does not name the bot (in a group) belongs to an album whose photo
        that did has a job waiting; if not, it is kept for STRAY_SECONDS (`take_strays`)."""
        media = message.media
        if media is None or not media.is_image or media.group is None:
            return False
        key = (message.chat_id, media.group)
        if key in self._albums:
            return True
        now = self.clock.monotonic()
        self._strays = {k: held for k, held in self._strays.items() if now - held[-1][0] < STRAY_SECONDS}
        self._strays.setdefault(key, []).append((now, message))
        return False

    def take_strays(self, message: IncomingMessage) -> list[IncomingMessage]:
        """The photos of `message`'s album that arrived before it without naming the bot."""
        media = message.media
        if media is None or media.group is None:
            return []
        return [held for _, held in self._strays.pop((message.chat_id, media.group), [])]

    async def arrived(self, message: IncomingMessage, stored: StoredMessage) -> bool:
        """Note an image message (just stored, or found pending at start); True if it needs a job
        of its own, False if it joins an album whose job is waiting."""
        image = await self.store.find(stored)
        if image is None:
            media = message.media
            if media is None:  # stored just before a crash: Telegram describes it again
                try:
                    media = await self.media.describe(stored.chat_id, stored.telegram_message_id or 0)
                except UpstreamError as error:
                    log.warning("could not describe message %s in chat %s: %s", stored.id, stored.chat_id, error)
            await self.store.note(stored, album=media.group if media else None, size=media.size if media else None)
            image = await self.store.find(stored)
        if image is None or image.album is None:
            return True
        key = (image.chat_id, image.album)
        joins = key in self._albums
        self._albums[key] = self.clock.monotonic()
        return not joins

    async def album_complete(self, image: StoredImage) -> None:
        """Wait until no photo of `image`'s album arrived for ALBUM_QUIET seconds."""
        if image.album is None:
            return
        key = (image.chat_id, image.album)
        while True:
            left = self._albums.get(key, 0.0) + ALBUM_QUIET - self.clock.monotonic()
            if left <= 0:
                self._albums.pop(key, None)
                return
            await self.clock.sleep(left)

    def keep_ready(self, question: StoredMessage, images: tuple[Image, ...]) -> None:
        """Images downloaded for `question`, for its answer to take (not downloaded twice)."""
        self._ready[question.id] = images

    def release(self, message_id: int) -> None:
        """Forget the images kept for a question whose answer ended (or never began) without them."""
        self._ready.pop(message_id, None)

    async def download(self, images: Sequence[StoredImage]) -> tuple[Image, ...]:
        """Each image fetched from Telegram and read (decoding takes CPU time: in a thread, so
        that other chats' replies go on meanwhile)."""
        read = []
        for image in images:
            data = await self.media.download(image.chat_id, image.telegram_message_id)
            read.append(await asyncio.to_thread(read_image, data))
        return tuple(read)

    async def with_images(self, question: StoredMessage, context: list[ChatMessage]) -> list[ChatMessage]:
        """`context` with `question`'s images on its last turn (the question), if it has any."""
        if not asks_about_images(question):
            return context  # not a photo's question: no need to look in the store
        images = self._ready.pop(question.id, None)
        if images is None:
            stored = await self.store.asked_with(question.id)
            images = await self.download(stored) if stored else ()
        if not images or not context or context[-1].role != "user":
            return context
        return [*context[:-1], replace(context[-1], images=images)]


class ImagesUnavailable(Exception):
    """A photo's question asked again whose images cannot be had any more: `note` tells the user."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


async def asked_with_images(
    services: Services, message: IncomingMessage, answering: StoredMessage, question: StoredMessage, context: list[ChatMessage]
) -> list[ChatMessage]:
    """`PhotoFeature.with_images` for the answer to `answering` (the question itself, or a /retry
    of it); a download that fails as on the first attempt: told once and left for later
    (`AnswerLater`), or, when it cannot pass (or on the last attempt), `ImagesUnavailable`."""
    feature = services.features.photos
    if feature is None:
        return context
    what = _what_was_asked(question)
    try:
        return await feature.with_images(question, context)
    except UnreadableImage as error:
        log.info("message %s in chat %s: its image no longer reads (%s)", question.id, question.chat_id, error)
        raise ImagesUnavailable(UNREADABLE.format(what=what)) from None
    except UpstreamError as error:
        log.warning("could not download again the images of message %s in chat %s: %s", question.id, question.chat_id, error)
        if not error.retryable:
            raise ImagesUnavailable(GONE.format(what=what)) from None
        attempt = answering.attempts + 1  # the answer began this attempt
        if attempt >= services.chat.max_attempts:
            raise ImagesUnavailable(GAVE_UP.format(what=what, attempts=attempt)) from None
        await notify_once(services, message, NOT_NOW.format(what=what), stream=PHOTO_DELAYED_STREAM)
        raise AnswerLater(f"image download failed: {error}") from None


def _what_was_asked(question: StoredMessage) -> str:
    """"photo", "image" or "album", from the question's placeholder."""
    match = _PLACEHOLDER.match(question.text)
    placeholder = match.group(1) if match else PHOTO
    return placeholder if placeholder in (PHOTO, IMAGE_FILE) else "album"


def asks_about_images(question: StoredMessage) -> bool:
    """Whether a chat question was made of photos (its text opens with their placeholder)."""
    return _PLACEHOLDER.match(question.text) is not None


def split_placeholder(text: str) -> tuple[str, str]:
    """A photo's question as its placeholder line ("[photo]\\n") and what was asked; ("", text)
    for any other text. A quote goes between them: the placeholder must stay first."""
    match = _PLACEHOLDER.match(text)
    if match is None:
        return "", text
    return text[: match.end()], text[match.end() :]


def stored_as_image(stored: StoredMessage) -> bool:
    """Whether a stored medium is a photo or image file not yet asked about."""
    return stored.kind == "media" and stored.text.partition("\n")[0] in (f"[{PHOTO}]", f"[{IMAGE_FILE}]")


async def look(services: Services, message: IncomingMessage, stored: StoredMessage) -> StoredMessage | None:
    """The job of a photo (or of an album, run for its first photo): the question to answer, with
    the images ready for `with_images`, or None when it ended here with a note."""
    feature = services.features.photos
    assert feature is not None  # the router gives this job only when photos are on
    image = await feature.store.find(stored)
    if image is None:  # noted when it arrived; only a fault of the store gets here
        raise LookupError(f"message {stored.id} carries no image on record")
    await feature.album_complete(image)
    images = await feature.store.unsettled_album(image)
    if stored.id not in [i.message_id for i in images]:
        images = [image, *images]
    what = _what(images, stored)
    refusal = await _refusal(services, feature, message, images, what)
    if refusal is not None:
        await _ending(services, feature, message, stored, images, refusal)
        return None
    try:
        downloaded = await feature.download(images)
    except UnreadableImage as error:
        log.info("message %s in chat %s: not an image Pillow reads (%s)", stored.id, stored.chat_id, error)
        await _ending(services, feature, message, stored, images, UNREADABLE.format(what=what))
        return None
    except UpstreamError as error:
        await _download_failed(services, feature, message, stored, images, what, error)
        return None
    question = await feature.store.settle(stored, images, _question_text(images, stored))
    feature.keep_ready(question, downloaded)
    return question


def _what(images: Sequence[StoredImage], stored: StoredMessage) -> str:
    if len(images) > 1:
        return "album"
    return stored.text.partition("\n")[0].strip("[]") or PHOTO


def _question_text(images: Sequence[StoredImage], stored: StoredMessage) -> str:
    """What the conversation keeps of the question: a placeholder for the images, then the caption
    (an album's captions, in order), or a default question."""
    own_caption = stored.text.partition("\n")[2].strip()
    captions = [i.caption for i in images if i.caption] or ([own_caption] if own_caption else [])
    if len(images) > 1:
        return f"[{len(images)} photos]\n" + ("\n".join(captions) or DEFAULT_ALBUM_QUESTION)
    placeholder = stored.text.partition("\n")[0] or f"[{PHOTO}]"
    return f"{placeholder}\n" + ("\n".join(captions) or DEFAULT_QUESTION)


async def _refusal(
    services: Services, feature: PhotoFeature, message: IncomingMessage, images: Sequence[StoredImage], what: str
) -> str | None:
    """The reply instead of an answer, judged before anything is downloaded, or None."""
    blind = no_vision_note(services.chain, what)
    if blind is not None:
        return blind
    if len(images) > feature.max_images:
        return TOO_MANY.format(count=len(images), limit=feature.max_images)
    for image in images:
        if image.size is not None and image.size > feature.max_bytes:
            return TOO_LARGE.format(what=what, size=_megabytes(image.size), limit=_megabytes(feature.max_bytes))
    return await services.limits.check(message.user_id)


def no_vision_note(chain: ModelChain, what: str) -> str | None:
    """The reply when no model of `chain` can see images (naming the offline model when it is
    there: it is the one a user without cloud keys has), else None."""
    if chain.sees_images():
        return None
    offline = OFFLINE_CANNOT if any(model.ref.provider == LOCAL_PROVIDER for model in chain.models) else ""
    return NO_VISION.format(what=what, offline=offline)


async def _download_failed(
    services: Services,
    feature: PhotoFeature,
    message: IncomingMessage,
    stored: StoredMessage,
    images: Sequence[StoredImage],
    what: str,
    error: UpstreamError,
) -> None:
    log.warning("could not download the images of message %s in chat %s: %s", stored.id, stored.chat_id, error)
    if not error.retryable:
        await _ending(services, feature, message, stored, images, GONE.format(what=what))
        return
    attempt = stored.attempts + 1  # the router began this attempt
    if attempt >= services.chat.max_attempts:
        await _ending(services, feature, message, stored, images, GAVE_UP.format(what=what, attempts=attempt))
        return
    # Once, however many tries follow: the notice has its own key.
    await notify_once(services, message, NOT_NOW.format(what=what), stream=PHOTO_DELAYED_STREAM)
    raise AnswerLater(f"image download failed: {error}")


async def _ending(
    services: Services,
    feature: PhotoFeature,
    message: IncomingMessage,
    stored: StoredMessage,
    images: Sequence[StoredImage],
    note: str,
) -> None:
    """End the message (and its album) as failed, with `note` for the user."""
    await feature.store.end_unsettled(images, stored, note)
    await reply(services, message, note)
    await services.history.mark_failed(stored, note[:200])


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"

