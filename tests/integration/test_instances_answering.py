"""Several instances answering at once: a leader that receives and a worker logged in to the same
bot without updates, both built as `run_telegram` builds them, on one real PostgreSQL, a fake
Telegram (two sessions of one account) and a fake Anthropic, on one manual clock."""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass

from bot.app import App, build_app
from bot.chat_sharing import ChatSharing
from bot.config import DocumentSettings, InstanceSettings, Secret
from bot.status import status_from_database
from bot.systemd import Notifier
from bot.telegram.flood_governor import FloodGovernor, GovernedTransport
from bot.telegram.leadership import Leadership
from bot.telegram.service import TelegramService, share_work
from bot.telegram.transport import TelegramMedia, TelegramRunner, TelegramTransport
from integrations.clock import ManualClock
from state.instances import InstanceRegistry
from state.lease import LeaderLease
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.telegram import FakeTelegramClient, document_file, new_message_event
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, TelegramBot, kill, settings_for
from tests.unit.test_lease import end_session

CLAUDE = "anthropic:claude-test"
POLL = 0.05
BOT_TOKEN = Secret("123456:" + "A" * 35)
LEASE = 10.0
CHATS = tuple(range(5001, 5009))
ANSWER = "one two three four five six"


@dataclass
class Instance:
    name: str
    client: FakeTelegramClient
    app: App
    sharing: ChatSharing
    leadership: Leadership
    service: TelegramService
    running: asyncio.Task[int]
    run: AsyncExitStack
    bot: TelegramBot  # the same app and client, as the restart and kill helpers take them

    def answered(self) -> set[int]:
        """The chats this instance sent or edited a message in."""
        return {c.chat_id for c in self.client.calls if c.kind in ("send", "edit") and c.outcome == "ok" and c.chat_id}


async def start_instance(
    stack: AsyncExitStack, tmp_path, postgres_backend, clock: ManualClock, claude, name: str, client: FakeTelegramClient,
    **overrides,
) -> Instance:
    """One instance as run_telegram wires it: the lease tried once (a worker tries it every second
    after), the app, the chats it answers, the service logged in."""
    run = AsyncExitStack()
    stack.push_async_callback(run.aclose)
    settings = settings_for(
        tmp_path / name, anthropic=claude, models=[CLAUDE], database_url=Secret(postgres_backend.url),
        allowed_user_ids=frozenset(CHATS), instance=InstanceSettings(name=name, lease_seconds=LEASE), **overrides,
    )  # fmt: skip
    database = await postgres_backend.open(clock)
    run.push_async_callback(database.close)
    leadership = Leadership(LeaderLease(postgres_backend.url, clock, lease_seconds=LEASE), InstanceRegistry(database, clock), clock, name=name)
    run.push_async_callback(leadership.close)
    leading = await leadership.try_lead()
    client.receiving = leading  # as run_telegram builds it: a worker's session gets no updates
    governor = FloodGovernor(clock)
    transport = GovernedTransport(TelegramTransport(client), governor)
    app = await clock.run_until_complete(build_app(settings, clock, transport, run, media=TelegramMedia(client)))
    runner = TelegramRunner(client, BOT_TOKEN, app.router.handle)
    service = TelegramService(app, runner, Notifier.from_environment({}), clock, grace=20, leadership=leadership)
    share_work(settings, clock, run, service, client, leading=leading)
    sharing = service.sharing
    assert sharing is not None
    running = asyncio.ensure_future(service.run())
    await clock.run_until(lambda: client.connected, poll=POLL)
    return Instance(name, client, app, sharing, leadership, service, running, run, TelegramBot(clock, client, app, runner, governor))


