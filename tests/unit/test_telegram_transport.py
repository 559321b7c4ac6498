from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

import pytest
from telethon import errors, functions, types

from bot.config import DcOverride, Secret, TelegramSettings
from bot.telegram.transport import (
    BotIdentity,
    TelegramRunner,
    TelegramTransport,
    build_client,
    incoming_from_event,
    to_telethon_entities,
)
from handlers.richtext import Entity, RichText
from handlers.transport import DraftsUnsupported, IncomingMessage
from integrations.clock import ManualClock
from integrations.errors import AuthFailed, BadRequest, RateLimited, Unavailable
from tests.fakes.telegram import FakeTelegramClient, new_message_event

USER = 4242
GROUP = -1001234567890
BOT = BotIdentity(7001, "switchboard_bot")
TOKEN = "123456:AAH-secret-token-value-that-must-not-leak"
API_HASH = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def client(clock: ManualClock) -> FakeTelegramClient:
    return FakeTelegramClient(clock, bot_id=BOT.id, bot_username=BOT.username, knows_every_chat=True)


@pytest.fixture
def transport(client: FakeTelegramClient) -> TelegramTransport:
    return TelegramTransport(client)


# --- entities -------------------------------------------------------------------------------------


def test_every_entity_kind_becomes_its_telethon_type_with_utf16_offsets() -> None:
    entities = (
        Entity("bold", 2, 4),
        Entity("italic", 0, 1),
        Entity("underline", 1, 1),
        Entity("strike", 3, 2),
        Entity("code", 6, 3),
        Entity("pre", 10, 5, language="python"),
        Entity("text_url", 16, 4, url="https://example.com"),
        Entity("blockquote", 0, 20),
        Entity("spoiler", 21, 2),
    )

    assert to_telethon_entities(entities) == [
        types.MessageEntityBold(2, 4),
        types.MessageEntityItalic(0, 1),
        types.MessageEntityUnderline(1, 1),
        types.MessageEntityStrike(3, 2),
        types.MessageEntityCode(6, 3),
        types.MessageEntityPre(10, 5, "python"),
        types.MessageEntityTextUrl(16, 4, "https://example.com"),
        types.MessageEntityBlockquote(0, 20),
        types.MessageEntitySpoiler(21, 2),
    ]


def test_pre_without_language_and_empty_entities_are_what_telegram_accepts() -> None:
    converted = to_telethon_entities((Entity("pre", 0, 3), Entity("bold", 1, 0), Entity("text_url", 0, 2)))

    assert converted == [types.MessageEntityPre(0, 3, "")]


async def test_send_delivers_text_with_entities_as_a_reply_without_link_preview(
    transport: TelegramTransport, client: FakeTelegramClient
) -> None:
    # "😀" is two UTF-16 units, so "bold" starts at offset 3.
    text = RichText("😀 bold", (Entity("bold", 3, 4),))

    message_id = await transport.send(USER, text, reply_to=17)

    [sent] = client.messages(USER)
    assert sent.id == message_id
    assert (sent.text, sent.entities, sent.reply_to) == ("😀 bold", (types.MessageEntityBold(3, 4),), 17)
    assert sent.link_preview is False


async def test_edit_replaces_the_text_the_user_sees(
    transport: TelegramTransport, client: FakeTelegramClient
) -> None:
    message_id = await transport.send(USER, RichText.plain("Hel"))

    await transport.edit(USER, message_id, RichText("Hello", (Entity("italic", 0, 5),)))

    [sent] = client.messages(USER)
    assert (sent.text, sent.entities) == ("Hello", (types.MessageEntityItalic(0, 5),))
    assert [edit.text for edit in sent.edits] == ["Hello"]


