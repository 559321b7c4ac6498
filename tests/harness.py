"""Builds the bot's services around fakes for handler-level tests."""
from __future__ import annotations

import itertools
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from handlers.access import AccessPolicy
from handlers.basic import basic_commands
from handlers.lanes import ChatLanes
from handlers.limits import NoLimits
from handlers.router import Router
from handlers.services import ChatSettings, Services
from handlers.transport import IncomingMessage
from integrations.chain import ChainModel, ChainTimeouts, ModelChain
from integrations.clock import ManualClock
from integrations.llm import ChatProvider, ModelRef
from state.chat_prompts import ChatPrompts
from state.database import Database
from state.engines import open_database
from state.history import HistoryStore
from state.preferences import UserPreferences
from tests.fakes.transport import RecordingTransport

USER = 1001
ADMIN = 9
# Telegram message ids are unique per chat for good, also across restarts of the bot.
MESSAGE_IDS = itertools.count(1)


@dataclass
class Bot:
    clock: ManualClock
    transport: RecordingTransport
    services: Services
    router: Router
    database: Database

    async def say(self, text: str, *, chat_id: int = USER, user_id: int = USER, message_id: int | None = None, private: bool = True, addressed: bool = True) -> None:
        message = IncomingMessage(chat_id, user_id, message_id or next(MESSAGE_IDS), text, private, addressed, "user")
        await self.clock.run_until_complete(self._handle_and_wait(message))

    async def _handle_and_wait(self, message: IncomingMessage) -> None:
        await self.router.handle(message)
        await self.services.lanes.wait_all_idle()

    def replies(self, chat_id: int = USER) -> list[str]:
        return self.transport.texts(chat_id)


async def start_bot(
    stack: AsyncExitStack,
    state_dir: Path,
    providers: Sequence[tuple[str, ChatProvider]],
    *,
    clock: ManualClock | None = None,
    transport: RecordingTransport | None = None,
    allowed: frozenset[int] = frozenset({USER}),
    timeouts: ChainTimeouts = ChainTimeouts(first_token=20, idle=30, total=300),
    database_url: str | None = None,
) -> Bot:
    """The bot on SQLite under `state_dir`, or on PostgreSQL at `database_url`."""
    clock = clock or ManualClock()
    transport = transport or RecordingTransport(clock)
    database = await open_database(database_url, state_dir / "bot.sqlite3", clock)
    stack.push_async_callback(database.close)
    chain = ModelChain([ChainModel(ModelRef.parse(ref), p) for ref, p in providers], clock, timeouts)
    services = Services(
        clock=clock,
        transport=transport,
        history=HistoryStore(database, clock),
        preferences=UserPreferences(database),
        chain=chain,
        access=AccessPolicy(admin_ids=frozenset({ADMIN}), allowed_user_ids=allowed),
        limits=NoLimits(),
        lanes=ChatLanes(),
        chat=ChatSettings(system_prompt="be brief"),
        prompts=ChatPrompts(database),
    )
    return Bot(clock, transport, services, Router(services, basic_commands()), database)