async def two_instances(stack, tmp_path, postgres_backend, clock, claude, **overrides) -> tuple[Instance, Instance]:
    leader_client = FakeTelegramClient(clock)
    worker_client = FakeTelegramClient(clock, same_account_as=leader_client)
    a = await start_instance(stack, tmp_path, postgres_backend, clock, claude, "bot-a", leader_client, **overrides)
    b = await start_instance(stack, tmp_path, postgres_backend, clock, claude, "bot-b", worker_client, **overrides)
    assert a.leadership.role == "leader" and b.leadership.role == "standby"
    assert b.client.receiving is False
    return a, b


def says(client: FakeTelegramClient, chat_id: int, text: str) -> None:
    """A user writes in their private chat; Telegram hands it to the receiving session."""
    client.dispatch(new_message_event(chat_id=chat_id, sender_id=chat_id, text=text, message_id=next(MESSAGE_IDS)))


async def statuses(app: App) -> dict[int, list[str]]:
    rows = await app.database.fetchall("SELECT chat_id, status FROM messages WHERE role = 'user' ORDER BY id")
    by_chat: dict[int, list[str]] = {}
    for row in rows:
        by_chat.setdefault(int(row["chat_id"]), []).append(row["status"])
    return by_chat


async def all_answered(clock: ManualClock, app: App) -> None:
    """Let time run until every user message stored so far is answered."""

    async def watch() -> None:
        while not all(status == "answered" for chat in (await statuses(app)).values() for status in chat):
            await clock.sleep(0.5)

    await clock.run_until_complete(watch(), poll=POLL)


async def test_messages_from_many_chats_are_answered_once_each_by_both_instances_in_order(tmp_path, postgres_backend):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(2, ANSWER)))
        a, b = await two_instances(stack, tmp_path, postgres_backend, clock, claude)

        for chat_id in CHATS:
            says(a.client, chat_id, f"first question from {chat_id}")
            await clock.run_until(lambda: a.client.dispatching == set(), poll=POLL)
        await clock.run_until(lambda: len(claude.message_requests) >= len(CHATS), poll=POLL)
        for chat_id in CHATS:  # while its first answer streams: queued behind it, on the same instance
            says(a.client, chat_id, f"second question from {chat_id}")
        await clock.run_until(lambda: all(_queued_notices(a.client, chat_id) == 1 for chat_id in CHATS), poll=POLL)
        claude.server.release_stalls()
        await all_answered(clock, a.app)

        assert a.answered() and b.answered(), "both instances answered some chats"
        assert a.answered().isdisjoint(b.answered()), "each chat on one instance"
        assert a.answered() | b.answered() == set(CHATS)
        for chat_id in CHATS:
            texts = [m.text for m in a.client.messages(chat_id)]
            assert texts.count(ANSWER) == 2, (chat_id, texts)
            assert _queued_notices(a.client, chat_id) == 1, "the second question was queued behind the first"
        assert all(s == ["answered", "answered"] for s in (await statuses(a.app)).values())
        assert len(claude.message_requests) == 2 * len(CHATS), "each question asked once"
        # Each chat's second question went to the model after its first (asked in order).
        asked = [_last_question(r.json) for r in claude.message_requests]
        for chat_id in CHATS:
            mine = [q for q in asked if q.endswith(f"from {chat_id}")]
            assert mine == [f"first question from {chat_id}", f"second question from {chat_id}"]


def _queued_notices(client: FakeTelegramClient, chat_id: int) -> int:
    return sum(1 for m in client.messages(chat_id) if m.text.startswith("⏳ Got it"))