async def test_editing_to_the_same_text_is_not_an_error(
    transport: TelegramTransport, client: FakeTelegramClient
) -> None:
    message_id = await transport.send(USER, RichText.plain("same"))

    await transport.edit(USER, message_id, RichText.plain("same"))

    assert client.calls[-1].outcome == "MessageNotModifiedError"
    assert client.messages(USER)[0].edits == []


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, seconds",
    [
        (errors.FloodWaitError(request=None, capture=30), 30.0),
        (errors.SlowModeWaitError(request=None, capture=10), 10.0),
        (errors.FloodPremiumWaitError(request=None, capture=5), 5.0),
    ],
)
@pytest.mark.parametrize("kind", ["send", "edit", "draft", "typing"])
async def test_flood_errors_become_rate_limited_with_telegrams_wait(
    transport: TelegramTransport,
    client: FakeTelegramClient,
    kind: str,
    error: errors.FloodError,
    seconds: float,
) -> None:
    message_id = await transport.send(USER, RichText.plain("first"))
    client.fail_next(kind, error)
    calls = {
        "send": lambda: transport.send(USER, RichText.plain("x")),
        "edit": lambda: transport.edit(USER, message_id, RichText.plain("y")),
        "draft": lambda: transport.draft(USER, 99, RichText.plain("z")),
        "typing": lambda: transport.typing(USER),
    }

    with pytest.raises(RateLimited) as raised:
        await calls[kind]()

    assert raised.value.retry_after == seconds
    assert raised.value.upstream == "telegram"


@pytest.mark.parametrize(
    "text",
    ["x" * 4097, "😀" * 2049, "   "],
    ids=["4097 characters", "4098 UTF-16 units", "blank"],
)
async def test_texts_telegram_refuses_become_bad_request(transport: TelegramTransport, text: str) -> None:
    with pytest.raises(BadRequest):
        await transport.send(USER, RichText.plain(text))


async def test_a_text_of_exactly_4096_utf16_units_is_sent(transport: TelegramTransport, client) -> None:
    await transport.send(USER, RichText.plain("😀" * 2048))

    assert len(client.messages(USER)) == 1


async def test_editing_an_unknown_message_is_a_bad_request(transport: TelegramTransport) -> None:
    with pytest.raises(BadRequest):
        await transport.edit(USER, 12345, RichText.plain("hello"))


@pytest.mark.parametrize(
    "error, expected",
    [
        (errors.ServerError(request=None, message="INTERNAL", code=500), Unavailable),
        (errors.RpcCallFailError(request=None), Unavailable),
        (errors.TimedOutError(request=None, message="Timeout", code=-503), Unavailable),
        (ConnectionError("Cannot send requests while disconnected"), Unavailable),
        (TimeoutError(), Unavailable),
        (errors.AuthKeyUnregisteredError(request=None), AuthFailed),
        (errors.AuthKeyError(request=None, message="AUTH_KEY_DUPLICATED", code=406), AuthFailed),
        (errors.ChatWriteForbiddenError(request=None), BadRequest),
        (errors.MessageIdInvalidError(request=None), BadRequest),
        (errors.BadRequestError(request=None, message="ENTITY_BOUNDS_INVALID", code=400), BadRequest),
    ],
)
async def test_telethon_failures_become_project_errors(
    transport: TelegramTransport, client: FakeTelegramClient, error: Exception, expected: type
) -> None:
    client.fail_next("send", error)

    with pytest.raises(expected) as raised:
        await transport.send(USER, RichText.plain("hi"))

    assert type(raised.value) is expected


# --- drafts and typing ----------------------------------------------------------------------------


async def test_draft_in_a_private_chat_shows_a_live_preview(
    transport: TelegramTransport, client: FakeTelegramClient
) -> None:
    await transport.draft(USER, 555, RichText("Thinking", (Entity("bold", 0, 8),)))

    [draft] = client.drafts(USER)
    assert (draft.draft_id, draft.text, draft.entities) == (555, "Thinking", (types.MessageEntityBold(0, 8),))


async def test_draft_in_a_group_is_refused_without_calling_telegram(
    transport: TelegramTransport, client: FakeTelegramClient
) -> None:
    with pytest.raises(DraftsUnsupported):
        await transport.draft(GROUP, 555, RichText.plain("Thinking"))

    assert client.calls == []


async def test_telegram_refusing_the_draft_peer_means_drafts_unsupported(
    transport: TelegramTransport, client: FakeTelegramClient
) -> None:
    refusal = errors.BadRequestError(request=None, message="TEXTDRAFT_PEER_INVALID", code=400)
    client.fail_next("draft", refusal)

    with pytest.raises(DraftsUnsupported):
        await transport.draft(USER, 1, RichText.plain("a"))

    await transport.draft(USER, 1, RichText.plain("a"))  # another try may work: only that call was refused
    assert len(client.drafts(USER)) == 1


