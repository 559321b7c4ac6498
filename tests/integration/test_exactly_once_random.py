"""Exactly once, over whole random histories: messages, redeliveries, catch-up bursts, graceful
restarts, abrupt stops, storage faults, model faults and /cancel, interleaved by a seeded random
generator (a failing seed replays exactly; the operation log is printed).

The bot is the real one, built by the composition root, on the fake Telegram (Telethon-like:
each handler its own task, missed updates handed out on connect, ids unique per chat for good)
and a real SQLite state directory, with the models replaced in-process so that thousands of
steps run in seconds on the manual clock. An abrupt stop is a SIGKILL seen from outside: from
that instant the old process makes no call and writes nothing more (its Telegram connection and
database raise `Killed`, its lock is dropped), and Telegram hands out again every update whose
handler had not finished, as catch-up after a restart does.

For every message a user sent, in the end, the chat shows exactly one reply to it that is final
(the whole answer, a stopped answer, or one clear error) and no stale partial reply to it. In
private chats, where replies quote nothing, no answer shows twice and the number of final
replies matches the messages sent.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import sqlite3
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

import integrations.openai
from bot.app import App, build_app
from bot.config import Secret
from bot.shutdown import drain
from bot.telegram.flood_governor import FloodGovernor, GovernedTransport
from bot.telegram.transport import TelegramRunner, TelegramTransport
from handlers.chat import SOMETHING_WENT_WRONG
from handlers.router import ALREADY_FINISHING, NOT_ACCEPTED, QUEUED_NOTICE
from integrations.clock import ManualClock
from integrations.errors import Unavailable
from integrations.llm import ChatRequest, StreamResult, Usage
from state.lock import StateLock
from tests.fakes.telegram import FakeTelegramClient, new_message_event
from tests.integration.telegram_bot import settings_for

GROUPS = (-1001000000001, -1001000000002, -1001000000003)
USERS = (501, 502, 503, 504)
# Private chats (the chat id is the user's): previews are drafts, the answer is sent at the end.
PRIVATE_CHATS = (501, 502)
CHATS = GROUPS + PRIVATE_CHATS
MODELS = ("openai:m1", "openai:m2")
# More seeds for a longer hunt: EXACTLY_ONCE_SEEDS=500 make test
SEEDS = range(int(os.environ.get("EXACTLY_ONCE_SEEDS", "40")))
STEPS = 45

FINAL_ENDINGS = ("done.", "(stopped)")
# Ends an answer from a model that stood in for the first one.
FALLBACK_FOOTER = re.compile(r"\n\n— answered by \S+ \(\S+ was unavailable\)$")
FINAL_OPENINGS = (
    NOT_ACCEPTED,
    SOMETHING_WENT_WRONG,
    "Sorry, I could not get an answer",
    "I was offline when you sent this",
    "Sorry, I tried to answer this",
    "Nothing to stop",
    ALREADY_FINISHING,
)


class Killed(BaseException):
    """Raised into whatever the killed process still tries to do (it is not an Exception, so no
    handler of ours catches it)."""


# --- the models --------------------------------------------------------------------------------


@dataclass
class ModelWorld:
    """Decides, per question, how the models behave: each question carries its token (q17)."""

    clock: ManualClock
    rng: random.Random
    behaviours: dict[str, str] = field(default_factory=dict)

    def behaviour(self, token: str) -> str:
        if token not in self.behaviours:
            self.behaviours[token] = self.rng.choices(["ok", "stall", "fail", "cut"], weights=[60, 10, 15, 15])[0]
        return self.behaviours[token]


def answer_words(token: str) -> list[str]:
    return [f"answer {token}", " w1", " w2", " w3", " done."]


class FakeModels:
    """In-process stand-in for the OpenAI adapter: streams on the manual clock, fails as told."""

    def __init__(self, world: ModelWorld, **_: Any) -> None:
        self.name = "openai"
        self._world = world

    def set_api_key(self, api_key: str) -> None: ...

    async def list_models(self) -> list[str]:
        return [ref.split(":", 1)[1] for ref in MODELS]

    async def aclose(self) -> None: ...

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        token = _token_of(request)
        behaviour = self._world.behaviour(token)
        first_model = request.model == "m1"
        if behaviour == "fail":
            await self._world.clock.sleep(0.5)
            raise Unavailable(f"model down for {token}", upstream="openai", status=503)
        if behaviour == "stall" and first_model:
            await self._world.clock.sleep(10**6)
        for index, word in enumerate(answer_words(token)):
            await self._world.clock.sleep(1.0)
            if behaviour == "cut" and first_model and index == 2:
                raise Unavailable(f"stream cut for {token}", upstream="openai", status=503)
            yield word
        result.usage = Usage(10, 5)


def _token_of(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        found = re.search(r"\bq\d+\b", message.content) if message.role == "user" else None
        if found:
            return found.group(0)
    raise AssertionError(f"no question token in {request.messages!r}")


# --- one run of the bot process ----------------------------------------------------------------


class KillableClient:
    """The old process's view of Telegram: after `kill`, every call it makes raises `Killed`."""

    def __init__(self, inner: FakeTelegramClient) -> None:
        self._inner = inner
        self._dead = False
        self._handlers: list[tuple[Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._check()
            result = await attribute(*args, **kwargs)
            self._check()
            return result

        return call

    async def __call__(self, request: Any, ordered: bool = False) -> Any:
        self._check()
        result = await self._inner(request)
        self._check()
        return result

    def add_event_handler(self, callback: Any, event: Any = None) -> None:
        self._handlers.append((callback, event))
        self._inner.add_event_handler(callback, event)

    def remove_event_handler(self, callback: Any, event: Any = None) -> int:
        return self._inner.remove_event_handler(callback, event)

    async def disconnect(self) -> None:
        """Like Telethon, nothing more goes out once disconnected (stray tasks get errors)."""
        self._check()
        self.kill()

    def kill(self) -> None:
        self._dead = True
        for callback, event in self._handlers:
            self._inner.remove_event_handler(callback, event)

    def _check(self) -> None:
        if self._dead:
            raise Killed()


class DeadConnection:
    def __getattr__(self, name: str) -> Any:
        raise Killed()


@dataclass
class Incarnation:
    stack: AsyncExitStack
    app: App
    client: KillableClient
    lock: StateLock
    dispatched: list[tuple[Any, list[asyncio.Task[Any]]]] = field(default_factory=list)
    storage_faults: int = 0


@dataclass
class Sent:
    chat_id: int
    message_id: int
    text: str


class World:
    def __init__(self, seed: int, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rng = random.Random(seed)
        self.clock = ManualClock()
        self.telegram = FakeTelegramClient(self.clock)
        # Calls take time, so a kill can land between Telegram taking a send and the bot hearing of it.
        self.telegram.add_latency(0.02, 0.4, seed=seed)
        self.models = ModelWorld(self.clock, random.Random(seed * 7919 + 1))
        self.settings = settings_for(
            state_dir,
            openai=None,
            models=MODELS,
            allowed_user_ids=frozenset(USERS),
            llm_first_token_timeout=20.0,
            llm_idle_timeout=30.0,
            llm_total_timeout=300.0,
        )
        self.settings = _with_fast_limits(self.settings)
        # The composition root imports the adapter when it builds it, so this is the one it finds.
        monkeypatch.setattr(integrations.openai, "OpenAIChat", lambda **kwargs: FakeModels(self.models, **kwargs))
        self.bot: Incarnation | None = None
        self.sent: list[Sent] = []
        self.accepted_ids: set[tuple[int, int]] = set()
        self.log: list[str] = []
        self._ids = {chat_id: 1 for chat_id in CHATS}
        self._tokens = 0

    # --- the bot process ---

    async def start(self) -> None:
        stack = AsyncExitStack()
        lock = StateLock(self.settings.state_dir)
        lock.acquire()
        client = KillableClient(self.telegram)
        transport = GovernedTransport(TelegramTransport(client), FloodGovernor(self.clock))
        app = await self._until_done(build_app(self.settings, self.clock, transport, stack, state_lock=lock))
        incarnation = Incarnation(stack, app, client, lock)
        self._inject_storage_faults(incarnation)
        runner = TelegramRunner(client, Secret("123456:" + "A" * 35), app.router.handle)
        self.bot = incarnation
        self._watch_dispatch(incarnation)
        await self._until_done(runner.start(before_messages=app.router.resume_pending))
        stack.push_async_callback(runner.stop)

    async def stop_gracefully(self) -> None:
        bot = self._running()
        await self._until_done(drain(bot.app, self.clock, grace=20.0))
        self._redeliver_unfinished(bot)
        await self._until_done(bot.stack.aclose())
        bot.lock.release()
        bot.client.kill()  # what is left of this process (stray tasks) reaches Telegram no more
        self.bot = None

    async def kill(self) -> None:
        """SIGKILL: nothing of the old process runs any further."""
        bot = self._running()
        bot.client.kill()
        database = bot.app.database
        connection, database._conn = database._conn, DeadConnection()
        await connection.close()  # what was not committed is rolled back, as after a crash
        bot.lock.release()
        self._redeliver_unfinished(bot)
        self.bot = None

    # --- what users do ---

    def user_sends(self, chat_id: int, text: str | None = None) -> None:
        if text is None:
            self._tokens += 1
            text = f"q{self._tokens} please"
        message_id = self._ids[chat_id]
        self._ids[chat_id] += 1
        self.sent.append(Sent(chat_id, message_id, text))
        update = new_message_event(
            chat_id=chat_id, sender_id=_sender(chat_id, self.rng), text=text, message_id=message_id, mentioned=True
        )
        if self.bot is None:
            self.telegram.arrive_while_offline(update)
        else:
            self._dispatch(self.bot, update)

    def redeliver_some_message(self) -> None:
        """Telegram hands out an update again (a retried getDifference after a reconnect)."""
        if not self.sent:
            return
        sent = self.rng.choice(self.sent)
        update = new_message_event(
            chat_id=sent.chat_id, sender_id=_sender(sent.chat_id, self.rng), text=sent.text,
            message_id=sent.message_id, mentioned=True,
        )
        if self.bot is None:
            self.telegram.arrive_while_offline(update)
        else:
            self._dispatch(self.bot, update)

    def break_storage(self, calls: int) -> None:
        """The next `calls` tries to store a message fail (a locked or full database)."""
        if self.bot is not None:
            self.bot.storage_faults += calls

    # --- time ---

    async def run_for(self, seconds: float) -> None:
        """Let `seconds` pass on the clock, letting every task and database write finish at each
        deadline, as the real process would."""
        target = self.clock.monotonic() + seconds
        while True:
            await self._quiet()
            deadline = self.clock.next_deadline()
            if deadline is None or deadline > target:
                break
            await self.clock.advance(max(0.0, deadline - self.clock.monotonic()))
        await self.clock.advance(max(0.0, target - self.clock.monotonic()))
        await self._quiet()

    async def settle_everything(self) -> None:
        """Start the bot if it is down and let it finish all work (up to two hours of clock)."""
        if self.bot is None:
            await self.start()
        for _ in range(7200):
            await self.run_for(1.0)
            if not await self._busy():
                return
        raise AssertionError("the bot never finished its work")

    async def dump(self) -> None:
        """What the database and the chats hold, for a failing seed."""
        for chat_id in CHATS:
            for message in self.telegram.messages(chat_id):
                print(f"chat {chat_id} bot message {message.id} -> {message.reply_to}: {message.text!r}")
                for edit in message.edits:
                    print(f"    edited at {edit.at:.1f}: {edit.text!r}")
        if self.bot is not None:
            rows = await self.bot.app.database.fetchall(
                "SELECT chat_id, telegram_message_id, kind, status, attempts, shown_ids, outcome, content"
                " FROM messages WHERE role = 'user' ORDER BY id"
            )
            for row in rows:
                print("stored", dict(row))
            lanes = self.bot.app.services.lanes
            print("lanes in flight", lanes.in_flight(), "queued", lanes.queued(),
                  "claimed", sorted(self.bot.app.router._claimed), "dispatching", len(self.telegram.dispatching))
            for task in self.telegram.dispatching:
                task.print_stack(limit=30)
            for chat_id, lane in lanes._lanes.items():
                if lane.running is not None:
                    print("lane", chat_id)
                    lane.running.print_stack(limit=30)

    # --- inside ---

    def _running(self) -> Incarnation:
        assert self.bot is not None
        return self.bot

    def _dispatch(self, bot: Incarnation, update: Any) -> None:
        bot.dispatched.append((update, self.telegram.dispatch(update)))

    def _watch_dispatch(self, bot: Incarnation) -> None:
        """Catch-up updates handed out on connect are dispatched by the fake itself: track them too."""
        original = self.telegram.dispatch

        def tracking(update: Any) -> list[asyncio.Task[Any]]:
            tasks = original(update)
            bot.dispatched.append((update, tasks))
            return tasks

        self.telegram.dispatch = tracking  # type: ignore[method-assign]
        bot.stack.callback(setattr, self.telegram, "dispatch", original)
        self._dispatch = lambda bot, update: tracking(update) and None  # type: ignore[method-assign]

    def _redeliver_unfinished(self, bot: Incarnation) -> None:
        """Updates whose handler had not finished were not acknowledged: Telegram sends them again."""
        for update, tasks in bot.dispatched:
            if any(_unfinished(task) for task in tasks) or self.rng.random() < 0.05:
                self.telegram.arrive_while_offline(update)
        bot.dispatched.clear()

    def _inject_storage_faults(self, bot: Incarnation) -> None:
        history = bot.app.services.history
        record = history.record_incoming

        async def maybe_failing(*args: Any, **kwargs: Any) -> Any:
            if bot.storage_faults:
                bot.storage_faults -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return await record(*args, **kwargs)

        history.record_incoming = maybe_failing  # type: ignore[method-assign]

    async def _quiet(self) -> None:
        """Every task that can run without time passing has run, and the database is idle."""
        for _ in range(3):
            await self.clock.settle()
            if self.bot is not None:
                await asyncio.wait({asyncio.ensure_future(_database_idle(self.bot.app))}, timeout=5)
        await self.clock.settle()

    async def _busy(self) -> bool:
        bot = self._running()
        lanes = bot.app.services.lanes
        if lanes.in_flight() or lanes.queued() or self.telegram.dispatching:
            return True
        return bool(await bot.app.services.history.pending())

    async def _until_done(self, awaitable: Any) -> Any:
        task = asyncio.ensure_future(awaitable)
        while not task.done():
            await self.run_for(0.5)
        return task.result()


async def _database_idle(app: App) -> None:
    """Returns once the statements queued before it ran (or the database is closed)."""
    try:
        await app.database.fetchone("SELECT 1")
    except (ValueError, sqlite3.Error, Killed):
        pass


def _unfinished(task: asyncio.Task[Any]) -> bool:
    """Still running, or cut off by the process dying under it."""
    return not task.done() or (not task.cancelled() and isinstance(task.exception(), Killed))


def _sender(chat_id: int, rng: random.Random) -> int:
    return chat_id if chat_id > 0 else rng.choice(USERS)


def _with_fast_limits(settings: Any) -> Any:
    from dataclasses import replace

    return replace(settings, limits=replace(settings.limits, user_messages_per_minute=10_000))


# --- the invariant -----------------------------------------------------------------------------


def replies_by_message(world: World) -> dict[tuple[int, int], list[str]]:
    """Every message of the bot now in the groups, by the user message it replies to."""
    replies: dict[tuple[int, int], list[str]] = {}
    for chat_id in GROUPS:
        for message in world.telegram.messages(chat_id):
            assert message.reply_to is not None, f"a bot message replies to nothing: {message.text!r}"
            replies.setdefault((chat_id, message.reply_to), []).append(message.text)
    return replies


def is_final(text: str) -> bool:
    text = FALLBACK_FOOTER.sub("", text)
    return text.endswith(FINAL_ENDINGS) or text.startswith(FINAL_OPENINGS) or "The answer was cut off" in text


def check_exactly_once(world: World) -> None:
    replies = replies_by_message(world)
    for chat_id in PRIVATE_CHATS:
        check_private_chat(world, chat_id)
    for sent in world.sent:
        if sent.chat_id not in GROUPS:
            continue
        shown = [text for text in replies.get((sent.chat_id, sent.message_id), []) if text != QUEUED_NOTICE]
        refused = NOT_ACCEPTED in shown
        if refused:
            # Told at once that it could not be stored; Telegram may still hand it out again after
            # a restart (the update was never acknowledged), and then it is answered once.
            shown.remove(NOT_ACCEPTED)
        if sent.text == "/cancel" or refused:
            assert len(shown) <= 1, f"message {sent} answered {len(shown)} times (refused first: {refused}): {shown!r}"
            if sent.text == "/cancel" or not shown:
                continue
        assert len(shown) == 1, f"message {sent} has {len(shown)} replies: {shown!r}"
        [text] = shown
        assert is_final(text), f"message {sent} was left with a partial reply: {text!r}"
        token = sent.text.split()[0]
        if text.startswith("answer") or text.endswith("done."):
            assert f"answer {token}" in text, f"message {sent} got another message's answer: {text!r}"


def check_private_chat(world: World, chat_id: int) -> None:
    """Replies in a private chat quote nothing, so they are counted: every one is final, no
    question is answered twice, and there are as many as the messages that want one."""
    texts = [message.text for message in world.telegram.messages(chat_id) if message.text != QUEUED_NOTICE]
    refused = texts.count(NOT_ACCEPTED)
    finals = [text for text in texts if text != NOT_ACCEPTED]
    for text in finals:
        assert is_final(text), f"private chat {chat_id} was left with a partial reply: {text!r}"
    answered = [found for text in finals for found in re.findall(r"\banswer (q\d+)\b", text)]
    twice = sorted({token for token in answered if answered.count(token) > 1})
    assert not twice, f"private chat {chat_id} shows the answers to {twice} more than once: {finals!r}"
    sent = [message for message in world.sent if message.chat_id == chat_id]
    cancels = sum(message.text == "/cancel" for message in sent)
    wanting = len(sent) - cancels
    assert wanting - refused <= len(finals) <= wanting + cancels, (
        f"private chat {chat_id}: {len(sent)} messages ({cancels} /cancel, {refused} refused) "
        f"but {len(finals)} final replies: {finals!r}"
    )


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_message_gets_exactly_one_final_reply_whatever_happens(seed, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.CRITICAL)
    with dead_processes_stay_quiet():
        await _run_history(seed, tmp_path, monkeypatch)


async def _run_history(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(seed, tmp_path / "state", monkeypatch)
    await world.start()
    rng = world.rng
    try:
        for _ in range(STEPS):
            action = rng.choices(
                ["send", "burst", "redeliver", "cancel", "wait", "restart", "kill", "storage", "down-send"],
                weights=[30, 6, 6, 5, 25, 5, 8, 4, 4],
            )[0]
            world.log.append(f"{world.clock.monotonic():.1f}: {action}")
            if action == "send":
                world.user_sends(rng.choice(CHATS))
            elif action == "burst":
                for _ in range(rng.randint(2, 5)):
                    world.user_sends(rng.choice(CHATS))
            elif action == "redeliver":
                world.redeliver_some_message()
            elif action == "cancel":
                world.user_sends(rng.choice(CHATS), "/cancel")
            elif action == "wait":
                await world.run_for(rng.choice([0.5, 1.0, 2.5, 7.0, 30.0]))
            elif action == "storage":
                world.break_storage(rng.choice([1, 2, 3, 6]))
            elif action in ("restart", "kill", "down-send"):
                if world.bot is not None:
                    await (world.stop_gracefully() if action == "restart" else world.kill())
                if action == "down-send":
                    world.user_sends(rng.choice(CHATS))
                await world.run_for(rng.choice([0.0, 5.0, 120.0]))
                await world.start()
        await world.settle_everything()
        check_exactly_once(world)
    except BaseException:
        print("\n".join(world.log))
        await world.dump()
        raise
    finally:
        if world.bot is not None:
            await world.bot.stack.aclose()
        await _end_stray_tasks()


async def _end_stray_tasks() -> None:
    """What killed processes left behind ends here, not later in the garbage collector."""
    stray = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in stray:
        task.cancel()
    if stray:
        await asyncio.wait(stray, timeout=10)


@contextmanager
def dead_processes_stay_quiet() -> Iterator[None]:
    """A task of a killed process ends with `Killed`, which nobody awaits. Left to the garbage
    collector, asyncio would log "exception never retrieved" with a traceback whenever it gets to
    it (on CPython 3.11 that can be in the middle of compiling another module, which then fails
    with "AST constructor recursion depth mismatch"): take note of it as the task ends instead.
    Other exceptions are left to asyncio's usual report."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def note_killed(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and isinstance(task._exception, Killed):  # type: ignore[attr-defined]
            task.exception()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        task = previous(loop, coro, **kwargs) if previous else asyncio.Task(coro, loop=loop, **kwargs)
        task.add_done_callback(note_killed)
        return task

    loop.set_task_factory(factory)
    try:
        yield
    finally:
        loop.set_task_factory(previous)
