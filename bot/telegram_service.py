"""Running the bot on Telegram: log in, answer what was left unanswered, serve until stopped."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack

from bot.app import build_app
from bot.config import Settings
from bot.telegram import TelegramRunner, TelegramTransport, build_client
from integrations.errors import AuthFailed
from integrations.resilience.clock import SystemClock
from integrations.resilience.governor import FloodGovernor, GovernedTransport

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 20.0


async def run_telegram(settings: Settings) -> int:
    assert settings.telegram is not None
    clock = SystemClock()
    client = build_client(settings.telegram)
    governor = FloodGovernor(clock)
    transport = GovernedTransport(TelegramTransport(client), governor)
    async with AsyncExitStack() as stack:
        app = await build_app(settings, clock, transport, stack)
        menu = [(c.name, c.description) for c in app.router.commands if not c.admin_only]
        runner = TelegramRunner(client, settings.telegram.bot_token, app.router.handle, commands=menu)
        try:
            me = await runner.start()
        except AuthFailed as error:
            print(f"Telegram refused to log in: {error}. Check TELEGRAM_BOT_TOKEN, TELEGRAM_API_ID and TELEGRAM_API_HASH.", file=sys.stderr)
            return 1
        resumed = await app.router.resume_pending()
        if resumed:
            log.info("answering %d message(s) left unanswered by the last run", resumed)
        models = ", ".join(str(ref) for ref in app.services.chain.refs) or "none"
        log.info("serving as @%s with models: %s", me.username, models)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        serving = asyncio.ensure_future(runner.run_until_disconnected())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping: no new messages; letting replies in flight finish")
        app.router.stop_accepting()
        try:
            await asyncio.wait_for(app.services.lanes.wait_all_idle(), SHUTDOWN_GRACE_SECONDS)
        except asyncio.TimeoutError:
            log.warning("replies still running after %.0f s; their messages are answered after restart", SHUTDOWN_GRACE_SECONDS)
        await runner.stop()
        serving.cancel()
        stopping.cancel()
    return 0
