"""From an incoming message to the right handler: who may ask, which command, which lane.

Every message the bot accepts (a chat question, a command, a medium it cannot read) is stored
before any reply starts, so a crash loses nothing the user sent, and a redelivered message is
recognised by its chat and id. Each stored message is worked on by at most one job at a time:
`resume_pending` (at start) skips messages already queued or running, and re-checks access, age
and limits before answering what the last run left unfinished. When storing fails, the user is
told so at once instead of waiting for an answer that cannot come.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import replace
from datetime import datetime
from typing import Awaitable, Callable, Literal, Protocol, Sequence

from handlers import chat, documents, photos, quoted, voice
from handlers.commands import Command, parse_command
from handlers.lanes import USER_CANCEL
from handlers.reply import NOT_STORED_STREAM, notify_once, reply
from handlers.services import Services
from handlers.transport import IncomingMessage, ReplyTrace
from state.db import StorageFault
from state.history import Kind, StoredMessage

log = logging.getLogger(__name__)


def as_continue_request(text: str) -> str:
    """`/continue` (or a bare "continue") asks the model for the rest of its last answer."""
    bare = text.strip().rstrip(".!").lower()
    if bare in ("/continue", "continue") or bare.startswith("/continue@"):
        return chat.CONTINUE_REQUEST
    return text


def well_formed(text: str) -> str:
    """Text that survives UTF-8 and UTF-16: bytes a terminal could not decode become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")

ALREADY_FINISHING = "The answer is already complete and on its way; there is nothing left to stop."
QUEUED_NOTICE = "⏳ Got it. I'll answer this right after the reply in progress (/cancel stops that one)."
NOT_ACCEPTED = (
    "⚠️ I couldn't store your message (my storage is failing), so I can't answer it now. "
    "Please send it again in a few minutes; the operator has been told."
)
EXPIRED_NOTE = (
    "I was offline when you sent this, and it is now {age} old, so I haven't answered it in case "
    "it no longer fits. Send it again if you still want an answer."
)
GAVE_UP_NOTE = (
    "Sorry, I tried to answer this {attempts} times and stopped each time before finishing, so I've "
    "given up on it. The operator can see why in the log. Please rephrase it or send it again later."
)
UNSUPPORTED_NOTE = (
    "I can only read text for now, so I can't open this {what}. "
    "Please type your question (or paste the text) and I'll answer it."
)

# A message older than this when it arrives was caught up after a stop, not sent just now.
LIVE_SECONDS = 30.0

# Seconds between tries to store a message while the database fails.
STORE_RETRY_DELAYS = (1.0, 4.0)


class ChatPlacement(Protocol):
    """Which instance answers a chat, when several share one database (bot/chat_sharing.py)."""

    def holds(self, chat_id: int) -> bool:
        """Whether this instance answers the chat now."""
        ...

    async def answers_here(self, stored: StoredMessage) -> bool:
        """A message just stored: True if this instance answers it (it holds or took its chat),
        False if it is left stored for the instance that does."""
        ...


# Errors of the storage itself (disk full, database locked or corrupt, file system read-only,
# PostgreSQL's connection lost).
STORAGE_ERRORS = (sqlite3.Error, OSError, StorageFault)


