"""Answering a chat message: history in, streamed reply out, answer stored."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence, TypeVar

from handlers import photos
from handlers.compaction import Asked
from handlers.idle_reset import fresh_start_note
from handlers.lanes import USER_CANCEL
from handlers.modes import chat_prompt
from handlers.reply import open_stream
from handlers.services import Services
from handlers.stream import ReplyStream
from handlers.transport import IncomingMessage
from handlers.voice import AnswerLater
from integrations.chain import AllModelsFailed, Completed, ModelTookOver, TextDelta, drop_overlap
from integrations.errors import CircuitOpen, UpstreamError
from integrations.llm import ChatMessage, ModelRef, Usage
from integrations.model_policy import is_account_error
from integrations.usage_meter import UsageMeter
from state.history import StoredMessage

log = logging.getLogger(__name__)

T = TypeVar("T")

STOPPED_NOTE = "\n\n_(stopped)_"
CUT_NOTE = "\n\n_(This answer reached its length limit. Send /continue for the rest.)_"
# What /continue (or a bare "continue") asks the model, as the conversation keeps it.
CONTINUE_REQUEST = "Continue your previous answer exactly where it stopped, without repeating any of it."
INTERRUPTED_NOTE = "\n\n_(interrupted: the bot is restarting; I'll answer this again when it is back)_"


def takeover_marker(event: ModelTookOver, text_so_far: str) -> str:
    space = "" if not text_so_far or text_so_far[-1].isspace() else " "
    return f"{space}_[continued by {event.model}]_ "


def fallback_footer(started_by: ModelRef, intended: ModelRef | None, *, why: str = "was unavailable") -> str:
    """Names the model that answered when it is not the one asked first (the user's pick or the
    chain's first) because that one failed before its first token. Shown, never kept in history;
    a handover mid-answer has its own marker (`takeover_marker`), and a model with a marker of its
    own (the offline model) says what it is there."""
    if intended is None or started_by == intended:
        return ""
    return f"\n\n_— answered by {started_by} ({intended} {why})_"


@dataclass(frozen=True)
class Turn:
    """What an answer answers: a chat question (the stored message itself, or the earlier one a
    /retry answers again, replacing its answer), and the model to ask first (None: the user's)."""

    question: StoredMessage
    model: ModelRef | None = None


# What a command answered like a chat message plans: a turn to answer, or a short reply instead.
TurnPlan = Callable[[], Awaitable["Turn | str"]]


@dataclass(frozen=True)
class Generated:
    """An answer as it is stored: the final text shown, its words as the history keeps them, the
    model, what it used (recorded with the answer), and what it was asked (for compaction; None
    for an answer cut short, which compaction does not follow)."""

    shown: str
    words: str
    model: str
    usage: Sequence[tuple[ModelRef, Usage]]
    asked: Asked | None


def failure_text(error: AllModelsFailed) -> str:
    if not error.failures:
        return (
            "No language model is configured, so I cannot answer yet. "
            "The operator can set ANTHROPIC_API_KEY or OPENAI_API_KEY (or enable the offline model)."
        )
    if not error.partial_text and all(_needs_the_operator(f.error) for f in error.failures):
        # Waiting cannot help, and which key is refused is the operator's business: they are told
        # (handlers/operator_alerts.py), naming the setting.
        return (
            "Sorry, I can't answer right now: the bot's access to its AI models needs fixing. "
            "The operator has been told; please try again later."
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


def _needs_the_operator(error: UpstreamError) -> bool:
    """A refused key or an account out of credit, or the provider's breaker those opened (named
    'provider <name>' in bot/app.py; it counts nothing else)."""
    return is_account_error(error) or (isinstance(error, CircuitOpen) and error.upstream.startswith("provider "))


SOMETHING_WENT_WRONG = (
    "Sorry, something went wrong on my side while answering this, so I stopped. "
    "The operator can see what happened in the log. Please send it again later."
)


async def answer(services: Services, message: IncomingMessage, stored: StoredMessage, plan: TurnPlan | None = None) -> None:
    """Take `stored` to the end of its lifecycle, whatever happens: exactly one final reply the
    user sees (the answer, or one clear error), written down before or together with it.
    `plan` says what to answer when it is not `stored` itself (a /retry), or replies instead.

    A user's /cancel stops the generation only: once the answer (or the error) is known, the
    lane stops taking user cancels, and one asked for a moment earlier is absorbed, so the
    ending is never cut in half. A shutdown may stop it anywhere; the restart takes it up."""
    stream = open_stream(services, message)
    answered: Generated | None = None
    try:
        if stored.status == "delivering" and stored.reply_text is not None:
            # Generated before a restart: only its delivery is left; the model is not asked again.
            await _deliver(services, stream, stored, stored.reply_text)
            return
        turn = Turn(stored) if plan is None else await plan()
        if isinstance(turn, str):
            await _deliver(services, stream, stored, turn)
            return
        generated = await _generate(services, message, stored, stream, turn)
        if generated is not None:
            await _despite_user_cancel(services, stored, lambda: _store_answer(services, message, stored, turn, generated))
            await _deliver(services, stream, stored, generated.shown)
            answered = generated
    except AnswerLater:
        raise  # left for the router's safety net, the user told (a photo Telegram did not hand over)
    except Exception as error:  # a bug or a storage fault: the user hears of it, never silence
        if isinstance(error, photos.ImagesUnavailable):
            log.warning("message %s in chat %s not answered: %s", stored.id, message.chat_id, error)
        else:
            log.exception("answering message %s in chat %s failed", stored.id, message.chat_id)
        await _report_failure(services, stream, stored, error)
    finally:
        await stream.close()
    if answered is not None and services.features.compaction is not None:
        # Once the answer is delivered, in this chat's lane: why then, see handlers/compaction.py.
        await services.features.compaction.after_answer(services, message, stored, answered.asked)


async def _generate(
    services: Services, message: IncomingMessage, stored: StoredMessage, stream: ReplyStream, turn: Turn
) -> Generated | None:
    """Stream the model's answer into `stream`, or return None when the message's lifecycle
    already ended here (failed, stopped) or must go on after a restart (shutdown). Notes about the answer (which model, an attachment it
    could not read) are shown but not kept in history, so the model does not learn to repeat them."""
    prefix = _attachment_note(message)
    text = ""
    model: ModelRef | None = None
    started_by: ModelRef | None = None
    marker = ""
    usage: Sequence[tuple[ModelRef, Usage]] = ()
    # What the models cost however the answer ends: a stream cut by /cancel or a shutdown was billed too.
    meter = UsageMeter()
    charged = False
    try:
        await services.history.begin(stored)
        prefix = await fresh_start_note(services, stored) + prefix
        stored_context = await services.history.context_for(turn.question)
        # A photo's question is asked with its images (fetched again from Telegram if need be).
        context = await photos.asked_with_images(services, message, stored, turn.question, stored_context)
        users_model = None if turn.model is not None else await _users_model(services, message.user_id)
        preferred = turn.model or users_model
        system = (await chat_prompt(services, message.chat_id)).text
        stream.start()
        async for event in meter.chain(services.chain).stream(
            context, system=system, max_tokens=services.chat.max_tokens, preferred=preferred
        ):
            if isinstance(event, TextDelta):
                first_text = not text
                text += event.text
                stream.update(prefix + text)
                if first_text:
                    # One turn of the loop for the preview pump, which update() woke: the first
                    # draft goes out now, also when the rest of the answer is read at once after.
                    await asyncio.sleep(0)
            elif isinstance(event, ModelTookOver):
                started_by = started_by or event.previous
                text += takeover_marker(event, text)
                stream.update(prefix + text)
            elif isinstance(event, Completed):
                services.lanes.finishing(message.chat_id)
                model = event.model
                if event.truncated:
                    marker += CUT_NOTE
                if event.marker:  # the model says what it is itself
                    marker += f"\n\n_{event.marker}_"
                else:
                    first = services.chain.ordered(preferred)
                    blind = bool(first) and not first[0].sees_images and any(m.images for m in context)
                    why = "can't see images" if blind else "was unavailable"
                    marker += fallback_footer(started_by or event.model, first[0].ref if first else None, why=why)
                usage = event.usage  # recorded with the answer, in its transaction (`_record`)
                charged = True
    except asyncio.CancelledError:
        # Keep what was shown and say why it stopped. A second cancel (a shutdown out of time)
        # is not caught here.
        _uncancel()
        shutdown = services.lanes.cancel_reason(message.chat_id) != USER_CANCEL
        if not charged or shutdown:
            # What the cut stream reported, or an estimate (integrations/usage_meter.py); a finished
            # stream's own report when a shutdown leaves it unrecorded (a user's stop records it below).
            await _record_usage(services, message, usage if charged else meter.spent())
        if shutdown:
            # A shutdown (or a cancel nobody explained): left unfinished on purpose, answered in
            # full after the restart, replacing this.
            await stream.finish(prefix + (text or "…") + INTERRUPTED_NOTE)
            return None
        final = prefix + (text or "…") + STOPPED_NOTE
        stopped = Generated(final, text or "(stopped before answering)", str(model or "cancelled"), usage, None)
        await _store_answer(services, message, stored, turn, stopped)
        await _deliver(services, stream, stored, final)
        return None
    except AllModelsFailed as error:
        services.lanes.finishing(message.chat_id)
        log.warning("no model answered in chat %s: %s", message.chat_id, error)
        # The callbacks below run after this block: they take values, not the exception's name.
        spent, partial, reason, final = error.usage, error.partial_text, str(error)[:200], failure_text(error)
        await _despite_user_cancel(services, stored, lambda: _record_usage(services, message, spent))
        if partial:
            await _despite_user_cancel(
                services, stored, lambda: _store_answer(services, message, stored, turn, Generated(final, partial, "partial", (), None))
            )
            await _deliver(services, stream, stored, final)
        else:
            await _deliver(services, stream, stored, final, end=lambda: services.history.mark_failed(stored, reason))
        return None
    if turn.question.text == CONTINUE_REQUEST:
        text = await _without_repeat(services, turn.question, text)
    asked = Asked(
        [*stored_context, ChatMessage("assistant", text)], system, users_model, users_model_known=turn.model is None
    )
    return Generated(prefix + text + marker, text, str(model), usage, asked)


async def _users_model(services: Services, user_id: int) -> ModelRef | None:
    """The model the user picked with /model, if the chain still has it."""
    name = await services.preferences.model_for(user_id)
    return services.chain.find(name) if name else None


async def _store_answer(
    services: Services, message: IncomingMessage, stored: StoredMessage, turn: Turn, answer: Generated
) -> None:
    """The answer's words join the conversation, answering `turn`'s question, in one transaction
    (one trip to the database) with what it cost; its final text is what the user is still to see."""
    recorder = services.features.usage
    await services.history.record_answer(
        stored, answer.words, answer.model, reply_text=answer.shown, answers=turn.question,
        also=recorder.writes(message.user_id, answer.usage) if recorder is not None else (),
    )


async def _without_repeat(services: Services, question: StoredMessage, continuation: str) -> str:
    """A continuation without the words it repeats from the end of the answer it continues."""
    previous = await services.history.last_answer(question.chat_id, before=question.id)
    return drop_overlap(previous, continuation).lstrip() if previous else continuation


async def _deliver(
    services: Services,
    stream: ReplyStream,
    stored: StoredMessage,
    text: str,
    *,
    end: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """The final text reaches the user, then the message's lifecycle ends (`end`: answered, by
    default). A shutdown leaves it 'delivering', finished after the restart."""
    services.lanes.finishing(stored.chat_id)
    ending = end or (lambda: services.history.mark_delivered(stored))

    async def deliver_and_end() -> None:
        await stream.finish(text)
        await ending()

    try:
        await _despite_user_cancel(services, stored, deliver_and_end)
    except UpstreamError as error:
        if error.retryable:
            # Telegram stayed unreachable through every retry: the answer is kept as
            # 'delivering', and the next start delivers it without asking the model again.
            log.warning("reply to message %s in chat %s not delivered yet: %s", stored.id, stored.chat_id, error)
            return
        log.warning("reply to message %s in chat %s cannot be delivered: %s", stored.id, stored.chat_id, error)
        await services.history.mark_undeliverable(stored, str(error)[:200])


async def _despite_user_cancel(services: Services, stored: StoredMessage, step: Callable[[], Awaitable[T]]) -> T:
    """Run `step` to its end even if a user's /cancel lands in it (it is then run again: every
    step given here can be repeated); a shutdown's cancel goes through."""
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            if services.lanes.cancel_reason(stored.chat_id) != USER_CANCEL:
                raise
            _uncancel()


async def _report_failure(services: Services, stream: ReplyStream, stored: StoredMessage, error: Exception) -> None:
    reason = f"{type(error).__name__}: {error}"[:200]
    try:
        await stream.finish(error.note if isinstance(error, photos.ImagesUnavailable) else SOMETHING_WENT_WRONG)
    except Exception as delivery_error:
        log.warning("could not tell chat %s that answering failed: %s", stored.chat_id, delivery_error)
    try:
        await services.history.mark_failed(stored, reason)
    except Exception as storage_error:
        log.error("could not record that message %s failed: %s", stored.id, storage_error)


def _attachment_note(message: IncomingMessage) -> str:
    if message.attachment is None:
        return ""
    return f"_(I can't open {message.attachment}s yet, so I'm answering the text only.)_\n\n"


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def _record_usage(services: Services, message: IncomingMessage, usage: Sequence[tuple[ModelRef, Usage]]) -> None:
    recorder = services.features.usage
    if recorder is not None:
        await recorder.record(message.user_id, usage)
