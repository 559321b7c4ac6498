"""A stand-in for Telethon's TelegramClient that behaves like Telegram and records what users see.

It takes the same calls as the parts of `TelegramClient` the bot uses and answers the way the
server does: over-long or empty texts, unchanged edits and unknown message ids raise Telethon's own
errors, and drafts are refused outside private chats. Every message, edit, draft update and typing
action is kept with its time on the injected clock. Failures can be injected per kind of call, and
`enforce_limits` turns on Telegram's published pace (1 a second per chat, 20 a minute in a group,
30 a second overall), answering a call that breaks it with a FloodWaitError and counting it.
`add_latency` makes every call travel to the server and back on the injected clock: the pace is
judged, and the call recorded, when it lands, as Telegram does, so calls still in flight count.

Like Telethon, it runs every handler of an update as its own task, and hands out the updates
that arrived while the bot was away (`arrive_while_offline`) as soon as `start` connects, before
`start` returns: a bot that registers its handler later never sees them. Like Telegram, it
refuses to send to a chat the bot has never seen (Telethon's ValueError), and message ids are
unique per chat for good, across restarts of the bot.

The users' messages it delivered can be fetched again by id (`get_messages(chat, ids=...)`, None
once the user deleted one: `user_deletes`), and their media downloaded into memory
(`download_media(message, file=bytes)`): the bytes a media helper below (`voice_note`,
`audio_file`, `photo`, `image_document`) registered for its document or photo, as Telegram's
servers keep the file. An album is several messages sharing a `grouped_id`, each its own update.

Who is in a group and with what rights (`set_role`) is answered as Telegram does, through
Telethon's own `get_permissions` (tests/fakes/telegram_members.py).

Several sessions of one bot account (several instances answering at once): a client made with
`same_account_as=other` sees the same chats, messages, drafts and ids as `other`, as every session
of one account does, and spends the same flood allowance: Telegram counts its limits per account
(the bot's token), so calls from both sessions land in one pace (give each `enforce_limits`).
One made with `receive_updates=False` gets no updates (Telethon's parameter:
Telegram sends that session none; sending, editing, deleting and fetching work): an update
dispatched to it waits, as Telegram's difference would, until `set_receive_updates(True)` and
`catch_up()` hand it out.
"""
from __future__ import annotations

import asyncio
import functools
import io
import itertools
import math
import random
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, NoReturn, TypeVar

from PIL import Image
from telethon import errors, events, functions, types, utils

from integrations.clock import Clock
from tests.fakes.telegram_members import MEMBER_REQUESTS, ChatMembers

FaultKind = Literal[
    "send", "edit", "draft", "typing", "commands", "start", "delete", "get_messages", "download", "participants"
]
T = TypeVar("T")

TEXT_LIMIT = 4096
# A call that waited exactly the required time must not lose to float rounding on the fake clock.
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Edit:
    at: float
    text: str
    entities: tuple[types.TypeMessageEntity, ...]


@dataclass
class SentMessage:
    """One of the bot's messages as the user sees it now, with the history of its edits."""

    id: int
    chat_id: int
    text: str
    entities: tuple[types.TypeMessageEntity, ...]
    reply_to: int | None
    sent_at: float
    link_preview: bool
    edits: list[Edit] = field(default_factory=list)

    @property
    def message(self) -> str:
        return self.text


@dataclass(frozen=True)
class DraftUpdate:
    at: float
    draft_id: int
    text: str
    entities: tuple[types.TypeMessageEntity, ...]


@dataclass(frozen=True)
class Violation:
    at: float
    kind: str
    chat_id: int
    scope: Literal["chat", "group", "global"]
    seconds: int


@dataclass(frozen=True)
class Call:
    at: float
    kind: str
    chat_id: int | None
    outcome: str  # "ok" or the name of the error raised


@dataclass(frozen=True)
class _Limits:
    per_chat_interval: float
    global_per_second: int
    group_per_minute: int | None