def _last_question(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else content[-1]["text"]


GROUP = -100500  # a group: a reply in progress shows there as a message that is edited
MEMBER = CHATS[0]


def asks_in_group(client: FakeTelegramClient, text: str) -> None:
    client.dispatch(new_message_event(chat_id=GROUP, sender_id=MEMBER, text=text, message_id=next(MESSAGE_IDS), mentioned=True))


async def the_leader_made_busier(clock: ManualClock, a: Instance, b: Instance) -> None:
    """Chats are taken by whichever instance gets there first among the least busy: questions whose
    answers stall, until the leader holds more chats than the worker (the next chat is the worker's)."""
    for chat_id in CHATS[:-1]:
        if len(a.sharing.chats()) > len(b.sharing.chats()):
            return
        says(a.client, chat_id, "keep the leader busy")
        await clock.run_until(lambda chat_id=chat_id: a.sharing.holds(chat_id) or b.sharing.holds(chat_id), poll=POLL)


async def the_worker_answers_the_group(stack, tmp_path, postgres_backend) -> tuple[ManualClock, FakeAnthropic, Instance, Instance]:
    """Two instances, the leader busier, so the group's question goes to the worker, whose reply
    stalls after its first words (shown in the group)."""
    clock = ManualClock()
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(2, ANSWER)))
    a, b = await two_instances(stack, tmp_path, postgres_backend, clock, claude)
    await the_leader_made_busier(clock, a, b)
    asks_in_group(a.client, "tell me a story")
    await clock.run_until(lambda: any(c.chat_id == GROUP and c.kind == "send" for c in b.client.calls), poll=POLL)
    assert b.sharing.holds(GROUP) and not a.sharing.holds(GROUP)
    return clock, claude, a, b


async def test_cancel_sent_to_the_leader_stops_the_reply_running_on_the_worker(tmp_path, postgres_backend):
    async with AsyncExitStack() as stack:
        clock, claude, a, b = await the_worker_answers_the_group(stack, tmp_path, postgres_backend)

        status = await status_from_database(tmp_path / "none.db", clock, database_url=postgres_backend.url)
        lines = {line.split(":")[0]: line for line in status.splitlines() if line.startswith("• bot-")}
        a_held, b_held = len(a.sharing.chats()), len(b.sharing.chats())
        assert f", answering {a_held} chat{'s' if a_held > 1 else ''}, last seen" in lines["• bot-a"]
        assert lines["• bot-b"].startswith(f"• bot-b: worker, answering {b_held} chat{'s' if b_held > 1 else ''}, last seen")

        asks_in_group(a.client, "/cancel")
        await clock.run_until(lambda: any(m.text.endswith("(stopped)") for m in a.client.messages(GROUP)), poll=POLL)
        claude.server.release_stalls()
        await all_answered(clock, a.app)
        texts = [m.text for m in a.client.messages(GROUP)]
        assert len(texts) == 1 and texts[0].endswith("(stopped)") and ANSWER not in texts[0], texts
        assert GROUP not in a.answered(), "the leader sent nothing to the group: the worker stopped its own reply"
        assert (await statuses(a.app))[GROUP] == ["answered", "answered"]


async def test_a_worker_killed_mid_reply_has_its_chat_finished_by_the_other_once_the_partial_reply_replaced(tmp_path, postgres_backend, caplog):
    async with AsyncExitStack() as stack:
        clock, claude, a, b = await the_worker_answers_the_group(stack, tmp_path, postgres_backend)
        partial = [m.text for m in a.client.messages(GROUP)]
        assert partial and ANSWER not in partial[0]

        claude.default = anth.Reply(ANSWER, chunks=3)
        claude.server.release_stalls()  # the leader's own chat goes on
        b.client.connected = False
        await kill(b.bot, b.run)  # SIGKILL: its claims stay until they expire
        killed_at = clock.monotonic()

        await all_answered(clock, a.app)
        took_over = min(c.at for c in a.client.calls if c.chat_id == GROUP)
        assert took_over - killed_at >= LEASE - LEASE / 5, "taken over once the worker's claim expired, not before"
        texts = [m.text for m in a.client.messages(GROUP)]
        assert texts == [ANSWER], "the partial reply replaced by the whole answer, once"
        assert a.sharing.holds(GROUP) or GROUP in a.answered()
        assert len([r for r in claude.message_requests if "tell me a story" in str(r.json)]) == 2, "cut once, asked again once"