async def test_a_bot_refused_the_draft_method_stops_asking(
    transport: TelegramTransport, client: FakeTelegramClient
) -> None:
    client.fail_next("draft", errors.BotMethodInvalidError(request=None))
    with pytest.raises(DraftsUnsupported):
        await transport.draft(USER, 1, RichText.plain("a"))
    calls_after_refusal = len(client.calls)

    with pytest.raises(DraftsUnsupported):
        await transport.draft(USER + 1, 2, RichText.plain("b"))

    assert len(client.calls) == calls_after_refusal


async def test_other_draft_failures_keep_their_meaning(transport: TelegramTransport, client) -> None:
    client.fail_next("draft", errors.MessageTooLongError(request=None))

    with pytest.raises(BadRequest) as raised:
        await transport.draft(USER, 1, RichText.plain("a"))

    assert not isinstance(raised.value, DraftsUnsupported)


async def test_typing_shows_the_typing_action(
    transport: TelegramTransport, client: FakeTelegramClient, clock: ManualClock
) -> None:
    await transport.typing(GROUP)

    assert client.typing_actions(GROUP) == [clock.monotonic()]


# --- incoming messages ----------------------------------------------------------------------------


def test_private_message_is_always_addressed_to_the_bot() -> None:
    event = new_message_event(chat_id=USER, sender_id=USER, text="hello", message_id=9, sender_name="Ada")

    assert incoming_from_event(event, BOT) == IncomingMessage(
        chat_id=USER,
        user_id=USER,
        message_id=9,
        text="hello",
        is_private=True,
        addressed_to_bot=True,
        user_name="Ada",
    )


def test_group_chatter_is_not_addressed_to_the_bot() -> None:
    incoming = incoming_from_event(new_message_event(chat_id=GROUP, sender_id=USER, text="lunch?"), BOT)

    assert incoming is not None
    assert (incoming.chat_id, incoming.is_private, incoming.addressed_to_bot) == (GROUP, False, False)


def test_reply_to_the_bot_in_a_group_is_addressed() -> None:
    # Telegram sets `mentioned` on replies to our messages as well as on mentions.
    event = new_message_event(chat_id=GROUP, sender_id=USER, text="and then?", mentioned=True)

    incoming = incoming_from_event(event, BOT)

    assert incoming is not None and incoming.addressed_to_bot and incoming.text == "and then?"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("@switchboard_bot what is RAII?", "what is RAII?"),
        ("@Switchboard_Bot, what is RAII?", "what is RAII?"),
        ("what is RAII @switchboard_bot?", "what is RAII?"),
        ("ask @switchboard_bot about RAII", "ask @switchboard_bot about RAII"),
        ("/search@switchboard_bot rust traits", "/search rust traits"),
        ("/help@SWITCHBOARD_BOT", "/help"),
        ("/help", "/help"),
    ],
)
def test_mentions_and_commands_for_the_bot_in_a_group_are_addressed_and_cleaned(
    text: str, expected: str
) -> None:
    incoming = incoming_from_event(new_message_event(chat_id=GROUP, sender_id=USER, text=text), BOT)

    assert incoming is not None
    assert incoming.addressed_to_bot
    assert incoming.text == expected


@pytest.mark.parametrize(
    "text", ["/help@other_bot", "@switchboard_bot_two hi", "mail me at a@switchboard_bot.org"]
)
def test_commands_and_mentions_for_other_bots_are_not_addressed(text: str) -> None:
    incoming = incoming_from_event(new_message_event(chat_id=GROUP, sender_id=USER, text=text), BOT)

    assert incoming is not None and not incoming.addressed_to_bot
    assert incoming.text == text


@pytest.mark.parametrize("text", ["", "   ", "@switchboard_bot"])
def test_messages_without_text_are_ignored(text: str) -> None:
    event = new_message_event(chat_id=GROUP, sender_id=USER, text=text, mentioned=True)

    assert incoming_from_event(event, BOT) is None


# --- runner -------------------------------------------------------------------------------------


async def test_runner_logs_in_sets_the_menu_and_hands_messages_to_the_router(
    client: FakeTelegramClient,
) -> None:
    received: list[IncomingMessage] = []

    async def on_message(message: IncomingMessage) -> None:
        received.append(message)

    commands = [("search", "Search the web"), ("/note", "Save a note")]
    runner = TelegramRunner(client, Secret(TOKEN), on_message, commands=commands)

    me = await runner.start()
    await client.deliver(new_message_event(chat_id=USER, sender_id=USER, text="hi"))

    assert me == BOT
    assert client.login_token == TOKEN
    assert client.commands == [
        types.BotCommand("search", "Search the web"),
        types.BotCommand("note", "Save a note"),
    ]
    assert [m.text for m in received] == ["hi"]


