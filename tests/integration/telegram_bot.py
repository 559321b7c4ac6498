"""A whole bot, built by the real composition root, on a fake Telegram and fake LLM servers."""
from __future__ import annotations

import asyncio
import itertools
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from bot.app import App, build_app
from bot.config import Secret, Settings
from bot.telegram.flood_governor import FloodGovernor, GovernedTransport
from bot.telegram.transport import TelegramChatAdmins, TelegramMedia, TelegramRunner, TelegramTransport
from integrations.clock import ManualClock
from integrations.llm import ModelRef
from tests.fakes.telegram import FakeTelegramClient, new_message_event

USER = 4242
# The chats each state directory's Telegram session knows (Telethon keeps them in the session file,
# so a restarted bot can still answer a chat it heard from before).
SESSIONS: dict[Path, set[int]] = {}
# Telegram message ids only grow, also across restarts of the bot.
MESSAGE_IDS = itertools.count(1000)
ANTHROPIC_KEY = "sk-ant-sentinel-anthropic-key-000000000000"
OPENAI_KEY = "sk-sentinel-openai-key-0000000000000000"


def settings_for(state_dir: Path, *, anthropic=None, openai=None, models=(), **overrides) -> Settings:
    base = Settings(
        anthropic_api_key=Secret(ANTHROPIC_KEY) if anthropic else None,
        anthropic_base_url=anthropic.base_url if anthropic else None,
        openai_api_key=Secret(OPENAI_KEY) if openai else None,
        openai_base_url=openai.base_url if openai else None,
        llm_models=tuple(ModelRef.parse(m) for m in models),
        allowed_user_ids=frozenset({USER}),
        state_dir=state_dir,
        system_prompt="Be brief.",
        llm_local="off",
        # Time jumps while the fakes answer over real sockets; timeouts are only tight where a
        # test is about them, so a slow machine never sees a spurious timeout.
        llm_first_token_timeout=10_000.0,
        llm_idle_timeout=10_000.0,
        llm_total_timeout=100_000.0,
    )
    return replace(base, **overrides)


@dataclass
class TelegramBot:
    clock: ManualClock
    client: FakeTelegramClient
    app: App
    runner: TelegramRunner
    governor: FloodGovernor

    async def user_says(self, text: str, *, chat_id: int = USER, user_id: int = USER, mentioned: bool = False, message_id: int | None = None) -> None:
        """Deliver a message as Telegram would and let the bot finish everything it starts."""
        event = new_message_event(
            chat_id=chat_id, sender_id=user_id, text=text, message_id=message_id or next(MESSAGE_IDS), mentioned=mentioned
        )
        await self.clock.run_until_complete(self._deliver_and_wait(event))

    async def settle(self) -> None:
        await self.clock.run_until_complete(self._settled())

    async def _settled(self) -> None:
        await self.client.settle_dispatch()
        await self.app.services.lanes.wait_all_idle()

    def paused(self, chat_id: int) -> bool:
        """Whether the flood governor is holding this chat's calls back."""
        pace = self.governor.snapshot().chats.get(chat_id)
        return pace is not None and pace.paused_for > 0

    async def statuses(self, chat_id: int = USER) -> list[str]:
        """The lifecycle state of each message the chat sent, oldest first."""
        rows = await self.app.database.fetchall(
            "SELECT status FROM messages WHERE chat_id = ? AND role = 'user' ORDER BY id", (chat_id,)
        )
        return [row["status"] for row in rows]

    async def _deliver_and_wait(self, event) -> None:
        await self.client.deliver(event)
        await self.app.services.lanes.wait_all_idle()

    def texts(self, chat_id: int = USER) -> list[str]:
        return [m.text for m in self.client.messages(chat_id)]


async def start_telegram_bot(
    stack: AsyncExitStack,
    settings: Settings,
    clock: ManualClock | None = None,
    *,
    client: FakeTelegramClient | None = None,
    offline_updates: Sequence[Any] = (),
) -> TelegramBot:
    """The bot as `run_telegram` builds it, on a fake Telegram. `offline_updates` arrived while it
    was stopped: Telegram hands them out as soon as it connects. A `client` from an earlier run is
    the same Telegram (its chats and messages) seen by the restarted bot."""
    clock = clock or ManualClock()
    if client is None:
        client = FakeTelegramClient(clock)
        client.known_chats = SESSIONS.setdefault(settings.state_dir, set())
    for update in offline_updates:
        client.arrive_while_offline(update)
    governor = FloodGovernor(clock)
    transport = GovernedTransport(TelegramTransport(client), governor)
    # Start-up may wait on the clock (a rate limiter before the Notion schema lookup).
    app = await clock.run_until_complete(
        build_app(settings, clock, transport, stack, media=TelegramMedia(client), chat_admins=TelegramChatAdmins(client))
    )
    runner = TelegramRunner(client, Secret("123456:" + "A" * 35), app.router.handle)
    await runner.start(before_messages=app.router.resume_pending)
    stack.push_async_callback(runner.stop)
    return TelegramBot(clock, client, app, runner, governor)




class Killed(BaseException):
    """Raised into whatever a killed bot's leftover code still tries to do (it is not an Exception,
    so no handler of ours catches it)."""


class _DeadConnection:
    """The database connection of a killed process: every statement meets `Killed`."""

    def _dead(self, *_args: Any, **_kwargs: Any) -> Any:
        raise Killed()

    def is_closed(self) -> bool:
        return False  # as asyncpg's (a bot on PostgreSQL): statements reach it instead of connecting again

    fetch = fetchrow = fetchval = transaction = _dead

    execute = executescript = executemany = commit = rollback = close = _execute = _dead

    @property
    def _conn(self) -> "_DeadConnection":
        # state/db.py reaches through aiosqlite to its sqlite3 connection (one trip a statement).
        return self


async def kill(bot: TelegramBot, run: AsyncExitStack) -> None:
    """SIGKILL, as near as one process can play it: the database takes nothing more (what was not
    committed is rolled back), and only then is the rest of `run` closed.

    Closing `run` alone would let a reply in progress meet its closing HTTP client first and answer
    with an error note, stored and shown, which a killed process never does."""
    database = bot.app.database
    connection, database._conn = database._conn, _DeadConnection()
    await connection.close()
    for lane in list(bot.app.services.lanes._lanes.values()):
        for task in (lane.worker, lane.running):
            if task is not None:
                # Its end (Killed, most likely) is looked at whenever it comes, so asyncio does not
                # report it from a garbage collection in the middle of something else.
                task.add_done_callback(_look_at_the_end)
    try:
        await run.aclose()
    except Killed:
        pass  # a task of the killed bot met the dead database while its run was closed


def _look_at_the_end(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
