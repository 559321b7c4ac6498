"""The small interface between handlers and a chat transport (Telegram or the console).

Handlers receive `IncomingMessage`s and answer through `Transport`; only the Telegram transport
imports Telethon. Transports raise project error types (`integrations.errors`): a Telegram flood
wait becomes `RateLimited` with `retry_after`, so the flood governor can understand it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, Protocol, Sequence

from handlers.richtext import RichText
from integrations.errors import BadRequest


@dataclass
class ReplyTrace:
    """Where a stored message's reply is shown: every message the bot sends for it is recorded
    under `stored_id`, and a reply resumed after a restart takes over the `earlier` ones (once)."""

    stored_id: int
    earlier: list[int] = field(default_factory=list)

    def take_earlier(self) -> list[int]:
        taken, self.earlier = self.earlier, []
        return taken


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
    # What the message carried besides text that the bot cannot read yet ("voice message", "photo").
    attachment: str | None = None
    # When the user sent it (Telegram's date); None where the transport does not say (the console).
    sent_at: datetime | None = None
    # Set once the message is stored: its reply's messages are recorded there.
    trace: ReplyTrace | None = field(default=None, compare=False)


class DraftsUnsupported(BadRequest):
    """This chat (or this transport) cannot show a native draft preview: fall back to edits."""


MessageHandler = Callable[[IncomingMessage], Awaitable[None]]


class Transport(Protocol):
    name: str

    async def send(self, chat_id: int, text: RichText, *, reply_to: int | None = None, preview: bool = False) -> int:
        """Send a message and return its id. A `preview` (part of a streaming reply that newer text
        will replace) may be deferred by a busy transport with `PreviewDeferred`; nothing else may."""
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
