"""One-shot replies (command answers, notices) share the reply stream's delivery guarantees."""
from __future__ import annotations

from handlers.services import Services
from handlers.stream import ReplyStream
from handlers.transport import IncomingMessage


def open_stream(services: Services, message: IncomingMessage) -> ReplyStream:
    return ReplyStream(
        services.transport,
        services.clock,
        message.chat_id,
        reply_to=None if message.is_private else message.message_id,
        use_drafts=message.is_private,
        pacing=services.pacing,
    )


async def reply(services: Services, message: IncomingMessage, markdown: str) -> list[int]:
    return await open_stream(services, message).finish(markdown)
