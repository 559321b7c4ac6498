"""One-shot replies (command answers, notices) share the reply stream's delivery guarantees."""
from __future__ import annotations

import asyncio

from handlers.services import Services
from handlers.stream import ReplyStream
from handlers.transport import IncomingMessage


def open_stream(services: Services, message: IncomingMessage) -> ReplyStream:
    """A reply to `message`. Once the message is stored, every message the reply sends is recorded
    with it, and the first reply after a restart takes over what an earlier attempt showed."""
    trace = message.trace
    on_sent = None
    if trace is not None:
        stored_id = trace.stored_id

        async def on_sent(message_id: int) -> None:
            # Shielded: a cancel (a /cancel, a shutdown) landing here must not lose the record of a
            # message the user already sees, or the answer after the restart would not replace it.
            await asyncio.shield(services.history.record_shown(stored_id, [message_id]))

    return ReplyStream(
        services.transport,
        services.clock,
        message.chat_id,
        reply_to=None if message.is_private else message.message_id,
        use_drafts=message.is_private,
        pacing=services.pacing,
        earlier_ids=trace.take_earlier() if trace is not None else (),
        on_sent=on_sent,
    )


async def reply(services: Services, message: IncomingMessage, markdown: str) -> list[int]:
    return await open_stream(services, message).finish(markdown)