async def test_outgoing_messages_and_media_do_not_reach_the_router(client: FakeTelegramClient) -> None:
    received: list[IncomingMessage] = []

    async def on_message(message: IncomingMessage) -> None:
        received.append(message)

    await TelegramRunner(client, Secret(TOKEN), on_message).start()
    await client.deliver(new_message_event(chat_id=USER, sender_id=BOT.id, text="my own reply", out=True))
    await client.deliver(new_message_event(chat_id=USER, sender_id=USER, text=""))

    assert received == []


async def test_a_failing_command_menu_is_a_warning_not_a_stop(
    client: FakeTelegramClient, caplog: pytest.LogCaptureFixture
) -> None:
    client.fail_next("commands", errors.BotCommandInvalidError(request=None))
    received: list[IncomingMessage] = []

    async def on_message(message: IncomingMessage) -> None:
        received.append(message)

    runner = TelegramRunner(client, Secret(TOKEN), on_message, commands=[("bad command", "x")])
    with caplog.at_level(logging.WARNING, logger="bot.telegram.transport"):
        await runner.start()
    await client.deliver(new_message_event(chat_id=USER, sender_id=USER, text="still there?"))

    assert any("command menu" in record.getMessage() for record in caplog.records)
    assert [m.text for m in received] == ["still there?"]


