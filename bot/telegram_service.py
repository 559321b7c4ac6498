"""Running the bot on Telegram as a service: log in, tell systemd, serve, stop gracefully.

`run_telegram` builds the real pieces and turns SIGTERM/SIGINT into a graceful stop (a second
signal cuts the grace short). `TelegramService` is the lifecycle itself, testable on a fake
Telegram client and a manual clock:

    connecting -> READY=1 (logged in, unanswered messages resumed) -> serving
    -> STOPPING=1 -> drain (bot/shutdown.py) -> disconnect; the caller's exit stack closes the rest

All along, a heartbeat task pings systemd's watchdog and keeps STATUS= current.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from contextlib import AsyncExitStack
from typing import Mapping

from bot.app import App, build_app
from bot.config import Settings
from bot.shutdown import drain
from bot.systemd import Notifier, heartbeat
from bot.telegram import BotIdentity, TelegramRunner, TelegramTransport, build_client
from integrations.errors import AuthFailed
from integrations.resilience.clock import Clock, SystemClock
from integrations.resilience.governor import FloodGovernor, GovernedTransport
from state.db import storage_faults
from state.lock import StateLock

log = logging.getLogger(__name__)

# Exit codes: systemd restarts on 1 (something broke) but not on 2 (RestartPreventExitStatus=2:
# the settings or credentials need a person, and restarting every few seconds will not help).
EXIT_OK, EXIT_FAILED, EXIT_NEEDS_OPERATOR = 0, 1, 2


class TelegramService:
    def __init__(
        self,
        app: App,
        runner: TelegramRunner,
        notifier: Notifier,
        clock: Clock,
        *,
        grace: float,
    ) -> None:
        self.app = app
        self.runner = runner
        self.notifier = notifier
        self.clock = clock
        self.grace = grace
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self._phase = "connecting to Telegram"
        self._me: BotIdentity | None = None

    def request_stop(self) -> None:
        """First call: stop gracefully. Second call: stop without waiting out the grace."""
        if self.stop.is_set():
            log.warning("second stop request: not waiting for replies in flight any longer")
            self.hurry.set()
        self.stop.set()

    async def summary(self) -> str:
        """The one line `systemctl status` shows, e.g. "serving as @bot; 2 replies in flight; outbox 0"."""
        lanes = self.app.services.lanes
        parts = [self._phase, f"{lanes.in_flight()} replies in flight"]
        if lanes.queued():
            parts.append(f"{lanes.queued()} queued")
        outbox = self.app.services.extras.get("outbox")  # state.outbox.Outbox, with the notes feature
        if outbox is not None:
            parts.append(f"outbox {await outbox.depth()}")
        return "; ".join(parts)

    async def run(self) -> int:
        beat = asyncio.ensure_future(heartbeat(self.notifier, self.clock, self.summary))
        try:
            return await self._run()
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _run(self) -> int:
        self.notifier.status(self._phase)
        try:
            me = await self._first_of(self.runner.start(before_messages=self._resume), self.stop.wait())
        except AuthFailed as error:
            message = (
                f"Telegram refused to log in: {error}. "
                "Check TELEGRAM_BOT_TOKEN, TELEGRAM_API_ID and TELEGRAM_API_HASH."
            )
            print(message, file=sys.stderr)
            self.notifier.stopping(message)
            return EXIT_NEEDS_OPERATOR
        if not isinstance(me, BotIdentity):
            log.info("stopped while connecting to Telegram")
            await self.runner.stop()
            return EXIT_OK
        self._me = me
        models = ", ".join(str(ref) for ref in self.app.services.chain.refs) or "none"
        log.info("serving as @%s with models: %s", self._me.username, models)
        self._phase = f"serving as @{self._me.username}"
        self.notifier.ready(await self.summary())

        serving = asyncio.ensure_future(self.runner.run_until_disconnected())
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        requested = self.stop.is_set()
        if not requested:
            failure = serving.exception() if serving.done() and not serving.cancelled() else None
            log.error("Telegram disconnected for good; stopping so that systemd restarts the bot", exc_info=failure)
        self._phase = "stopping: letting replies in flight finish"
        self.notifier.stopping(await self.summary())
        report = await drain(self.app, self.clock, self.grace, hurry=self.hurry)
        self._phase = "stopping: " + report.describe()
        self.notifier.status(self._phase)
        await self.runner.stop()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        return EXIT_OK if requested else EXIT_FAILED

    async def _resume(self) -> None:
        resumed = await self.app.router.resume_pending()
        if resumed:
            log.info("finishing %d message(s) left unfinished by the last run", resumed)

    @staticmethod
    async def _first_of(*awaitables):
        """The result of whichever finishes first; the others are cancelled."""
        tasks = [asyncio.ensure_future(a) for a in awaitables]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return next(task for task in tasks if task in done).result()


async def run_telegram(settings: Settings, *, environ: Mapping[str, str] | None = None) -> int:
    assert settings.telegram is not None
    clock = SystemClock()
    notifier = Notifier.from_environment(os.environ if environ is None else environ)
    async with AsyncExitStack() as stack:
        stack.callback(notifier.close)
        # Before the session file is opened: another bot may be using it.
        with storage_faults(settings.state_dir):
            state_lock = stack.enter_context(StateLock(settings.state_dir))
        with storage_faults(settings.telegram.session_path):
            client = build_client(settings.telegram)
        governor = FloodGovernor(clock)
        transport = GovernedTransport(TelegramTransport(client), governor)
        app = await build_app(
            settings, clock, transport, stack, governor=governor, telegram_connected=client.is_connected, state_lock=state_lock
        )
        menu = [(c.name, c.description) for c in app.router.commands if not c.admin_only]
        runner = TelegramRunner(client, settings.telegram.bot_token, app.router.handle, commands=menu)
        service = TelegramService(app, runner, notifier, clock, grace=settings.limits.shutdown_grace)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, service.request_stop)
        try:
            return await service.run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
