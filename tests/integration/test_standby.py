"""A leader that loses its lease, and the instances as /status and `switchboard status` show them:
the real service and app on a fake Telegram, the lease and the state on a real PostgreSQL."""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from bot.app import build_app
from bot.config import Secret
from bot.status import status_from_database
from bot.systemd import Notifier
from bot.telegram.flood_governor import FloodGovernor, GovernedTransport
from bot.telegram.leadership import Leadership
from bot.telegram.service import EXIT_FAILED, TelegramService
from bot.telegram.transport import TelegramRunner, TelegramTransport
from integrations.clock import ManualClock
from state.instances import InstanceRegistry
from state.lease import LeaderLease
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.telegram import FakeTelegramClient, new_message_event
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, settings_for
from tests.unit.test_lease import end_session

CLAUDE = "anthropic:claude-test"
POLL = 0.2
BOT_TOKEN = Secret("123456:" + "A" * 35)


async def leader(stack: AsyncExitStack, postgres_backend, clock: ManualClock, name: str) -> Leadership:
    database = await postgres_backend.open(clock)
    stack.push_async_callback(database.close)
    lease = LeaderLease(postgres_backend.url, clock, lease_seconds=10.0)
    leadership = Leadership(lease, InstanceRegistry(database, clock), clock, name=name)
    stack.push_async_callback(leadership.close)
    return leadership


async def test_a_leader_that_loses_its_lease_disconnects_at_once_and_leaves_its_reply_to_the_next(tmp_path, postgres_backend, caplog):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        leadership = await leader(stack, postgres_backend, clock, "bot-a")
        assert await leadership.wait_to_lead(asyncio.Event())
        leadership.keep()
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(2, "one two three four")))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], database_url=Secret(postgres_backend.url))
        client = FakeTelegramClient(clock)
        app = await build_app(settings, clock, GovernedTransport(TelegramTransport(client), FloodGovernor(clock)), stack)
        runner = TelegramRunner(client, BOT_TOKEN, app.router.handle)
        service = TelegramService(app, runner, Notifier.from_environment({}), clock, grace=20, leadership=leadership)
        running = asyncio.ensure_future(service.run())
        await clock.run_until(lambda: client.connected, poll=POLL)
        event = new_message_event(chat_id=USER, sender_id=USER, text="tell me a story", message_id=next(MESSAGE_IDS))
        await client.deliver(event)
        await clock.run_until_complete(claude.server.stall_began.wait(), poll=POLL)

        await end_session(postgres_backend.url, leadership.lease.session)  # what a lost database connection does
        assert await clock.run_until_complete(running, poll=POLL, limit=leadership.lease.renew_every + 25) == EXIT_FAILED
        assert not client.connected, "disconnected from Telegram: not one more update received here"
        assert [m.text for m in await app.services.history.pending()] == ["tell me a story"], "left for the new leader"
        assert "instance bot-a: no longer the leader; disconnecting from Telegram now" in caplog.text
        claude.server.release_stalls()


async def test_status_lists_the_instances_who_leads_and_the_queue(tmp_path, postgres_backend):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        a = await leader(stack, postgres_backend, clock, "bot-a")
        b = await leader(stack, postgres_backend, clock, "bot-b")
        stop = asyncio.Event()
        assert await a.wait_to_lead(stop)
        waiting = asyncio.ensure_future(b.wait_to_lead(stop))
        await clock.run_until(lambda: b.tries >= 1 and b.role == "standby", poll=POLL)
        tries = b.tries
        await clock.advance(300)  # a has not reported since it took the lease (it was not kept)
        await clock.run_until(lambda: b.tries > tries + 1, poll=POLL)  # b tries (and reports) every second
        text = await status_from_database(tmp_path / "none.db", clock, database_url=postgres_backend.url)
        stop.set()
        await clock.run_until_complete(waiting, poll=POLL)
    lines = text.splitlines()
    start = lines.index("Instances (the leader receives, every instance answers its chats; one takes over when the leader dies)")
    leader_line, standby_line, queue = lines[start + 1 : start + 4]
    assert leader_line.startswith("• bot-a: leader, lease held 5 min, answering 0 chats, last seen 5 min ago (silent: stopped or cut off?)")
    assert standby_line.startswith("• bot-b: worker, answering 0 chats, last seen ") and "silent" not in standby_line
    assert queue == "Queue: 0 messages waiting for or getting an answer"