async def test_a_handler_that_raises_is_logged_and_the_next_message_is_still_handled(
    client: FakeTelegramClient, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def on_message(message: IncomingMessage) -> None:
        seen.append(message.text)
        if message.text == "boom":
            raise RuntimeError("handler bug")

    await TelegramRunner(client, Secret(TOKEN), on_message).start()
    with caplog.at_level(logging.ERROR, logger="bot.telegram.transport"):
        await client.deliver(new_message_event(chat_id=USER, sender_id=USER, text="boom"))
        await client.deliver(new_message_event(chat_id=USER, sender_id=USER, text="next", message_id=2))

    assert seen == ["boom", "next"]
    assert any(record.exc_info for record in caplog.records)


async def test_a_bad_token_is_an_auth_failure_that_does_not_show_the_token(
    client: FakeTelegramClient, caplog: pytest.LogCaptureFixture
) -> None:
    client.fail_next("start", errors.AccessTokenInvalidError(request=None))

    async def on_message(message: IncomingMessage) -> None: ...

    with caplog.at_level(logging.DEBUG), pytest.raises(AuthFailed) as raised:
        await TelegramRunner(client, Secret(TOKEN), on_message).start()

    assert TOKEN not in str(raised.value) and TOKEN not in repr(raised.value)
    assert TOKEN not in caplog.text


async def test_stop_disconnects_and_ends_the_run(client: FakeTelegramClient) -> None:
    async def on_message(message: IncomingMessage) -> None: ...

    runner = TelegramRunner(client, Secret(TOKEN), on_message)
    await runner.start()
    running = asyncio.ensure_future(runner.run_until_disconnected())
    await asyncio.sleep(0)

    await runner.stop()
    await asyncio.wait_for(running, 1)

    assert not client.is_connected()
    assert client.handlers == []


# --- the real Telethon client -------------------------------------------------------------------


def settings_for(session_path: Path, dc: DcOverride | None = None) -> TelegramSettings:
    return TelegramSettings(12345, Secret(API_HASH), Secret(TOKEN), session_path, dc)


@pytest.fixture
def real_client(tmp_path: Path):
    client = build_client(settings_for(tmp_path / "state" / "bot"))
    yield client
    client.session.close()


def test_session_file_is_private_to_its_owner(tmp_path: Path) -> None:
    client = build_client(settings_for(tmp_path / "state" / "bot"))
    client.session.close()

    session_file = tmp_path / "state" / "bot.session"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(session_file.parent.stat().st_mode) == 0o700


def test_an_existing_world_readable_session_file_is_tightened(tmp_path: Path) -> None:
    session_file = tmp_path / "bot.session"
    session_file.touch(mode=0o644)
    session_file.chmod(0o644)

    build_client(settings_for(session_file)).session.close()

    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600


def test_configured_data_centre_is_used(tmp_path: Path) -> None:
    client = build_client(settings_for(tmp_path / "bot.session", DcOverride(2, "149.154.167.40", 443)))
    client.session.close()

    session = client.session
    assert (session.dc_id, session.server_address, session.port) == (2, "149.154.167.40", 443)


class ScriptedSender:
    """Stands in for Telethon's MTProto sender: answers each request from a script."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list = []

    def send(self, request, ordered=False):
        self.requests.append(request)
        future = asyncio.get_running_loop().create_future()
        outcome = self.answer(request)
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        return future


async def test_real_client_raises_even_a_zero_second_flood_wait_instead_of_sleeping(real_client) -> None:
    sender = ScriptedSender(lambda request: errors.FloodWaitError(request=request, capture=0))
    real_client._sender = sender

    with pytest.raises(RateLimited) as raised:
        await asyncio.wait_for(TelegramTransport(real_client).typing(-123), 0.5)

    assert raised.value.retry_after == 1.0
    assert len(sender.requests) == 1


async def test_a_flood_wait_in_one_chat_does_not_make_telethon_refuse_other_chats(real_client) -> None:
    def answer(request):
        if request.peer == types.InputPeerChat(111):
            return errors.FloodWaitError(request=request, capture=30)
        return True

    sender = ScriptedSender(answer)
    real_client._sender = sender
    transport = TelegramTransport(real_client)

    with pytest.raises(RateLimited):
        await transport.typing(-111)
    await transport.typing(-222)

    peers = [request.peer for request in sender.requests]
    assert peers == [types.InputPeerChat(111), types.InputPeerChat(222)]
    assert all(isinstance(r, functions.messages.SetTypingRequest) for r in sender.requests)


# --- keyed sends (Telegram's random_id) -----------------------------------------------------------


async def test_a_keyed_send_repeated_shows_one_message_and_returns_its_id(client, transport) -> None:
    for chat_id in (USER, GROUP):
        first = await transport.send(chat_id, RichText.plain("The answer."), key=77)
        again = await transport.send(chat_id, RichText.plain("The answer, regenerated."), key=77)

        assert again == first
        assert [message.text for message in client.messages(chat_id)] == ["The answer."]


async def test_a_keyed_send_carries_the_key_and_reads_the_id_from_a_short_or_a_full_answer(real_client) -> None:
    def answer(request):
        if isinstance(request.peer, types.InputPeerChat):
            message = types.Message(id=41, peer_id=types.PeerChat(111), date=None, message=request.message, out=True)
            return types.Updates(
                updates=[types.UpdateMessageID(41, request.random_id), types.UpdateNewMessage(message, 1, 1)],
                users=[], chats=[], date=None, seq=0,
            )
        return types.UpdateShortSentMessage(out=True, id=9, pts=1, pts_count=1, date=None)

    sender = ScriptedSender(answer)
    real_client._sender = sender
    real_client.session.process_entities(types.contacts.ResolvedPeer(
        peer=types.PeerUser(USER), chats=[], users=[types.User(id=USER, access_hash=5, first_name="Ada")]
    ))
    transport = TelegramTransport(real_client)

    in_group = await transport.send(-111, RichText.plain("hi all"), reply_to=3, key=-1234)
    in_private = await transport.send(USER, RichText.plain("hi"), key=5678)

    assert (in_group, in_private) == (41, 9)
    group_request, private_request = sender.requests
    assert isinstance(group_request, functions.messages.SendMessageRequest)
    assert (group_request.random_id, group_request.reply_to.reply_to_msg_id) == (-1234, 3)
    assert (private_request.random_id, private_request.peer) == (5678, types.InputPeerUser(USER, 5))
    assert group_request.no_webpage and private_request.no_webpage


async def test_telegram_still_processing_a_repeated_key_is_a_retryable_failure(real_client) -> None:
    real_client._sender = ScriptedSender(
        lambda request: errors.RandomIdDuplicateError(request=request)
        if hasattr(errors, "RandomIdDuplicateError")
        else errors.ServerError(request, "RANDOM_ID_DUPLICATE", 500)
    )
    real_client._request_retries = 1

    with pytest.raises(Unavailable) as raised:
        await TelegramTransport(real_client).send(-111, RichText.plain("hi"), key=1)

    assert raised.value.retryable
