"""One-shot replies (command answers, notices) share the reply stream's delivery guarantees."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence

from handlers.services import Services
from handlers.stream import ReplyStream
from handlers.transport import IncomingMessage, send_key

# Reply-stream numbers of notices sent outside the message's stored lifecycle (streams of a
# stored message count up from 0): one for "could not store", one for a note's outcome, one for a
# voice message's transcript and one for "transcription failed, trying again later".
NOT_STORED_STREAM = -1
NOTE_OUTCOME_STREAM = -2
TRANSCRIPT_STREAM = -3
TRANSCRIPTION_DELAYED_STREAM = -4
# A document's notices: where it was cut, and that fetching it will be tried again.
DOCUMENT_CUT_STREAM = -7
DOCUMENT_DELAYED_STREAM = -8
# A photo's notice: fetching it from Telegram will be tried again.
PHOTO_DELAYED_STREAM = -9


def open_stream(services: Services, message: IncomingMessage) -> ReplyStream:
    """A reply to `message`. Once the message is stored, every message the reply sends is recorded
    with it, and the first reply after a restart takes over what an earlier attempt showed."""
    trace = message.trace
    if trace is None:
        return _stream(services, message)
    stored_id = trace.stored_id

    async def on_sent(message_id: int) -> None:
        # Shielded: a cancel (a /cancel, a shutdown) landing here must not lose the record of a
        # message the user already sees, or the answer after the restart would not replace it.
        await asyncio.shield(services.history.record_shown(stored_id, [message_id]))

    return _stream(
        services,
        message,
        earlier_ids=trace.take_earlier(),
        on_sent=on_sent,
        stream=trace.next_stream(),
        resumed=trace.resumed,
    )


async def reply(services: Services, message: IncomingMessage, markdown: str) -> list[int]:
    return await open_stream(services, message).finish(markdown)


async def notify_once(services: Services, message: IncomingMessage, markdown: str, *, stream: int) -> list[int]:
    """A notice about `message` that the chat shows once however often it is sent (Telegram may
    hand out a message again; a notice may be sent again after a crash). Each kind of notice
    has its own `stream` number, so one never stands in for another."""
    return await _stream(services, message, stream=stream).finish(markdown)


def _stream(
    services: Services,
    message: IncomingMessage,
    *,
    earlier_ids: Sequence[int] = (),
    on_sent: Callable[[int], Awaitable[None]] | None = None,
    stream: int | None = None,
    resumed: bool = False,
) -> ReplyStream:
    key_of_part = None
    if stream is not None and message.message_id > 0:

        def key_of_part(part: int) -> int:
            return send_key(message.chat_id, message.message_id, stream, part)

    return ReplyStream(
        services.transport,
        services.clock,
        message.chat_id,
        reply_to=None if message.is_private else message.message_id,
        use_drafts=message.is_private,
        pacing=services.pacing,
        earlier_ids=earlier_ids,
        on_sent=on_sent,
        send_key=key_of_part,
        resumed=resumed,
    )