def _over_the_network(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """An API call that reaches the server after one trip and answers after another (see `add_latency`)."""

    @functools.wraps(method)
    async def travelling(self: "FakeTelegramClient", *args: Any, **kwargs: Any) -> T:
        await self._travel()
        try:
            return await method(self, *args, **kwargs)
        finally:
            await self._travel()

    return travelling


class FakeSession:
    def __init__(self) -> None:
        self.dc_id: int | None = None
        self.server_address: str | None = None
        self.port: int | None = None

    def set_dc(self, dc_id: int, server_address: str, port: int) -> None:
        self.dc_id, self.server_address, self.port = dc_id, server_address, port


class FakeTelegramClient(ChatMembers):
    def __init__(
        self,
        clock: Clock,
        *,
        bot_id: int = 7001,
        bot_username: str = "switchboard_bot",
        knows_every_chat: bool = False,
        same_account_as: FakeTelegramClient | None = None,
        receive_updates: bool = True,
        keeps_incoming: bool = True,
    ) -> None:
        self.clock = clock
        self.session = FakeSession()
        self.me = types.User(id=bot_id, bot=True, username=bot_username, first_name="Switchboard")
        self.login_token: str | None = None
        self.connected = False
        self.commands: list[types.BotCommand] | None = None
        self.handlers: list[tuple[Callable[[Any], Any], Any]] = []
        self.calls: list[Call] = []
        self.violations: list[Violation] = []
        self._messages: dict[int, list[SentMessage]] = defaultdict(list)
        self._by_id: dict[int, SentMessage] = {}
        self._by_random_id: dict[tuple[int, int], SentMessage] = {}
        self._drafts: dict[int, list[DraftUpdate]] = defaultdict(list)
        self._typing: dict[int, list[float]] = defaultdict(list)
        self._faults: dict[str, deque[tuple[int | None, BaseException]]] = defaultdict(deque)
        self._limits: _Limits | None = None
        self._latency: tuple[float, float] | None = None
        self._latency_draws = random.Random(0)
        self._landed_in_chat: dict[int, deque[float]] = {}
        self._landed: deque[float] = deque()
        self._ids = itertools.count(1)
        self._disconnected = asyncio.Event()
        self._offline_updates: list[Any] = []
        self.known_chats: set[int] = set()
        # For tests of the transport alone, which send to chats no update came from.
        self._knows_every_chat = knows_every_chat
        # Handler tasks still running (Telethon keeps no such list; tests wait on it).
        self.dispatching: set[asyncio.Task[Any]] = set()
        # The users' messages Telegram holds, by chat and id (None: deleted by the user). A
        # benchmark that weighs the bot's memory keeps none (`keeps_incoming`): Telegram keeps
        # them on its servers, not in the bot's process.
        self._incoming: dict[tuple[int, int], Any] = {}
        self._keeps_incoming = keeps_incoming
        # Who is in each group, with what rights (tests/fakes/telegram_members.py).
        self._init_members()
        # Whether Telegram sends this session updates (Telethon's receive_updates).
        self.receiving = receive_updates
        if same_account_as is not None:
            for name in _ACCOUNT_STATE:
                setattr(self, name, getattr(same_account_as, name))

    # --- test controls -------------------------------------------------------------------------

    def fail_next(self, kind: FaultKind, error: BaseException, times: int = 1, *, chat_id: int | None = None) -> None:
        """The next `times` calls of this kind (in `chat_id`, if given) raise `error` (a Telethon error)."""
        self._faults[kind].extend([(chat_id, error)] * times)

    def enforce_limits(
        self, per_chat_interval: float = 1.0, global_per_second: int = 30, group_per_minute: int | None = 20
    ) -> None:
        self._limits = _Limits(per_chat_interval, global_per_second, group_per_minute)

    def add_latency(self, low: float, high: float, *, seed: int = 0) -> None:
        """Every API call then takes `low`..`high` seconds (uniform, seeded) on the injected clock to
        reach the server, and another such trip for its answer to come back."""
        self._latency = (low, high)
        self._latency_draws = random.Random(seed)

    async def deliver(self, event: Any) -> None:
        """Hand an update to the registered handlers, each in its own task as Telethon's update
        loop does, and wait until they finish (tests want to know when a message was taken)."""
        tasks = self.dispatch(event)
        if tasks:
            await asyncio.wait(tasks)

    def dispatch(self, event: Any) -> list[asyncio.Task[Any]]:
        """Start the handlers of one update, each as its own task, without waiting for them."""
        self._keep(event.message)
        if not self.receiving:
            self._offline_updates.append(event)  # for its difference, once it receives
            return []
        tasks = []
        for callback, builder in list(self.handlers):
            message = event.message
            if getattr(builder, "incoming", None) and message.out:
                continue
            if getattr(builder, "outgoing", None) and not message.out:
                continue
            task = asyncio.ensure_future(callback(event))
            self.dispatching.add(task)
            task.add_done_callback(self.dispatching.discard)
            tasks.append(task)
        return tasks

    def arrive_while_offline(self, event: Any) -> None:
        """An update sent while the bot is not connected: handed out when it next connects.

        Catch-up here is per client: this client hands it to whoever starts it next, whatever
        update state its session holds. Telegram hands a session only what came after its own
        state (pts), and a session without one starts from now; that model, which the catch-up
        handover between leaders depends on, is the soak's fake Telegram
        (bench/_soak_telegram_server.py), used by tests/integration/test_catch_up_handover.py."""
        if event.message.date is None:
            event.message.date = self.clock.now()
        self._keep(event.message)
        self._offline_updates.append(event)

    def user_deletes(self, chat_id: int, message_id: int) -> None:
        """The user deleted their message: fetching it gives None from now on."""
        self._incoming[(chat_id, message_id)] = None

    def _keep(self, message: Any) -> None:
        self.known_chats.add(message.chat_id)
        self._saw_sender(message)
        if self._keeps_incoming:
            self._incoming.setdefault((message.chat_id, message.id), message)

    async def settle_dispatch(self) -> None:
        """Wait for every handler task started so far."""
        while self.dispatching:
            await asyncio.wait(set(self.dispatching))

    # --- what the users see --------------------------------------------------------------------

    def messages(self, chat_id: int) -> list[SentMessage]:
        return list(self._messages.get(chat_id, []))

    def drafts(self, chat_id: int) -> list[DraftUpdate]:
        return list(self._drafts.get(chat_id, []))

    def typing_actions(self, chat_id: int) -> list[float]:
        return list(self._typing.get(chat_id, []))

    def final_text(self, chat_id: int, separator: str = "") -> str:
        return separator.join(message.text for message in self._messages.get(chat_id, []))

    @property
    def violation_count(self) -> int:
        return len(self.violations)

    # --- the TelegramClient API ----------------------------------------------------------------

    async def start(self, bot_token: str | None = None, **_: Any) -> "FakeTelegramClient":
        self._take_fault("start", None)
        if not bot_token:
            raise ValueError("the fake only logs in as a bot")
        self.login_token = bot_token
        self.connected = True
        self._disconnected = asyncio.Event()
        if self.receiving:
            await self.catch_up()
        return self

    async def set_receive_updates(self, receive_updates: bool) -> None:
        """Telethon's: from now on Telegram sends this session updates (or stops)."""
        self.receiving = receive_updates

    async def catch_up(self) -> None:
        """Telethon's catch-up: missed updates go to the handlers registered right now."""
        caught_up, self._offline_updates = self._offline_updates, []
        for event in caught_up:
            self.dispatch(event)

    async def get_me(self, input_peer: bool = False) -> types.User:
        return self.me

    async def disconnect(self) -> None:
        self.connected = False
        self._disconnected.set()

    async def run_until_disconnected(self) -> None:
        await self._disconnected.wait()

    def is_connected(self) -> bool:
        return self.connected

    def add_event_handler(self, callback: Callable[[Any], Any], event: Any = None) -> None:
        self.handlers.append((callback, event if event is not None else events.Raw()))

    def remove_event_handler(self, callback: Callable[[Any], Any], event: Any = None) -> int:
        before = len(self.handlers)
        self.handlers = [
            (cb, ev) for cb, ev in self.handlers if not (cb == callback and (event is None or ev is event))
        ]
        return before - len(self.handlers)

    def on(self, event: Any) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        def decorator(callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
            self.add_event_handler(callback, event)
            return callback

        return decorator

    @_over_the_network
    async def get_messages(self, entity: int, *args: Any, ids: Any = None, **_: Any) -> Any:
        """Messages by id, as Telethon returns them: one Message (None if it is gone) for one id,
        a list for a list. The fake fetches users' messages by id only."""
        chat_id = _chat_id(entity)
        self._check_peer(chat_id)
        if ids is None or args:
            raise NotImplementedError("the fake fetches messages by ids= only")
        self._take_fault("get_messages", chat_id)
        self._record("get_messages", chat_id, "ok")
        if isinstance(ids, types.InputMessageReplyTo):
            return self._replied_to(chat_id, ids.id)
        if isinstance(ids, int):
            return self._incoming.get((chat_id, ids))
        return [self._incoming.get((chat_id, message_id)) for message_id in ids]

    def _replied_to(self, chat_id: int, message_id: int) -> Any:
        """What messages.getMessages answers for inputMessageReplyTo(id) (Telethon's
        get_reply_message): the message that message replies to, a user's as delivered or the
        bot's own (out), or None (no reply, or the message is gone)."""
        header = getattr(self._incoming.get((chat_id, message_id)), "reply_to", None)
        target = getattr(header, "reply_to_msg_id", None)
        if target is None:
            return None
        if (chat_id, target) in self._incoming:
            return self._incoming[(chat_id, target)]
        sent = self._by_id.get(target)
        if sent is None or sent.chat_id != chat_id:
            return None
        real_id, peer_type = utils.resolve_id(chat_id)
        return types.Message(
            id=sent.id, peer_id=peer_type(real_id), date=None, message=sent.text, out=True, from_id=types.PeerUser(self.me.id)
        )

    @_over_the_network
    async def download_media(
        self, message: Any, file: Any = None, *, thumb: Any = None, progress_callback: Any = None
    ) -> bytes | None:
        """A message's media, into memory with `file=bytes` as Telethon does; None without media."""
        if file is not bytes:
            raise NotImplementedError("the fake downloads into memory only: pass file=bytes")
        chat_id = getattr(message, "chat_id", None)
        self._take_fault("download", chat_id)
        media = getattr(message, "media", None)
        # Telethon downloads a photo's largest size, a document's file.
        kept = getattr(media, "document", None) or getattr(media, "photo", None)
        if kept is None:
            return None
        self._record("download", chat_id, "ok")
        return _FILES[kept.id]

    def downloads(self, chat_id: int) -> int:
        """How many files the bot downloaded from this chat."""
        return sum(1 for call in self.calls if call.kind == "download" and call.chat_id == chat_id and call.outcome == "ok")

    @_over_the_network
    async def delete_messages(self, entity: int, message_ids: Any, *, revoke: bool = True) -> list[Any]:
        chat_id = _chat_id(entity)
        self._check_peer(chat_id)
        self._take_fault("delete", chat_id)
        ids = [message_ids] if isinstance(message_ids, int) else list(message_ids)
        kept = []
        for sent in self._messages.get(chat_id, []):
            if sent.id in ids:
                self._by_id.pop(sent.id, None)
            else:
                kept.append(sent)
        self._messages[chat_id] = kept
        self._record("delete", chat_id, "ok")
        return []

    @_over_the_network
    async def send_message(
        self,
        entity: int,
        message: str = "",
        *,
        reply_to: int | None = None,
        parse_mode: Any = (),
        formatting_entities: list[types.TypeMessageEntity] | None = None,
        link_preview: bool = True,
        **_: Any,
    ) -> SentMessage:
        chat_id = _chat_id(entity)
        self._check_peer(chat_id)
        # Telethon draws a fresh random_id for every send_message.
        request = functions.messages.SendMessageRequest(peer=chat_id, message=message)
        entities = self._entities(parse_mode, formatting_entities)
        return self._send(request, chat_id, entities, reply_to, link_preview)

    async def get_input_entity(self, peer: Any) -> types.TypeInputPeer:
        chat_id = _chat_id(peer)
        if chat_id not in self.known_users:  # a user seen in a group can be addressed, not sent to
            self._check_peer(chat_id)
        real_id, kind = utils.resolve_id(chat_id)
        if kind is types.PeerUser:
            return types.InputPeerUser(real_id, 0)
        if kind is types.PeerChat:
            return types.InputPeerChat(real_id)
        return types.InputPeerChannel(real_id, 0)

    def _send_request(self, request: functions.messages.SendMessageRequest) -> Any:
        """`messages.sendMessage` as Telegram answers it: a private chat gets the short answer, a
        group the `Updates` with `updateMessageID` and the new message."""
        chat_id = _chat_id(request.peer)
        self._check_peer(chat_id)
        reply_to = request.reply_to.reply_to_msg_id if request.reply_to is not None else None
        sent = self._send(request, chat_id, tuple(request.entities or ()), reply_to, not request.no_webpage)
        date = self.clock.now()
        if chat_id > 0:
            return types.UpdateShortSentMessage(out=True, id=sent.id, pts=sent.id, pts_count=1, date=date)
        peer = utils.get_peer(chat_id)
        message = types.Message(id=sent.id, peer_id=peer, date=date, message=sent.text, out=True)
        new_message = (
            types.UpdateNewChannelMessage(message, pts=sent.id, pts_count=1)
            if isinstance(peer, types.PeerChannel)
            else types.UpdateNewMessage(message, pts=sent.id, pts_count=1)
        )
        return types.Updates(
            updates=[types.UpdateMessageID(sent.id, request.random_id), new_message],
            users=[],
            chats=[],
            date=date,
            seq=0,
        )

    def _send(
        self,
        request: functions.messages.SendMessageRequest,
        chat_id: int,
        entities: tuple[Any, ...],
        reply_to: int | None,
        link_preview: bool,
    ) -> SentMessage:
        # Telegram keeps every random_id it has seen for good and answers a repeat with the
        # message the first call made (even one deleted since), sending nothing new.
        earlier = self._by_random_id.get((chat_id, request.random_id))
        if earlier is not None:
            self._record("send", chat_id, "repeat")
            return earlier
        self._take_fault("send", chat_id)
        self._check_text(request.message, entities, request, "send", chat_id)
        self._check_pace("send", chat_id, request)
        now = self.clock.monotonic()
        sent = SentMessage(next(self._ids), chat_id, request.message, entities, reply_to, now, link_preview)
        self._messages[chat_id].append(sent)
        self._by_id[sent.id] = sent
        self._by_random_id[(chat_id, request.random_id)] = sent
        self._land("send", chat_id)
        return sent

    @_over_the_network
    async def edit_message(
        self,
        entity: int,
        message: int | Any = None,
        text: str | None = None,
        *,
        parse_mode: Any = (),
        formatting_entities: list[types.TypeMessageEntity] | None = None,
        link_preview: bool = True,
        **_: Any,
    ) -> SentMessage:
        chat_id = _chat_id(entity)
        message_id = message if isinstance(message, int) else getattr(message, "id", None)
        request = functions.messages.EditMessageRequest(peer=chat_id, id=message_id or 0, message=text)
        self._take_fault("edit", chat_id)
        target = self._by_id.get(message_id) if isinstance(message_id, int) else None
        if target is None or target.chat_id != chat_id:
            self._refuse("edit", chat_id, errors.MessageIdInvalidError(request=request))
        text = text or ""
        entities = self._entities(parse_mode, formatting_entities)
        self._check_text(text, entities, request, "edit", chat_id)
        if text == target.text and entities == target.entities:
            self._refuse("edit", chat_id, errors.MessageNotModifiedError(request=request))
        self._check_pace("edit", chat_id, request)
        target.text, target.entities = text, entities
        target.edits.append(Edit(self.clock.monotonic(), text, entities))
        self._land("edit", chat_id)
        return target

    @_over_the_network
    async def __call__(self, request: Any, ordered: bool = False) -> Any:
        if isinstance(request, functions.messages.SetTypingRequest):
            return self._set_typing(request)
        if isinstance(request, functions.messages.SendMessageRequest):
            return self._send_request(request)
        if isinstance(request, MEMBER_REQUESTS):
            return self._answer_members(request)
        if isinstance(request, functions.bots.SetBotCommandsRequest):
            self._take_fault("commands", None)
            self.commands = list(request.commands)
            self._record("commands", None, "ok")
            return True
        raise NotImplementedError(f"FakeTelegramClient does not answer {type(request).__name__}")

    # --- Telegram's behaviour ------------------------------------------------------------------

    def _set_typing(self, request: functions.messages.SetTypingRequest) -> bool:
        chat_id = _chat_id(request.peer)
        action = request.action
        if isinstance(action, types.SendMessageTypingAction):
            self._take_fault("typing", chat_id)
            self._typing[chat_id].append(self.clock.monotonic())
            self._record("typing", chat_id, "ok")
            return True
        if isinstance(action, types.SendMessageTextDraftAction):
            self._take_fault("draft", chat_id)
            if chat_id <= 0:
                # What Telegram answers for a draft outside a private chat; Telethon has no class for it.
                self._refuse("draft", chat_id, errors.BadRequestError(request, "TEXTDRAFT_PEER_INVALID", 400))
            entities = tuple(action.text.entities)
            self._check_text(action.text.text, entities, request, "draft", chat_id)
            self._check_pace("draft", chat_id, request)
            update = DraftUpdate(self.clock.monotonic(), action.random_id, action.text.text, entities)
            self._drafts[chat_id].append(update)
            self._land("draft", chat_id)
            return True
        raise NotImplementedError(f"FakeTelegramClient does not show {type(action).__name__}")

    def _entities(self, parse_mode: Any, formatting_entities: list[Any] | None) -> tuple[Any, ...]:
        if formatting_entities is None and parse_mode is not None:
            # The real client would parse Telethon's own Markdown here, which the bot never wants.
            raise TypeError("pass formatting_entities (or parse_mode=None): the fake does not parse Markdown")
        return tuple(formatting_entities or ())

    def _check_text(
        self, text: str, entities: tuple[Any, ...], request: Any, kind: str, chat_id: int
    ) -> None:
        if not text.strip():
            self._refuse(kind, chat_id, errors.MessageEmptyError(request=request))
        length = _utf16_len(text)
        if length > TEXT_LIMIT:
            self._refuse(kind, chat_id, errors.MessageTooLongError(request=request))
        for entity in entities:
            if entity.length <= 0 or entity.offset < 0 or entity.offset + entity.length > length:
                self._refuse(kind, chat_id, errors.EntityBoundsInvalidError(request=request))

    def _check_peer(self, chat_id: int) -> None:
        if chat_id not in self.known_chats and not self._knows_every_chat:
            # What Telethon raises for a peer it has never seen (nothing in its entity cache).
            raise ValueError(f"Could not find the input entity for PeerUser(user_id={chat_id})")

    async def _travel(self) -> None:
        if self._latency is not None:
            await self.clock.sleep(self._latency_draws.uniform(*self._latency))

    def _check_pace(self, kind: str, chat_id: int, request: Any) -> None:
        limits = self._limits
        if limits is None:
            return
        now = self.clock.monotonic()
        in_chat = self._landed_in_chat.get(chat_id, deque())
        if in_chat and now - in_chat[-1] < limits.per_chat_interval - _TOLERANCE:
            self._flood(kind, chat_id, "chat", in_chat[-1] + limits.per_chat_interval - now, request)
        if chat_id < 0 and limits.group_per_minute:
            recent = [t for t in in_chat if t > now - 60.0 + _TOLERANCE]
            if len(recent) >= limits.group_per_minute:
                self._flood(kind, chat_id, "group", recent[-limits.group_per_minute] + 60.0 - now, request)
        while self._landed and self._landed[0] <= now - 1.0 + _TOLERANCE:
            self._landed.popleft()
        if len(self._landed) >= limits.global_per_second:
            self._flood(kind, chat_id, "global", self._landed[0] + 1.0 - now, request)

    def _flood(
        self, kind: str, chat_id: int, scope: Literal["chat", "group", "global"], wait: float, request: Any
    ) -> NoReturn:
        seconds = max(1, math.ceil(wait))
        self.violations.append(Violation(self.clock.monotonic(), kind, chat_id, scope, seconds))
        self._refuse(kind, chat_id, errors.FloodWaitError(request=request, capture=seconds))

    def _land(self, kind: str, chat_id: int) -> None:
        now = self.clock.monotonic()
        window = max(self._limits.group_per_minute or 1, 1) if self._limits else 1
        in_chat = self._landed_in_chat.setdefault(chat_id, deque(maxlen=window))
        in_chat.append(now)
        if self._limits is not None:
            self._landed.append(now)
        self._record(kind, chat_id, "ok")

    def _take_fault(self, kind: FaultKind, chat_id: int | None) -> None:
        faults = self._faults.get(kind)
        if not faults:
            return
        for index, (only_chat, error) in enumerate(faults):
            if only_chat is None or only_chat == chat_id:
                del faults[index]
                self._refuse(kind, chat_id, error)

    def _refuse(self, kind: str, chat_id: int | None, error: BaseException) -> NoReturn:
        self._record(kind, chat_id, type(error).__name__)
        raise error

    def _record(self, kind: str, chat_id: int | None, outcome: str) -> None:
        self.calls.append(Call(self.clock.monotonic(), kind, chat_id, outcome))


# What every session of one bot account shares: the chats and what is in them.
_ACCOUNT_STATE = (
    "me", "_messages", "_by_id", "_by_random_id", "_drafts", "_typing", "_ids", "known_chats", "_incoming",
    "_roles", "known_users",
    # Flood limits are the account's, whichever session calls (API-FACTS.md, Telegram).
    "_landed", "_landed_in_chat", "violations",
)


def new_message_event(
    *,
    chat_id: int,
    sender_id: int,
    text: str,
    message_id: int = 1,
    mentioned: bool = False,
    sender_name: str = "Ada",
    out: bool = False,
    media: types.TypeMessageMedia | None = None,
    reply_to: int | None = None,
    quote: str | None = None,
    grouped_id: int | None = None,
) -> events.NewMessage.Event:
    """A real Telethon NewMessage event, as the update loop builds it for an incoming message."""
    real_id, peer_type = utils.resolve_id(chat_id)
    message = types.Message(
        id=message_id,
        peer_id=peer_type(real_id),
        date=None,
        message=text,
        from_id=types.PeerUser(sender_id),
        mentioned=mentioned,
        out=out,
        media=media,
        grouped_id=grouped_id,
        # A reply, as Telegram describes it: the id replied to, and the part the user quoted.
        reply_to=types.MessageReplyHeader(reply_to_msg_id=reply_to, quote=bool(quote) or None, quote_text=quote)
        if reply_to is not None
        else None,
    )
    message._sender = types.User(id=sender_id, first_name=sender_name)
    return events.NewMessage.Event(message)


def _chat_id(peer: Any) -> int:
    if isinstance(peer, int) and not isinstance(peer, bool):
        return peer
    if isinstance(peer, (types.InputPeerUser, types.InputPeerChat, types.InputPeerChannel, types.User, types.Chat, types.Channel)):
        return utils.get_peer_id(peer)
    raise TypeError(f"the fake addresses chats by their id, not {type(peer).__name__}")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# The files Telegram's servers keep, by document id (for `download_media`).
_FILES: dict[int, bytes] = {}
_DOCUMENT_IDS = itertools.count(1000)


def voice_note(seconds: int = 3, *, data: bytes | None = None, size: int | None = None) -> types.MessageMediaDocument:
    """A voice message's media as Telegram sends it (an OGG/Opus document marked as voice, no file
    name). `data` is the file Telegram keeps (made up when not given); `size` what Telegram says
    its size is (the data's length when not given)."""
    data = data if data is not None else b"OggS" + bytes(60 * seconds)
    attributes = [types.DocumentAttributeAudio(duration=seconds, voice=True)]
    return types.MessageMediaDocument(document=_document("audio/ogg", attributes, data=data, size=size))


def audio_file(
    seconds: int = 30, *, name: str = "song.mp3", mime_type: str = "audio/mpeg", data: bytes | None = None
) -> types.MessageMediaDocument:
    """An audio file as Telegram sends it: a document with an audio attribute and a file name."""
    data = data if data is not None else b"ID3" + bytes(100 * seconds)
    attributes = [types.DocumentAttributeAudio(duration=seconds, title="A song"), types.DocumentAttributeFilename(name)]
    return types.MessageMediaDocument(document=_document(mime_type, attributes, data=data))


def photo(width: int = 800, height: int = 600, *, data: bytes | None = None, size: int | None = None) -> types.MessageMediaPhoto:
    """A photo as Telegram sends it (a JPEG it recompressed, described by its sizes; the largest
    is what `download_media` fetches). `data`: the file kept (a JPEG of `width` x `height` when
    not given); `size`: what Telegram says its size is."""
    data = data if data is not None else image_bytes(width, height)
    photo_id = next(_DOCUMENT_IDS)
    _FILES[photo_id] = data
    sizes = [
        types.PhotoSize(type="m", w=min(width, 320), h=min(height, 320), size=min(len(data), 20_000)),
        types.PhotoSize(type="y", w=width, h=height, size=len(data) if size is None else size),
    ]
    return types.MessageMediaPhoto(photo=types.Photo(id=photo_id, access_hash=12, file_reference=b"", date=None, sizes=sizes, dc_id=2))


def image_document(
    width: int = 1200, height: int = 900, *, name: str = "scan.png", mime_type: str = "image/png", data: bytes | None = None, size: int | None = None
) -> types.MessageMediaDocument:
    """An image sent as a file (uncompressed): a document with image attributes and a file name."""
    kind = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}.get(mime_type, "PNG")
    data = data if data is not None else image_bytes(width, height, kind=kind)
    attributes = [types.DocumentAttributeImageSize(w=width, h=height), types.DocumentAttributeFilename(name)]
    return types.MessageMediaDocument(document=_document(mime_type, attributes, data=data, size=size))


def image_bytes(width: int, height: int, *, kind: str = "JPEG", color: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    """A real image file of that size (Pillow), so the bot and the fake LLMs can read it."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, kind)
    return buffer.getvalue()


def document_file(name: str | None, data: bytes, *, mime_type: str = "text/plain", size: int | None = None) -> types.MessageMediaDocument:
    """A file sent as a document, as Telegram sends it: the MIME type the sender's app gave it and
    its name (`DocumentAttributeFilename`; none when `name` is None). `size`: what Telegram says
    its size is (the data's length when not given)."""
    attributes = [types.DocumentAttributeFilename(name)] if name is not None else []
    return types.MessageMediaDocument(document=_document(mime_type, attributes, data=data, size=size))


def sticker() -> types.MessageMediaDocument:
    attributes = [types.DocumentAttributeSticker(alt="👍", stickerset=types.InputStickerSetEmpty())]
    return types.MessageMediaDocument(document=_document("image/webp", attributes))


def _document(mime_type: str, attributes: list[Any], *, data: bytes = bytes(4096), size: int | None = None) -> types.Document:
    document_id = next(_DOCUMENT_IDS)
    _FILES[document_id] = data
    return types.Document(
        id=document_id,
        access_hash=22,
        file_reference=b"",
        date=None,
        mime_type=mime_type,
        size=len(data) if size is None else size,
        dc_id=2,
        attributes=attributes,
    )
