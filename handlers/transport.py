"""The small interface between handlers and a chat transport (Telegram or the console).

Handlers receive `IncomingMessage`s and answer through `Transport`; only the Telegram transport
imports Telethon. Transports raise project error types (`integrations.errors`): a Telegram flood
wait becomes `RateLimited` with `retry_after`, so the flood governor can understand it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, Literal, Protocol, Sequence, runtime_checkable

from handlers.richtext import RichText
from integrations.errors import BadRequest


@dataclass
class ReplyTrace:
    """Where a stored message's reply is shown: every message the bot sends for it is recorded
    under `stored_id`, and a reply resumed after a restart takes over the `earlier` ones (once).

    `resumed` says an earlier attempt may have sent messages that were never recorded (the
    process died between Telegram accepting a send and the record): sends are then keyed so that
    Telegram shows the earlier message instead of a second one (see `send_key`)."""

    stored_id: int
    earlier: list[int] = field(default_factory=list)
    resumed: bool = False
    _streams_opened: int = 0

    def take_earlier(self) -> list[int]:
        taken, self.earlier = self.earlier, []
        return taken

    def next_stream(self) -> int:
        """The ordinal of the next reply stream for this message: 0, 1, … in the order they open,
        the same in every attempt that takes the same path."""
        ordinal = self._streams_opened
        self._streams_opened += 1
        return ordinal


def send_key(chat_id: int, message_id: int, stream: int, part: int) -> int:
    """The idempotency key of one message the bot sends in answer to one user message.

    Telegram remembers the `random_id` of every send for good and answers a repeated one with the
    message it already made, so a send repeated after a crash cannot show twice. The key depends
    only on what never changes for that reply (the chat, the user's message id, which is never
    reused in a chat, the reply stream and the part), never on our own database, which a restore
    or a fresh state directory could renumber. A non-zero signed 64-bit number, as Telegram takes.
    """
    digest = hashlib.blake2b(f"switchboard-reply:{chat_id}:{message_id}:{stream}:{part}".encode(), digest_size=8)
    key = int.from_bytes(digest.digest(), "big", signed=True)
    return key or 1


# What a user calls a voice note and an audio file (the words the bot's replies use for them).
VOICE_MESSAGE = "voice message"
AUDIO_FILE = "audio file"

# A photo, or a file Telegram says is an image (not a sticker): what a vision model can look at.
PHOTO = "photo"
IMAGE_FILE = "image"

MediaKind = Literal["voice", "audio", "image", "other"]


@dataclass(frozen=True)
class Media:
    """What a message carries besides text, as the transport describes it before anything is
    downloaded (Telegram's metadata): enough to refuse a file that is too long or too large."""

    kind: MediaKind
    # In a user's words: "voice message", "audio file", "photo".
    words: str
    duration: float | None = None  # seconds
    size: int | None = None  # bytes
    mime_type: str | None = None
    file_name: str | None = None
    # Telegram's grouped_id: the photos of one album share it (each arrives as its own message).
    group: int | None = None

    @property
    def is_audio(self) -> bool:
        return self.kind in ("voice", "audio")

    @property
    def is_image(self) -> bool:
        return self.kind == "image"


class MediaSource(Protocol):
    """Fetches what a user's message carried, by chat and message id: also after a restart, when
    only the stored message is left (only the Telegram transport has one)."""

    async def describe(self, chat_id: int, message_id: int) -> Media | None:
        """The message's media as it is now; None when the message (or its media) is gone."""
        ...

    async def download(self, chat_id: int, message_id: int) -> bytes:
        """The media's bytes; raises UpstreamError (BadRequest when the message is gone)."""
        ...


@dataclass(frozen=True)
class IncomingMessage:
    chat_id: int
    user_id: int
    message_id: int
    text: str
    is_private: bool = True
    # In groups the bot answers only when mentioned or replied to; the transport decides that.
    addressed_to_bot: bool = True
    user_name: str = ""
    # What the message carried besides text, in a user's words ("voice message", "photo").
    attachment: str | None = None
    # When the user sent it (Telegram's date); None where the transport does not say (the console).
    sent_at: datetime | None = None
    # Set once the message is stored: its reply's messages are recorded there.
    trace: ReplyTrace | None = field(default=None, compare=False)
    # The attachment described (kind, duration, size), where the transport knows it.
    media: Media | None = None
    # The message this one replies to (Telegram's reply_to_msg_id), and the part of it the user
    # quoted (Telegram's quote_text), where the transport knows them.
    reply_to: int | None = None
    quote: str | None = None


class DraftsUnsupported(BadRequest):
    """This chat (or this transport) cannot show a native draft preview: fall back to edits."""


MessageHandler = Callable[[IncomingMessage], Awaitable[None]]


class Transport(Protocol):
    name: str

    async def send(
        self, chat_id: int, text: RichText, *, reply_to: int | None = None, preview: bool = False, key: int | None = None
    ) -> int:
        """Send a message and return its id. A `preview` (part of a streaming reply that newer text
        will replace) may be deferred by a busy transport with `PreviewDeferred`; nothing else may.
        A send with a `key` that was sent before returns the message it made then (which may show
        older text) instead of making another; a transport without such memory ignores the key."""
        ...

    async def edit(self, chat_id: int, message_id: int, text: RichText, *, preview: bool = False) -> None:
        """Replace a sent message's text. An unchanged text is not an error."""
        ...

    async def draft(self, chat_id: int, draft_id: int, text: RichText) -> None:
        """Show a live draft preview; raises DraftsUnsupported where there is none."""
        ...

    async def typing(self, chat_id: int) -> None: ...

    async def delete(self, chat_id: int, message_ids: Sequence[int]) -> None:
        """Remove the bot's own messages (a stale partial reply); best effort, may raise UpstreamError."""
        ...


@runtime_checkable
class PreviewGate(Protocol):
    """Optional for a Transport: a reply stream asks it before rendering a preview."""

    def takes_preview(self, chat_id: int) -> bool:
        """Whether a preview for this chat would be taken now rather than deferred or held (a
        cheap check; no call is made). A transport without this method takes every preview."""
        ...
