"""Telegram through Telethon: the only module that imports it.

`TelegramTransport` sends, edits, drafts and shows typing, and translates Telethon's errors into
the project's types (a flood wait becomes `RateLimited`, which the flood governor understands).
`build_client` makes a client that never sleeps through a flood wait by itself and keeps its
session file private. `TelegramRunner` logs in, sets the command menu and hands every incoming text
message to the router as an `IncomingMessage`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ContextManager, Iterator, Sequence

from telethon import TelegramClient, errors, events, functions, types

from handlers.quoted import Quote
from handlers.richtext import Entity, RichText
from handlers.transport import (
    AUDIO_FILE,
    IMAGE_FILE,
    VOICE_MESSAGE,
    DraftsUnsupported,
    IncomingMessage,
    Media,
    MediaKind,
    MessageHandler,
)
from integrations.errors import AuthFailed, BadRequest, RateLimited, Unavailable, UpstreamError

if TYPE_CHECKING:
    from bot.config import Secret, TelegramSettings

log = logging.getLogger(__name__)

UPSTREAM = "telegram"

# Reconnect for as long as the network is gone: a bot that gives up after a few tries needs a
# person to restart it. Each failed attempt is logged by Telethon, so an outage stays visible.
CONNECTION_RETRIES = -1
# Telethon repeats a request on Telegram's internal errors (5xx) a few times, two seconds apart.
REQUEST_RETRIES = 3

_PLAIN_ENTITIES = {
    "bold": types.MessageEntityBold,
    "italic": types.MessageEntityItalic,
    "underline": types.MessageEntityUnderline,
    "strike": types.MessageEntityStrike,
    "code": types.MessageEntityCode,
    "blockquote": types.MessageEntityBlockquote,
    "spoiler": types.MessageEntitySpoiler,
}

# Errors saying this bot cannot use drafts at all (as opposed to not in this chat).
_DRAFT_METHOD_REFUSALS = (
    errors.BotMethodInvalidError,
    errors.MethodInvalidError,
    errors.InputMethodInvalidError,
    errors.UnknownMethodError,
)
# Telegram answers TEXTDRAFT_PEER_INVALID where drafts are not offered; Telethon has no class for it.
_DRAFT_REFUSAL_MESSAGE = re.compile(r"DRAFT|METHOD|ACTION_INVALID|NOT_SUPPORTED|UNSUPPORTED")


def to_telethon_entities(entities: Sequence[Entity]) -> list[types.TypeMessageEntity]:
    """Telethon's entity objects for ours (both count offsets in UTF-16 code units)."""
    converted: list[types.TypeMessageEntity] = []
    for entity in entities:
        if entity.length <= 0:
            continue  # Telegram refuses empty entities
        if entity.kind == "pre":
            converted.append(types.MessageEntityPre(entity.offset, entity.length, entity.language or ""))
        elif entity.kind == "text_url":
            if entity.url:
                converted.append(types.MessageEntityTextUrl(entity.offset, entity.length, entity.url))
        elif entity.kind in _PLAIN_ENTITIES:
            converted.append(_PLAIN_ENTITIES[entity.kind](entity.offset, entity.length))
        else:
            raise ValueError(f"no Telegram entity for {entity.kind!r}")
    return converted


def translate_error(error: BaseException, action: str) -> UpstreamError | None:
    """The project error for a failed Telegram call, or None when it is not a Telegram failure.

    Messages carry Telethon's error text, which names the error and the request type only.
    """
    what = f"{action} failed: {type(error).__name__}: {error}"
    if isinstance(error, errors.FloodError):
        seconds = getattr(error, "seconds", None) or 1
        return RateLimited(what, upstream=UPSTREAM, status=420, retry_after=float(seconds))
    if isinstance(
        error,
        (
            errors.UnauthorizedError,
            errors.AuthKeyError,
            errors.AccessTokenInvalidError,
            errors.AccessTokenExpiredError,
            errors.AuthKeyNotFound,
        ),
    ):
        return AuthFailed(what, upstream=UPSTREAM, status=401)
    if isinstance(error, (errors.ServerError, errors.TimedOutError)):
        return Unavailable(what, upstream=UPSTREAM, status=500)
    if isinstance(error, errors.ForbiddenError):
        # Not our credentials: this chat will not take the bot's message (kicked, no rights).
        return BadRequest(what, upstream=UPSTREAM, status=403)
    if isinstance(error, errors.RPCError):
        code = abs(error.code or 400)
        kind = Unavailable if code >= 500 else BadRequest
        return kind(what, upstream=UPSTREAM, status=code)
    if isinstance(error, (ConnectionError, OSError, asyncio.TimeoutError)):
        return Unavailable(what, upstream=UPSTREAM)
    if isinstance(error, ValueError):
        # Telethon's way of saying it cannot resolve the chat (never seen, or not an id).
        return BadRequest(what, upstream=UPSTREAM)
    return None