class Router:
    def __init__(self, services: Services, commands: Sequence[Command], *, help_note: str = "") -> None:
        self._services = services
        self._help_note = help_note
        builtins = [
            Command("help", "what I can do", self._help),
            Command("cancel", "stop the reply in progress", self._cancel),
            # Never run: the router turns /continue into a chat question (see as_continue_request).
            Command("continue", "the rest of an answer that was cut off", self._help),
        ]
        self._commands = {command.name: command for command in [*commands, *builtins]}
        self._last_refusal: dict[int, float] = {}
        self._accepting = True
        # Stored messages with a job queued or running (by id, with their chat): never given a second job.
        self._claimed: dict[int, int] = {}
        # Stored messages a job left unfinished on purpose (AnswerLater), for the safety net.
        self._later: dict[int, int] = {}
        # With several instances on one database: which chats this one answers (None: all of them).
        self._placement: ChatPlacement | None = None
        # Commands taken up live that run at once, outside the lane (kept until they end).
        self._running_now: set[asyncio.Task[None]] = set()

    @property
    def commands(self) -> list[Command]:
        return list(self._commands.values())

    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def accepting(self) -> bool:
        """False once shutting down: messages are stored, not answered."""
        return self._accepting

    def share_chats(self, placement: ChatPlacement) -> None:
        """Answer only the chats `placement` gives this instance; the others' messages are stored
        and left to the instance holding their chat."""
        self._placement = placement

    def working_on(self, chat_id: int) -> bool:
        """Whether the chat has a reply queued or running here, or a message left here for later."""
        return self._services.lanes.busy(chat_id) or chat_id in self._claimed.values() or chat_id in self._later.values()

    async def handle(self, message: IncomingMessage) -> None:
        photos_on = self._services.features.photos
        if not message.addressed_to_bot and photos_on is not None and photos_on.joins_addressed_album(message):
            # A group album's other photos: the photo whose caption named the bot speaks for them all.
            message = replace(message, addressed_to_bot=True)
        if not message.addressed_to_bot or (not message.text.strip() and message.attachment is None):
            return
        message = replace(message, text=as_continue_request(well_formed(message.text)))
        services = self._services
        if not services.access.is_allowed(message.user_id):
            await self._refuse(message)
            return
        parsed = parse_command(message.text)
        audio = message.media is not None and message.media.is_audio
        # With speech to text on, a voice note or audio file is transcribed, its caption with it.
        transcribed = audio and services.features.voice is not None
        # A document is read, and its caption answered with it.
        document = documents.is_document(message) and services.features.documents is not None
        # A photo (or image file) goes to a vision model, its caption as the question.
        seen = message.media is not None and message.media.is_image and services.features.photos is not None
        media = transcribed or document or seen or not message.text.strip()
        kind: Kind = "command" if parsed is not None else ("media" if media else "chat")
        command = self._commands.get(parsed.name) if parsed is not None else None
        limit = (command.max_chars if command is not None else None) or services.chat.max_message_chars
        if len(message.text) > limit:
            await reply(
                services,
                message,
                f"Your message is {len(message.text):,} characters long; the limit is "
                f"{limit:,}. Please shorten it or split it into parts.",
            )
            return
        if not self._accepting:
            # Shutting down: the message is stored and answered after the restart.
            await self._store(message, kind)
            return
        if parsed is not None and (command is None or (command.admin_only and not services.access.is_admin(message.user_id))):
            await reply(services, message, f"I don't know /{parsed.name}.\n\n" + self.help_text(message.user_id))
            return
        if (kind == "chat" or (command is not None and command.metered)) and await self._over_limits(message):
            return
        stored = await self._store(message, kind)
        if stored is None:
            return
        if self._placement is not None and not await self._placement.answers_here(stored):
            return
        message = replace(message, trace=ReplyTrace(stored.id))
        if kind == "media":
            if audio:
                await self._enqueue_answer(message, stored, voice.transcribe)
            elif document:
                await self._enqueue_answer(message, stored, documents.read)
            elif seen:
                await self._look_at(message, stored)
            else:
                await self._lifecycle(message, stored, self._unsupported)
        elif command is not None and parsed is not None:
            run = _command_job(command, parsed.args)
            if command.answer is not None:
                self._submit(message, stored, None, answer=_answer_job(command, parsed.args))
            elif command.queued:
                self._submit(message, stored, run)
            else:
                await self._lifecycle(message, stored, run)
        else:
            # A reply has the text it quotes put above it first.
            await self._enqueue_answer(message, stored, quoted.with_quote if quoted.is_reply(services, message) else None)

    async def keep_resuming(self, every: float = 300.0, older_than: float = 120.0) -> None:
        """A safety net while serving: finish unfinished messages that nobody is working on (a
        message whose job ended without ending its lifecycle). It should never find any; when it
        does, it says so, since that is a bug to look into."""
        while True:
            await self._services.clock.sleep(every)
            try:
                found = await self.resume_pending(older_than=older_than)
            except STORAGE_ERRORS as error:
                log.warning("could not look for unfinished messages: %s", error)
                continue
            if found:
                log.warning("found %d unfinished message(s) nobody was working on; finishing them now", found)

    async def resume_pending(self, *, older_than: float | None = None) -> int:
        """Finish what the last run left unfinished: answer, re-deliver or close each message once.

        Messages already queued or running here are skipped; a user no longer allowed gets
        nothing; a message older than `pending_max_age` gets a short note instead of an answer;
        one that stopped the bot `max_attempts` times is given up with a note; chat questions
        are checked against the user's limits again. Returns how many were queued or closed,
        not counting those a job left for later on purpose (`voice.AnswerLater`).
        """
        services = self._services
        resumed = 0
        for stored in await services.history.pending():
            age = services.clock.now() - datetime.fromisoformat(stored.created_at)
            if stored.id in self._claimed or (older_than is not None and age.total_seconds() < older_than):
                continue
            if self._placement is not None and not self._placement.holds(stored.chat_id):
                continue  # another instance's chat, or nobody's yet (bot/chat_sharing.py takes those)
            if stored.id in self._later:
                self._later.pop(stored.id)  # expected: a job left it for now
            else:
                resumed += 1
            await self.take_up(stored, live=False)
        return resumed

    async def take_up_chat(self, chat_id: int, *, before: int | None = None) -> int:
        """Take up the chat's unfinished messages that have no job here (those older than message
        `before` only, when given), oldest first: what an instance does with a chat it just took.
        A message sent in the last LIVE_SECONDS and never begun is taken as live. Returns how many."""
        services = self._services
        taken = 0
        if self._placement is not None and not self._placement.holds(chat_id):
            return 0  # given up meanwhile: its messages are the next holder's
        for stored in await services.history.pending(chat_id):
            if stored.id in self._claimed or stored.id in self._later or (before is not None and stored.id >= before):
                continue
            age = services.clock.now() - datetime.fromisoformat(stored.created_at)
            live = stored.attempts == 0 and stored.status == "pending" and age.total_seconds() < LIVE_SECONDS
            await self.take_up(stored, live=live)
            taken += 1
        return taken

    async def take_up(self, stored: StoredMessage, *, live: bool) -> None:
        """Answer, re-deliver or close a stored message on this instance: the one entry for a
        message that was not received here just now, whether an earlier run left it unfinished
        (`live=False`) or another instance stored it a moment ago (`live=True`: it is treated as
        if it had arrived here: the queued notice, a command that is not queued runs at once, so
        a /cancel stops the reply in progress; its limits were checked when it arrived)."""
        services = self._services
        settings = services.chat
        age = services.clock.now() - datetime.fromisoformat(stored.created_at)
        message = IncomingMessage(
            chat_id=stored.chat_id,
            user_id=stored.user_id,
            message_id=stored.telegram_message_id or 0,
            text=stored.text,
            is_private=stored.is_private,
            trace=ReplyTrace(stored.id, list(stored.shown_ids), resumed=True),
        )
        if not services.access.is_allowed(stored.user_id):
            log.info("not answering message %s: user %s is no longer allowed", stored.id, stored.user_id)
            await services.history.mark_failed(stored, "the user is no longer allowed")
            return
        if stored.status == "delivering":
            self._submit(message, stored, None)
            return
        if age.total_seconds() > settings.pending_max_age:
            note = EXPIRED_NOTE.format(age=_describe_age(age.total_seconds()))
            self._submit(message, stored, _closing_job(note, "expired"), cancellable=False)
            return
        if stored.attempts >= settings.max_attempts:
            log.error("giving up on message %s in chat %s after %d attempts", stored.id, stored.chat_id, stored.attempts)
            note = GAVE_UP_NOTE.format(attempts=stored.attempts)
            self._submit(message, stored, _closing_job(note, "failed"), cancellable=False)
            return
        if stored.kind == "media" and photos.stored_as_image(stored) and services.features.photos is not None:
            await self._look_at(message, stored, live=live)
            return
        if stored.kind == "media":
            audio = voice.stored_as_audio(stored)
            document = documents.stored_as_document(stored)
            job = voice.transcribe if audio else documents.read if document else self._unsupported
            if live and (audio or document):
                await self._enqueue_answer(message, stored, job)
            else:
                self._submit(message, stored, job, cancellable=audio or document)
            return
        parsed = parse_command(stored.text) if stored.kind == "command" else None
        command = self._commands.get(parsed.name) if parsed is not None else None
        if stored.kind == "command" and (command is None or parsed is None):
            await services.history.mark_failed(stored, "unknown command after a restart")
            return
        if command is not None and parsed is not None and live and command.answer is None and not command.queued:
            # As when it arrives: not behind the reply in progress (a /cancel stops that one).
            running = asyncio.ensure_future(self._lifecycle(message, stored, _command_job(command, parsed.args)))
            self._running_now.add(running)
            running.add_done_callback(self._running_now.discard)
            return
        if command is not None and command.name == "cancel":
            # What it was to stop ended with the last run.
            await services.history.mark_delivered(stored)
            return
        over_limits = not live and (stored.kind == "chat" or (command is not None and command.metered))
        if over_limits and await self._over_limits(message):
            await services.history.mark_failed(stored, "over the user's limits when resumed")
            return
        if command is not None and parsed is not None and command.answer is not None:
            self._submit(message, stored, None, answer=_answer_job(command, parsed.args))
            return
        if command is None and quoted.may_reply(services, stored):
            run: Job | None = quoted.with_quote_again
        else:
            run = _command_job(command, parsed.args) if command and parsed else None
        if live and command is None:
            await self._enqueue_answer(message, stored, run)
        else:
            self._submit(message, stored, run)
    def help_text(self, user_id: int) -> str:
        is_admin = self._services.access.is_admin(user_id)
        lines = ["Send me a message and I'll answer. Commands:"]
        for command in self._commands.values():
            if command.admin_only and not is_admin:
                continue
            usage = f" {command.usage}" if command.usage else ""
            lines.append(f"/{command.name}{usage} — {command.description}")
        if self._help_note:
            lines += ["", self._help_note]
        return "\n".join(lines)

    async def _enqueue_answer(self, message: IncomingMessage, stored: StoredMessage, run: Job | None = None) -> None:
        was_busy = self._services.lanes.busy(message.chat_id)
        self._submit(message, stored, run)
        if was_busy and self._is_live(message):
            # Not part of the answer, so not recorded with it (a resumed answer would take it over).
            await reply(self._services, replace(message, trace=None), QUEUED_NOTICE)

    async def _look_at(self, message: IncomingMessage, stored: StoredMessage, *, live: bool = True) -> None:
        """A photo's job, unless it joins an album whose first photo has one (handlers/photos.py)."""
        feature = self._services.features.photos
        assert feature is not None
        joins = not await feature.arrived(message, stored)
        for stray in feature.take_strays(message):
            await self.handle(replace(stray, addressed_to_bot=True))
        if joins:
            return
        if live:
            await self._enqueue_answer(message, stored, photos.look)
        else:
            self._submit(message, stored, photos.look)

    def _submit(
        self,
        message: IncomingMessage,
        stored: StoredMessage,
        run: Job | None,
        *,
        cancellable: bool = True,
        answer: Job = chat.answer,
    ) -> None:
        """Queue the message's job in its chat's lane; `None` means answering it (`answer`, which
        ends the lifecycle itself: a chat message, or a command answered like one). A job that only
        shows a short closing note is not `cancellable` by the user."""
        self._claimed[stored.id] = stored.chat_id

        async def job() -> None:
            try:
                if run is None:
                    await answer(self._services, message, stored)
                else:
                    await self._lifecycle(message, stored, run)
            except voice.AnswerLater as later:  # a resumed photo's question Telegram did not hand over
                self._leave_for_later(message, stored, later)
            finally:
                self._claimed.pop(stored.id, None)

        self._services.lanes.submit(message.chat_id, job, cancellable=cancellable)

    async def _lifecycle(self, message: IncomingMessage, stored: StoredMessage, run: Job) -> None:
        """Run a command (or a note) for a stored message and end its lifecycle: answered when it
        returns or the user cancels it, left for after the restart on shutdown, failed with a
        message to the user when it breaks. A job that returns the message (a voice note with
        its transcript as its text) has it answered as a chat message; one that raises
        `AnswerLater` leaves it unfinished, for the safety net to take up again."""
        history = self._services.history
        self._claimed[stored.id] = stored.chat_id
        try:
            await history.begin(stored)
            as_chat = await run(self._services, message, stored)
            if as_chat is not None and photos.stored_as_image(stored):
                # A photo or an album that replies to a message: the quote after its placeholder.
                as_chat = await quoted.with_quote_of_images(self._services, message, as_chat)
            elif as_chat is not None and (voice.stored_as_audio(stored) or documents.stored_as_document(stored)):
                # A voice note or a document that replies to a message: quoted like a typed reply.
                as_chat = await quoted.with_quote_of_medium(self._services, message, as_chat)
            if as_chat is not None:
                typed = replace(message, text=as_chat.text, attachment=None, media=None)
                await chat.answer(self._services, typed, as_chat)
                return
            await history.mark_delivered(stored)
        except voice.AnswerLater as later:
            self._leave_for_later(message, stored, later)
        except asyncio.CancelledError:
            if self._services.lanes.cancel_reason(message.chat_id) != USER_CANCEL:
                raise  # a shutdown: left unfinished, run again after the restart
            await history.mark_delivered(stored)
        except Exception as error:
            log.exception("message %s in chat %s failed", stored.id, message.chat_id)
            try:
                await reply(self._services, message, chat.SOMETHING_WENT_WRONG)
            except Exception as delivery_error:
                log.warning("could not tell chat %s that it failed: %s", message.chat_id, delivery_error)
            try:
                await history.mark_failed(stored, f"{type(error).__name__}: {error}"[:200])
            except Exception as storage_error:
                log.error("could not record that message %s failed: %s", stored.id, storage_error)
        finally:
            self._claimed.pop(stored.id, None)
            if self._services.features.photos is not None:  # images its answer did not take
                self._services.features.photos.release(stored.id)

    def _leave_for_later(self, message: IncomingMessage, stored: StoredMessage, later: voice.AnswerLater) -> None:
        log.info("message %s in chat %s is left for later: %s", stored.id, message.chat_id, later)
        self._later[stored.id] = stored.chat_id

    def _is_live(self, message: IncomingMessage) -> bool:
        """Sent just now, not caught up after a stop (a user who wrote while the bot was away
        gets the answers, not a notice per message)."""
        if message.sent_at is None:
            return True
        return (self._services.clock.now() - message.sent_at).total_seconds() < LIVE_SECONDS

    async def _store(self, message: IncomingMessage, kind: Kind) -> StoredMessage | None:
        """The message, stored as pending; None if it was stored before or cannot be (the user is told).

        A failing store is tried again after STORE_RETRY_DELAYS (a locked or briefly full database
        recovers); only then is the user told that the message was not accepted."""
        for delay in (*STORE_RETRY_DELAYS, None):
            try:
                stored = await self._services.history.record_incoming(
                    message.chat_id, message.user_id, message.message_id,
                    voice.stored_text(message) if kind == "media" else message.text,
                    kind=kind, is_private=message.is_private,
                )
            except STORAGE_ERRORS as error:
                if delay is not None:
                    log.warning("could not store message %s in chat %s (%s); trying again in %g s",
                                message.message_id, message.chat_id, error, delay)
                    await self._services.clock.sleep(delay)
                    continue
                log.error("could not store message %s in chat %s: %s", message.message_id, message.chat_id, error)
                await notify_once(self._services, message, NOT_ACCEPTED, stream=NOT_STORED_STREAM)
                return None
            if stored is None:
                log.info("message %s in chat %s was already handled", message.message_id, message.chat_id)
            elif quoted.is_reply(self._services, message):
                await self._remember_reply(message, stored)
            return stored
        return None

    async def _remember_reply(self, message: IncomingMessage, stored: StoredMessage) -> None:
        """What the message replies to, for its quote after a restart; without it (storage failing
        now) such a quote is only left out, so the message goes on."""
        try:
            await quoted.remember(self._services, message, stored)
        except STORAGE_ERRORS as error:
            log.warning("could not note what message %s in chat %s replies to: %s", stored.id, message.chat_id, error)

    async def _unsupported(self, services: Services, message: IncomingMessage, stored: StoredMessage) -> None:
        await reply(services, message, UNSUPPORTED_NOTE.format(what=message.attachment or "message"))

    async def _help(self, services: Services, message: IncomingMessage, args: str) -> None:
        await reply(services, message, self.help_text(message.user_id))

    async def _cancel(self, services: Services, message: IncomingMessage, args: str) -> None:
        if services.lanes.cancel(message.chat_id):
            return
        if services.lanes.busy(message.chat_id):
            await reply(services, message, ALREADY_FINISHING)
        else:
            await reply(services, message, "Nothing to stop: no reply is in progress.")

    async def _over_limits(self, message: IncomingMessage) -> bool:
        """Daily budget and message rate, checked before any upstream call."""
        refusal = await self._services.limits.check(message.user_id)
        if refusal is not None:
            await reply(self._services, message, refusal)
        return refusal is not None

    async def _refuse(self, message: IncomingMessage) -> None:
        now = self._services.clock.monotonic()
        last = self._last_refusal.get(message.user_id)
        if last is not None and now - last < self._services.chat.refusal_interval:
            return
        self._last_refusal[message.user_id] = now
        await reply(
            self._services,
            message,
            f"Sorry, this bot is private. Your user id is {message.user_id}; "
            "ask the operator to add it to the allowed users.",
        )