async def test_a_worker_whose_database_drops_gives_its_chats_up_and_the_other_answers_them(tmp_path, postgres_backend, caplog):
    async with AsyncExitStack() as stack:
        clock, claude, a, b = await the_worker_answers_the_group(stack, tmp_path, postgres_backend)

        # Its database unreachable: the connection ends and no new one can be made.
        database = b.app.database
        database._url = "postgresql://switchboard@127.0.0.1:1/nowhere"
        database._conn.terminate()
        try:
            await clock.run_until(lambda: "instance bot-b: giving up its 1 chat(s)" in caplog.text, poll=POLL)
            assert not b.sharing.holds(GROUP)
            sent_by_b = len(b.client.calls)
            claude.default = anth.Reply(ANSWER, chunks=3)
            claude.server.release_stalls()

            await all_answered(clock, a.app)
            texts = [m.text for m in a.client.messages(GROUP)]
            assert texts == [ANSWER], "the other instance answered, replacing the partial reply"
            assert GROUP in a.answered()
            assert [c for c in b.client.calls[sent_by_b:] if c.chat_id == GROUP] == [], "nothing more from the one that gave up"
        finally:
            database._url = postgres_backend.url  # back again, for the instance's own closing


async def test_when_the_leader_dies_the_worker_receives_on_its_own_session_and_answers_what_came_meanwhile(tmp_path, postgres_backend, caplog):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(ANSWER, chunks=3)))
        a, b = await two_instances(stack, tmp_path, postgres_backend, clock, claude)
        says(a.client, CHATS[0], "before")
        await all_answered(clock, a.app)
        logins = b.client.login_token

        a.client.connected = False
        await end_session(postgres_backend.url, a.leadership.lease.session)  # SIGKILL: the lock is free at once
        await kill(a.bot, a.run)
        assert "instance bot-b: took the leader lease" not in caplog.text
        says(b.client, CHATS[1], "while nobody received")  # Telegram keeps it for the next receiver
        await clock.run_until(lambda: b.leadership.role == "leader" and b.client.receiving, poll=POLL)
        await clock.run_until(lambda: bool(b.client.messages(CHATS[1])), poll=POLL)
        says(b.client, CHATS[2], "after")
        await clock.run_until(lambda: bool(b.client.messages(CHATS[2])), poll=POLL)
        await all_answered(clock, b.app)

        assert b.client.login_token == logins, "the same session, not a new login"
        for chat_id in CHATS[:3]:
            assert [m.text for m in b.client.messages(chat_id)] == [ANSWER]
        assert {CHATS[1], CHATS[2]} <= b.answered()


async def test_a_document_sent_to_the_leader_is_fetched_by_id_and_read_by_the_worker_answering_its_chat(tmp_path, postgres_backend):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(2, ANSWER)))
        a, b = await two_instances(stack, tmp_path, postgres_backend, clock, claude, documents=DocumentSettings())
        await the_leader_made_busier(clock, a, b)
        chat_id = CHATS[-1]
        notes = "# Trip\nWe land in Paris on Monday.\n"
        a.client.dispatch(new_message_event(
            chat_id=chat_id, sender_id=chat_id, text="Where do we land?", message_id=next(MESSAGE_IDS),
            media=document_file("trip.md", notes.encode(), mime_type="text/markdown"),
        ))  # fmt: skip
        await clock.run_until(lambda: b.sharing.holds(chat_id) and b.client.downloads(chat_id) == 1, poll=POLL)
        claude.default = anth.Reply(ANSWER, chunks=3)
        claude.server.release_stalls()
        await all_answered(clock, a.app)

        assert a.client.downloads(chat_id) == 0, "the worker fetched it by its id through its own session"
        assert [m.text for m in a.client.messages(chat_id)] == [ANSWER]
        assert any('[Document "trip.md"]' in str(r.json) and "Where do we land?" in str(r.json) for r in claude.message_requests)