@contextmanager
def translated_errors(
    action: str, *, on_flood: Callable[[errors.FloodError], None] | None = None
) -> Iterator[None]:
    """Re-raise Telethon and network failures inside the block as project errors."""
    try:
        yield
    except UpstreamError:
        raise
    except Exception as error:
        if on_flood is not None and isinstance(error, errors.FloodError):
            on_flood(error)
        translated = translate_error(error, action)
        if translated is None:
            raise
        raise translated from error


class TelegramTransport:
    """The `Transport` over a Telethon client (any object with the same methods, for tests)."""

    name = "telegram"

    def __init__(self, client: Any) -> None:
        self._client = client
        self._drafts_refused = False

    async def send(
        self, chat_id: int, text: RichText, *, reply_to: int | None = None, preview: bool = False, key: int | None = None
    ) -> int:
        entities = to_telethon_entities(text.entities)
        with self._translated("send"):
            if key is not None:
                return await self._send_keyed(chat_id, text.text, entities, reply_to, key)
            message = await self._client.send_message(
                chat_id,
                text.text,
                formatting_entities=entities,
                reply_to=reply_to,
                link_preview=False,
                parse_mode=None,
            )
        # Telethon ships no types: say what its message id is.
        message_id: int = message.id
        return message_id

    async def _send_keyed(
        self, chat_id: int, text: str, entities: list[types.TypeMessageEntity], reply_to: int | None, key: int
    ) -> int:
        """`messages.sendMessage` with our own `random_id` (Telethon's `send_message` always draws a
        fresh one). Telegram keeps used random ids for good and answers a repeat with the message
        it made the first time; while that first call is still being processed it answers
        RANDOM_ID_DUPLICATE (a 500, retried like any other)."""
        peer = await self._client.get_input_entity(chat_id)
        request = functions.messages.SendMessageRequest(
            peer=peer,
            message=text,
            entities=entities or None,
            no_webpage=True,
            reply_to=types.InputReplyToMessage(reply_to) if reply_to is not None else None,
            random_id=key,
        )
        result = await self._client(request)
        message_id = sent_message_id(result, key)
        if message_id is None:
            message = self._client._get_response_message(request, result, peer)
            if message is None:
                raise Unavailable("send: Telegram's answer names no message", upstream=UPSTREAM)
            message_id = message.id
        return message_id

    async def edit(self, chat_id: int, message_id: int, text: RichText, *, preview: bool = False) -> None:
        entities = to_telethon_entities(text.entities)
        with self._translated("edit"):
            try:
                await self._client.edit_message(
                    chat_id,
                    message_id,
                    text.text,
                    formatting_entities=entities,
                    link_preview=False,
                )
            except errors.MessageNotModifiedError:
                pass  # the user already sees this text

    async def draft(self, chat_id: int, draft_id: int, text: RichText) -> None:
        if chat_id <= 0:
            raise DraftsUnsupported("drafts are shown in private chats only", upstream=UPSTREAM)
        if self._drafts_refused:
            raise DraftsUnsupported("Telegram refused drafts for this bot", upstream=UPSTREAM)
        action = types.SendMessageTextDraftAction(
            text=types.TextWithEntities(text.text, to_telethon_entities(text.entities)), random_id=draft_id
        )
        with self._translated("draft"):
            try:
                await self._client(functions.messages.SetTypingRequest(peer=chat_id, action=action))
            except errors.RPCError as error:
                if isinstance(error, _DRAFT_METHOD_REFUSALS):
                    self._drafts_refused = True
                elif not _DRAFT_REFUSAL_MESSAGE.search(str(error.message or "")):
                    raise
                raise DraftsUnsupported(
                    f"draft refused: {type(error).__name__}: {error}", upstream=UPSTREAM, status=400
                ) from error

    async def delete(self, chat_id: int, message_ids: Sequence[int]) -> None:
        with self._translated("delete"):
            await self._client.delete_messages(chat_id, list(message_ids), revoke=True)

    async def typing(self, chat_id: int) -> None:
        with self._translated("typing"):
            action = types.SendMessageTypingAction()
            await self._client(functions.messages.SetTypingRequest(peer=chat_id, action=action))

    def _translated(self, action: str) -> ContextManager[None]:
        return translated_errors(action, on_flood=self._forget_flood)

    def _forget_flood(self, error: errors.FloodError) -> None:
        """Drop Telethon's memory of a flood wait.

        Telethon remembers a wait per request *type* and then refuses that type in every chat until
        it ends, so one busy group would silence all chats. The governor pauses the chat that got
        the wait; if the limit was global, the other chats get their own waits from Telegram.
        """
        waited = getattr(self._client, "_flood_waited_requests", None)
        constructor = getattr(getattr(error, "request", None), "CONSTRUCTOR_ID", None)
        if isinstance(waited, dict) and constructor is not None:
            waited.pop(constructor, None)


