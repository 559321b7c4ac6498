"""Answering a chat message: history in, streamed reply out, answer stored."""
from __future__ import annotations

import asyncio
import logging

from handlers.lanes import SHUTDOWN
from handlers.reply import open_stream
from handlers.services import Services
from handlers.transport import IncomingMessage
from integrations.chain import AllModelsFailed, Completed, ModelTookOver, TextDelta
from integrations.errors import UpstreamError
from integrations.llm import ModelRef
from state.history import StoredMessage

log = logging.getLogger(__name__)

STOPPED_NOTE = "\n\n_(stopped)_"
INTERRUPTED_NOTE = "\n\n_(interrupted: the bot is restarting; I'll answer this again when it is back)_"


def takeover_marker(event: ModelTookOver, text_so_far: str) -> str:
    space = "" if not text_so_far or text_so_far[-1].isspace() else " "
    return f"{space}_[continued by {event.model}]_ "


def failure_text(error: AllModelsFailed) -> str:
    if not error.failures:
        return (
            "No language model is configured, so I cannot answer yet. "
            "The operator can set ANTHROPIC_API_KEY or OPENAI_API_KEY (or enable the offline model)."
        )
    reasons = "; ".join(f"{f.model.model}: {_short_reason(f.error)}" for f in error.failures)
    if error.partial_text:
        return f"{error.partial_text}\n\n⚠️ _The answer was cut off: every model failed ({reasons})._"
    return (
        f"Sorry, I could not get an answer: every model failed ({reasons}). "
        "Your message is saved; please send it again in a minute."
    )


def _short_reason(error: UpstreamError) -> str:
    return error.message[:80]


async def answer(services: Services, message: IncomingMessage, stored: StoredMessage) -> None:
    stream = open_stream(services, message)
    text = ""
    model: ModelRef | None = None
    try:
        context = await services.history.context_for(stored)
        preferred_name = await services.preferences.model_for(message.user_id)
        preferred = services.chain.find(preferred_name) if preferred_name else None
        stream.start()
        async for event in services.chain.stream(
            context, system=services.chat.system_prompt, max_tokens=services.chat.max_tokens, preferred=preferred
        ):
            if isinstance(event, TextDelta):
                text += event.text
                stream.update(text)
            elif isinstance(event, ModelTookOver):
                text += takeover_marker(event, text)
                stream.update(text)
            elif isinstance(event, Completed):
                model = event.model
                if event.marker:
                    text += f"\n\n_{event.marker}_"
                await _record_usage(services, message, event.usage)
    except asyncio.CancelledError:
        # Keep what was shown and say why it stopped. A second cancel (a shutdown out of time)
        # is not caught here.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if services.lanes.cancel_reason(message.chat_id) == SHUTDOWN:
            # Left pending on purpose: the message is answered in full after the restart.
            await stream.finish((text or "…") + INTERRUPTED_NOTE)
            return
        final = (text or "…") + STOPPED_NOTE
        await stream.finish(final)
        await services.history.record_answer(stored, text or "(stopped before answering)", str(model or "cancelled"))
        return
    except AllModelsFailed as error:
        log.warning("no model answered in chat %s: %s", message.chat_id, error)
        await _record_usage(services, message, error.usage)
        await stream.finish(failure_text(error))
        if error.partial_text:
            await services.history.record_answer(stored, error.partial_text, "partial")
        else:
            await services.history.mark_failed(stored)
        return
    await stream.finish(text)
    await services.history.record_answer(stored, text, str(model))


async def _record_usage(services: Services, message: IncomingMessage, usage) -> None:
    recorder = services.extras.get("usage")
    if recorder is not None:
        await recorder.record(message.user_id, usage)
