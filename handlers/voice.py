"""Voice and audio messages: transcribed, the transcript shown, then answered as if typed.

A voice note (or an audio file) is stored like any medium, with a placeholder text, and its job
(`transcribe`, run by the router inside the message's lifecycle) goes:

1. No speech-to-text configured (`Features.voice` is None): a short reply saying so.
2. Telegram's metadata is checked before anything is downloaded: a recording longer than
   STT_MAX_SECONDS or larger than STT_MAX_MB gets a clear reply instead.
3. The user's limits (budget, message rate) are checked before the transcription is paid for.
4. The file is downloaded and transcribed behind the STT upstream's breaker, limiter and retry;
   its cost, per minute of audio, is added to the user's usage.
5. The transcript replaces the placeholder in the history, so the conversation (and an answer
   resumed after a restart) has the user's words and nothing is transcribed twice; it is shown,
   and the router answers the message as a typed one.

The transcript is shown as a short quote in a message of its own, before the answer ("> 🎤 …"):
it appears as soon as it is known, while the model is still thinking; it stays whatever becomes
of the answer (a failure, /cancel, an answer resumed after a restart, which replaces only its own
messages); in a group it replies to the voice note itself; and a long transcript does not eat
into the answer's 4096 characters. It is sent with its own idempotency key, so a repeated send
after a crash shows it once.

When the transcription (or Telegram's download) fails in a way that may pass, the user is told
once that it will be tried again, and the message is left unfinished (`AnswerLater`): the router's
safety net takes it up again a few minutes later. The last attempt (`ChatSettings.max_attempts`)
ends it with a note instead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

from handlers.render import escape_markdown
from handlers.reply import TRANSCRIPT_STREAM, TRANSCRIPTION_DELAYED_STREAM, notify_once, reply
from handlers.services import Services
from handlers.transport import AUDIO_FILE, VOICE_MESSAGE, IncomingMessage, Media, MediaSource
from integrations.errors import AuthFailed, BadRequest, CircuitOpen, QuotaExhausted, RateLimited, UpstreamError
from integrations.resilience.compose import Upstream
from state.history import StoredMessage

if TYPE_CHECKING:  # it imports the openai SDK, which a bot without STT never loads
    from integrations.transcription import Transcript

log = logging.getLogger(__name__)

# How much of a transcript the quote shows (a ten-minute voice note says some 8000 characters).
TRANSCRIPT_SHOWN_CHARS = 700

NOT_SET_UP = (
    "Voice messages aren't set up on this bot, so I can't listen to this {what}. "
    "Please type your question (or paste the text) and I'll answer it."
)
TOO_LONG = "This {what} is {length} long; I can transcribe up to {limit}. Please send a shorter one, or type your question."
TOO_LARGE = "This {what} is {size}; I can transcribe files of up to {limit}. Please send a smaller one, or type your question."
GONE = "I can't fetch this {what} from Telegram any more (was it deleted?), so I haven't answered it. Please send it again."
NO_WORDS = "I couldn't make out any words in this {what}. Please try again, or type your question."
UNREADABLE = (
    "The transcription service couldn't read this {what} ({reason}). Please send it as an ordinary "
    "voice message, or type your question."
)
NOT_NOW = "⚠️ I couldn't transcribe this {what} just now: {reason}. I'll try again by myself in a few minutes; there's no need to send it again."
GAVE_UP = "Sorry, I still couldn't transcribe this {what} after {attempts} tries ({reason}). Please send it again later, or type your question."
NEEDS_OPERATOR = (
    "Sorry, I can't transcribe voice messages right now: the bot's access to its transcription "
    "service needs fixing. The operator has been told; please type your question meanwhile."
)


class AnswerLater(Exception):
    """Raised by a job to leave its message unfinished, to be taken up again by the router's
    safety net (a failure that may pass, the user already told)."""


class Transcribes(Protocol):
    """integrations.transcription.Transcriber, or a stand-in."""

    async def transcribe(self, audio: bytes, *, file_name: str | None, mime_type: str | None) -> Transcript: ...


@dataclass(frozen=True)
class VoiceFeature:
    """Speech to text: the transcription endpoint behind its own upstream policies, and where the
    recordings come from (Telegram)."""

    transcriber: Transcribes
    upstream: Upstream
    media: MediaSource
    model: str
    max_seconds: float = 600.0
    max_bytes: int = 25 * 1024 * 1024
    # Told of every failed transcription: a refused key reaches the operator, a retired model the log.
    on_error: Callable[[UpstreamError], None] = lambda error: None

    async def transcribe(self, media: Media, audio: bytes) -> Transcript:
        call: Callable[[], Awaitable[Transcript]] = lambda: self.transcriber.transcribe(
            audio, file_name=media.file_name, mime_type=media.mime_type
        )
        try:
            return await self.upstream.call(call, operation=f"transcribe {self.model}")
        except UpstreamError as error:
            self.on_error(error)
            raise


def stored_text(message: IncomingMessage) -> str:
    """What is stored of a medium until there is more: "[<what it is>]", and its caption on the
    next line if it has one ("[audio file]\nSummarise this")."""
    caption = message.text.strip()
    return f"[{message.attachment}]" + (f"\n{caption}" if caption else "")


def stored_as_audio(stored: StoredMessage) -> bool:
    """Whether a stored medium is a voice note or an audio file, still to be transcribed."""
    return stored.kind == "media" and stored.text.partition("\n")[0] in (f"[{VOICE_MESSAGE}]", f"[{AUDIO_FILE}]")


async def transcribe(services: Services, message: IncomingMessage, stored: StoredMessage) -> StoredMessage | None:
    """The job of a voice or audio message: the message with its transcript (and caption) as its
    text, for the router to answer as a chat message, or None when it ended here with a note."""
    placeholder, _, caption = stored.text.partition("\n")
    what = message.attachment or placeholder.strip("[]") or VOICE_MESSAGE
    feature = services.features.voice
    if feature is None:
        await reply(services, message, NOT_SET_UP.format(what=what))
        return None
    attempt = stored.attempts + 1  # the router began this attempt
    try:
        media = message.media or await feature.media.describe(message.chat_id, message.message_id)
        if media is None:
            await end_with_note(services, message, stored, GONE.format(what=what), "the recording is gone")
            return None
        refusal = _over_size(feature, media, what)
        if refusal is not None:
            await reply(services, message, refusal)
            return None
        limit = await services.limits.check(message.user_id)
        if limit is not None:
            await end_with_note(services, message, stored, limit, "over the user's limits")
            return None
        audio = await feature.media.download(message.chat_id, message.message_id)
        if len(audio) > feature.max_bytes:
            await reply(services, message, _too_large(feature, len(audio), what))
            return None
        transcript = await feature.transcribe(media, audio)
    except UpstreamError as error:
        await _failed(services, message, stored, error, what, attempt)
        return None
    await _record_usage(services, feature, message, transcript.seconds or media.duration or 0.0)
    if not transcript.text:
        await reply(services, message, NO_WORDS.format(what=what))
        return None
    said = f"{transcript.text}\n\n{caption}" if caption else transcript.text
    stored = await services.history.record_transcript(stored, said)
    await notify_once(services, message, transcript_quote(transcript.text), stream=TRANSCRIPT_STREAM)
    return stored


def transcript_quote(text: str) -> str:
    """The transcript as the user sees it: one short quote (Markdown), cut at a word if long."""
    shown = " ".join(text.split())
    if len(shown) > TRANSCRIPT_SHOWN_CHARS:
        shown = shown[:TRANSCRIPT_SHOWN_CHARS].rsplit(" ", 1)[0] + " …"
    return f"> 🎤 {escape_markdown(shown)}"


def _over_size(feature: VoiceFeature, media: Media, what: str) -> str | None:
    """The reply for a recording too long or too large by Telegram's own account, else None."""
    if media.duration is not None and media.duration > feature.max_seconds:
        return TOO_LONG.format(what=what, length=spoken_length(media.duration), limit=spoken_length(feature.max_seconds))
    if media.size is not None and media.size > feature.max_bytes:
        return _too_large(feature, media.size, what)
    return None