# The work done for one stored message; its lifecycle around it is the router's. A job may
# return the message to be answered as a chat message (what it made of it: a transcript).
Job = Callable[[Services, IncomingMessage, StoredMessage], Awaitable[StoredMessage | None]]


def _command_job(command: Command, args: str) -> Job:
    async def run(services: Services, message: IncomingMessage, stored: StoredMessage) -> None:
        await command.run(services, message, args)

    return run


def _answer_job(command: Command, args: str) -> Job:
    """A command answered like a chat message (`Command.answer`), for `_submit`."""
    answer = command.answer
    assert answer is not None

    async def run(services: Services, message: IncomingMessage, stored: StoredMessage) -> None:
        await answer(services, message, stored, args)

    return run


def _closing_job(note: str, outcome: Literal["expired", "failed"]) -> Job:
    """Ends a resumed message with a note (replacing any partial reply) instead of an answer."""

    async def run(services: Services, message: IncomingMessage, stored: StoredMessage) -> None:
        await reply(services, message, note)
        if outcome == "expired":
            await services.history.mark_expired(stored, "too old when the bot came back")
        else:
            await services.history.mark_failed(stored, "gave up after repeated attempts")

    return run


def _describe_age(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 48:
        return f"{max(1, round(hours))} hour{'s' if round(hours) != 1 else ''}"
    return f"{round(hours / 24)} days"