def sent_message_id(result: Any, random_id: int) -> int | None:
    """The id of the message a `messages.sendMessage` made, from its answer: a private chat's
    short answer carries it, a group's `Updates` map our random id to it (`updateMessageID`)."""
    # Telethon ships no types: its message ids are ints.
    message_id: int
    if isinstance(result, types.UpdateShortSentMessage):
        message_id = result.id
        return message_id
    for update in getattr(result, "updates", None) or ():
        if isinstance(update, types.UpdateMessageID) and update.random_id == random_id:
            message_id = update.id
            return message_id
    return None


def session_file_for(session_path: Path) -> Path:
    """The file Telethon's SQLite session will use (it appends `.session` when missing)."""
    return session_path if str(session_path).endswith(".session") else Path(f"{session_path}.session")


def prepare_session_file(session_path: Path) -> Path:
    """Create the session file readable by its owner only, before SQLite opens it.

    The file holds the auth key, which is as good as the bot token. SQLite gives its journal the
    database file's permissions. A parent directory we create is owner-only too; an existing one
    is left alone (it may be the working directory) but a warning says if others can read it.
    """
    file = session_file_for(session_path)
    parent = file.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True)
        os.chmod(parent, 0o700)
    elif parent.stat().st_mode & 0o077:
        log.warning("the directory of the Telegram session file is open to other users: %s", parent)
    descriptor = os.open(file, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(descriptor)
    os.chmod(file, 0o600)
    return file


def build_client(settings: TelegramSettings, *, receive_updates: bool = True) -> TelegramClient:
    """A Telethon client for the bot; flood waits always reach us instead of being slept through.

    With `flood_sleep_threshold=0` Telethon raises every FloodWait (it even turns FLOOD_WAIT_0
    into a raised 1 s wait), so the governor alone decides how long a chat waits.
    """
    session_file = prepare_session_file(settings.session_path)
    client = TelegramClient(
        str(session_file),
        settings.api_id,
        settings.api_hash.reveal(),
        flood_sleep_threshold=0,
        auto_reconnect=True,
        connection_retries=CONNECTION_RETRIES,
        retry_delay=1,
        request_retries=REQUEST_RETRIES,
        # After its own retries Telethon would raise a bare ValueError; we want the last RPC error.
        raise_last_call_error=True,
        # Updates that arrived while the bot was stopped are fetched at start (the file session
        # keeps the update state), so nothing sent during a restart is lost.
        catch_up=True,
        # A worker (bot/chat_sharing.py) only sends: Telegram gives its session no updates.
        receive_updates=receive_updates,
    )
    if settings.dc is not None:
        client.session.set_dc(settings.dc.dc_id, settings.dc.host, settings.dc.port)
    return client


@dataclass(frozen=True)
class BotIdentity:
    id: int
    username: str


_COMMAND = re.compile(r"^/(?P<name>[A-Za-z0-9_]+)(?:@(?P<bot>[A-Za-z0-9_]+))?(?=\s|$)")


def incoming_from_event(event: Any, bot: BotIdentity) -> IncomingMessage | None:
    """The router's view of a Telethon NewMessage event, or None if there is nothing to answer.

    In groups the bot is addressed when Telegram marks the message as mentioning it (a mention or a
    reply to the bot), when its @name appears, or by a command meant for it: `/cmd@thisbot`, or a
    bare `/cmd` (in privacy mode Telegram only delivers bare commands meant for this bot).
    """
    message = getattr(event, "message", event)
    text = message.message or ""
    attachment = attachment_kind(message)
    if (not text.strip() and attachment is None) or message.sender_id is None:
        return None
    text, names_bot, names_other_bot = _strip_bot_name(text, bot.username)
    if not text.strip() and attachment is None:
        return None
    is_private = bool(message.is_private)
    is_command_for_us = text.startswith("/") and not names_other_bot
    addressed = is_private or bool(message.mentioned) or names_bot or is_command_for_us
    return IncomingMessage(
        chat_id=message.chat_id,
        user_id=message.sender_id,
        message_id=message.id,
        text=text,
        is_private=is_private,
        addressed_to_bot=addressed,
        user_name=_display_name(message.sender),
        attachment=attachment,
        sent_at=message.date,
        media=describe_media(message),
        reply_to=replied_to_id(message),
        quote=getattr(message.reply_to, "quote_text", None) or None,
    )


def replied_to_id(message: Any) -> int | None:
    """The id of the message this one replies to (in the same chat), or None."""
    header = getattr(message, "reply_to", None)
    return None if getattr(header, "reply_to_peer_id", None) is not None else getattr(header, "reply_to_msg_id", None)


# Telethon's Message properties for what a message can carry, most specific first (a voice note
# is also an audio file, which is also a document), with the words a user would use for them.
_ATTACHMENTS = (
    ("voice", VOICE_MESSAGE),
    ("video_note", "video message"),
    ("audio", AUDIO_FILE),
    ("sticker", "sticker"),
    ("gif", "GIF"),
    ("video", "video"),
    ("photo", "photo"),
    ("document", "file"),
    ("contact", "contact"),
    ("poll", "poll"),
    ("venue", "location"),
    ("geo", "location"),
    ("dice", "dice"),
)


def attachment_kind(message: Any) -> str | None:
    """What the message carries besides text, in a user's words, or None."""
    if getattr(message, "media", None) is None:
        return None
    if _media_kind(message) == "image" and not getattr(message, "photo", None):
        return IMAGE_FILE  # an image sent as a file: a vision model can look at it
    for attribute, words in _ATTACHMENTS:
        if getattr(message, attribute, None):
            return words
    return "attachment"


def describe_media(message: Any) -> Media | None:
    """The message's attachment described from Telegram's metadata (nothing is downloaded), or None."""
    words = attachment_kind(message)
    if words is None:
        return None
    kind = _media_kind(message)
    # Telethon's `File` view of a document or photo (duration from the audio or video attribute).
    file = getattr(message, "file", None)
    duration = getattr(file, "duration", None)
    size = getattr(file, "size", None)
    return Media(
        kind,
        words,
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        size=size if isinstance(size, int) else None,
        mime_type=getattr(file, "mime_type", None) or None,
        file_name=getattr(file, "name", None) or None,
        group=getattr(message, "grouped_id", None),
    )


def _media_kind(message: Any) -> MediaKind:
    if getattr(message, "voice", None):
        return "voice"
    if getattr(message, "audio", None):
        return "audio"
    if getattr(message, "photo", None):
        return "image"
    document = getattr(message, "document", None)
    mime_type = getattr(document, "mime_type", None) or ""
    if document is not None and mime_type.startswith("image/") and not getattr(message, "sticker", None):
        return "image"  # an image sent as a file (uncompressed), not a sticker
    return "other"


class TelegramMedia:
    """The `MediaSource` over a Telethon client: the user's message fetched again by its id (so its
    file reference is fresh, also after a restart), its media downloaded into memory."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def describe(self, chat_id: int, message_id: int) -> Media | None:
        message = await self._message(chat_id, message_id)
        return None if message is None else describe_media(message)

    async def download(self, chat_id: int, message_id: int) -> bytes:
        message = await self._message(chat_id, message_id)
        if message is None:
            raise BadRequest("download failed: the message or its media is gone", upstream=UPSTREAM, status=400)
        with translated_errors("download"):
            data = await self._client.download_media(message, file=bytes)
        if not data:
            raise BadRequest("download failed: Telegram sent no data", upstream=UPSTREAM, status=400)
        return bytes(data)

    async def reply_of(self, chat_id: int, message_id: int) -> tuple[int, str | None] | None:
        """The id of the message that message `message_id` replies to and the part of it quoted,
        read again from Telegram (after a restart); None when it replies to none (or is gone)."""
        with translated_errors("fetching a message"):
            message = await self._client.get_messages(chat_id, ids=message_id)
        target = replied_to_id(message)
        return None if target is None else (target, getattr(message.reply_to, "quote_text", None) or None)

    async def replied_to(self, chat_id: int, message_id: int) -> Quote | None:
        """The message that message `message_id` replies to, as Telethon's get_reply_message
        fetches it (bots reach other bots' messages only this way); None if it has no text."""
        with translated_errors("fetching a replied-to message"):
            replied = await self._client.get_messages(chat_id, ids=types.InputMessageReplyTo(message_id))
        if replied is None or not (replied.message or "").strip():
            return None
        if replied.out:
            return Quote(replied.message, "bot")
        return Quote(replied.message, "someone", _display_name(replied.sender))

    async def _message(self, chat_id: int, message_id: int) -> Any:
        with translated_errors("fetching a message"):
            message = await self._client.get_messages(chat_id, ids=message_id)
        # Telethon gives None for a message that was deleted (MessageEmpty).
        return message if message is not None and getattr(message, "media", None) is not None else None


class TelegramChatAdmins:
    """The `ChatAdmins` over a Telethon client: a group's creator and admins by Telegram's own
    participant rights (`get_permissions`: channels.getParticipant in a supergroup, the
    participant list of a basic group)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def is_admin(self, chat_id: int, user_id: int) -> bool:
        if user_id == chat_id:
            return True  # an anonymous admin writes as the group itself, which only admins can
        with translated_errors("checking admin rights"):
            try:
                permissions = await self._client.get_permissions(chat_id, user_id)
            except errors.UserNotParticipantError:
                return False  # no longer in the group
        return bool(permissions is not None and permissions.is_admin)


def _strip_bot_name(text: str, username: str) -> tuple[str, bool, bool]:
    """(text without our @name at its start or end or after a command, named us, named another bot)."""
    command = _COMMAND.match(text)
    if command and command.group("bot"):
        if not username or command.group("bot").casefold() != username.casefold():
            return text, False, True
        return f"/{command.group('name')}{text[command.end():]}", True, False
    if not username:
        return text, False, False
    name = re.escape(username)
    mention = re.compile(rf"(?<![\w@])@{name}(?!\w)", re.IGNORECASE)
    if not mention.search(text):
        return text, False, False
    text = re.sub(rf"^\s*@{name}(?!\w)[\s,:]*", "", text, flags=re.IGNORECASE)
    text = re.sub(rf"\s*@{name}(?=\W*$)", "", text, flags=re.IGNORECASE)
    return text.strip(), True, False


def _display_name(sender: Any) -> str:
    if sender is None:
        return ""
    parts = [getattr(sender, "first_name", None), getattr(sender, "last_name", None)]
    full = " ".join(part for part in parts if part)
    return full or getattr(sender, "username", None) or getattr(sender, "title", None) or ""


class TelegramRunner:
    """Logs the bot in, sets its command menu and feeds incoming messages to `on_message`."""

    def __init__(
        self,
        client: Any,
        bot_token: Secret,
        on_message: MessageHandler,
        *,
        commands: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._client = client
        self._bot_token = bot_token
        self._on_message = on_message
        self._commands = tuple(commands)
        self._me: BotIdentity | None = None
        self._event = events.NewMessage(incoming=True)
        self._open = asyncio.Event()

    @property
    def me(self) -> BotIdentity | None:
        return self._me

    async def start(self, *, before_messages: Callable[[], Awaitable[object]] | None = None) -> BotIdentity:
        """Log in, set the menu, run `before_messages` (resuming what the last run left), then
        pass messages on.

        The handler is registered before connecting: Telethon hands out the updates that arrived
        while the bot was stopped (catch-up) as soon as it connects, each in its own task, and a
        handler added later would never see them. Until `before_messages` is done they wait, so
        older unfinished messages are queued before newer ones.
        """
        self._client.add_event_handler(self._handle_event, self._event)
        try:
            with translated_errors("login"):
                await self._client.start(bot_token=self._bot_token.reveal())
                me = await self._client.get_me()
            self._me = BotIdentity(me.id, me.username or "")
            log.info("logged in to Telegram as @%s (id %s)", self._me.username, self._me.id)
            await self._set_command_menu()
            if before_messages is not None:
                await before_messages()
        except BaseException:
            self._client.remove_event_handler(self._handle_event, self._event)
            raise
        self._open.set()
        return self._me

    async def run_until_disconnected(self) -> None:
        await self._client.run_until_disconnected()

    async def stop(self) -> None:
        self._client.remove_event_handler(self._handle_event, self._event)
        await self._client.disconnect()

    async def _set_command_menu(self) -> None:
        if not self._commands:
            return
        request = functions.bots.SetBotCommandsRequest(
            scope=types.BotCommandScopeDefault(),
            lang_code="",
            commands=[types.BotCommand(name.lstrip("/"), about) for name, about in self._commands],
        )
        try:
            await self._client(request)
        except Exception as error:  # the menu is a convenience: typed commands work without it
            reason = translate_error(error, "setting the command menu") or error
            log.warning("command menu not set, commands still work when typed: %s", reason)

    async def _handle_event(self, event: Any) -> None:
        await self._open.wait()
        assert self._me is not None
        incoming = incoming_from_event(event, self._me)
        if incoming is None:
            return
        try:
            await self._on_message(incoming)
        except Exception:
            log.exception("handling message %s in chat %s failed", incoming.message_id, incoming.chat_id)