def _too_large(feature: VoiceFeature, size: int, what: str) -> str:
    return TOO_LARGE.format(what=what, size=_megabytes(size), limit=_megabytes(feature.max_bytes))


async def _failed(
    services: Services, message: IncomingMessage, stored: StoredMessage, error: UpstreamError, what: str, attempt: int
) -> None:
    """Tell the user what became of a recording the transcription (or the download) failed on."""
    log.warning("could not transcribe message %s in chat %s: %s", stored.id, message.chat_id, error)
    if isinstance(error, (AuthFailed, QuotaExhausted)):
        return await end_with_note(services, message, stored, NEEDS_OPERATOR, f"transcription refused: {error}")
    if error.upstream == "telegram" and not error.retryable:
        return await end_with_note(services, message, stored, GONE.format(what=what), f"download failed: {error}")
    if isinstance(error, BadRequest):
        note = UNREADABLE.format(what=what, reason=_unreadable_reason(error))
        return await end_with_note(services, message, stored, note, f"transcription refused: {error}")
    reason = _passing_reason(error)
    if attempt >= services.chat.max_attempts:
        note = GAVE_UP.format(what=what, attempts=attempt, reason=reason)
        return await end_with_note(services, message, stored, note, f"transcription failed {attempt} times: {error}")
    # Once, however many tries follow: the notice has its own key.
    await notify_once(services, message, NOT_NOW.format(what=what, reason=reason), stream=TRANSCRIPTION_DELAYED_STREAM)
    raise AnswerLater(f"transcription failed: {error}")


async def end_with_note(services: Services, message: IncomingMessage, stored: StoredMessage, note: str, reason: str) -> None:
    """End the message as failed (for the operator: `reason`), with `note` for the user."""
    await reply(services, message, note)
    await services.history.mark_failed(stored, reason[:200])


def _passing_reason(error: UpstreamError) -> str:
    if error.upstream == "telegram":
        return "Telegram didn't hand me the recording"
    if isinstance(error, RateLimited):
        return "the transcription service is busy"
    if isinstance(error, CircuitOpen):
        return "the transcription service has been failing"
    return "the transcription service isn't answering"


def _unreadable_reason(error: UpstreamError) -> str:
    if error.status == 413:
        return "it is too large for it"
    return "it may be in a format it does not read, or too short"


async def _record_usage(services: Services, feature: VoiceFeature, message: IncomingMessage, seconds: float) -> None:
    recorder = services.features.usage
    if recorder is not None:
        await recorder.record_audio(message.user_id, feature.model, seconds)


def audio_words(seconds: float) -> str:
    """Seconds of audio transcribed, as /usage says them ("1 min 30 s of audio"); just "audio"
    when not known (transcriptions recorded before their seconds were kept)."""
    return f"{spoken_length(seconds)} of audio" if seconds > 0 else "audio"


def spoken_length(seconds: float) -> str:
    """A recording's length as a user reads it: "45 s", "2 min", "1 min 30 s"."""
    whole = round(seconds)
    minutes, rest = divmod(whole, 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"
