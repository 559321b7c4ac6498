"""Running the bot on Telegram as a service: log in, tell systemd, serve, stop gracefully.

`run_telegram` builds the real pieces and turns SIGTERM/SIGINT into a graceful stop (a second
signal cuts the grace short). `TelegramService` is the lifecycle itself, testable on a fake
Telegram client and a manual clock:

    connecting -> READY=1 (logged in, unanswered messages resumed) -> serving
    -> STOPPING=1 -> drain (bot/shutdown.py) -> disconnect; the caller's exit stack closes the rest

While Telegram cannot be reached, the login is tried again with jittered exponential waits on the
injected clock, each failure one log line and a STATUS= line, for up to `LOGIN_PATIENCE`; then the
service exits 1 and systemd starts it again. All along, a heartbeat task pings systemd's watchdog
and keeps STATUS= current.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
from contextlib import AsyncExitStack
from typing import Any, Mapping

from bot.app import App, build_app, open_shared_limits
from bot.chat_sharing import ChatSharing, open_chat_sharing
from bot.config import Settings
from bot.shutdown import drain
from bot.systemd import Notifier, heartbeat
from bot.telegram.catch_up import SharedCatchUp
from bot.telegram.flood_governor import GovernedTransport, flood_governor_for
from bot.telegram.leadership import Leadership, open_leadership
from bot.telegram.receiving import receive_from_now
from bot.telegram.transport import BotIdentity, TelegramChatAdmins, TelegramMedia, TelegramRunner, TelegramTransport, build_client
from integrations.clock import Clock, SystemClock, first_of, wait_for
from integrations.errors import AuthFailed, Unavailable, UpstreamError
from integrations.resilience.retry import RetryPolicy, retry_call
from state.db import storage_faults
from state.lock import StateLock

log = logging.getLogger(__name__)

# Exit codes: systemd restarts on 1 (something broke) but not on 2 (RestartPreventExitStatus=2:
# the settings or credentials need a person, and restarting every few seconds will not help).
EXIT_OK, EXIT_FAILED, EXIT_NEEDS_OPERATOR = 0, 1, 2

# How long the login is tried before giving up and letting systemd start the bot again (5 s later;
# fewer than StartLimitBurst=5 such starts fit in StartLimitIntervalSec=5min). systemd's start
# timeout is extended to match, so it never kills a start in the middle of an attempt.
LOGIN_PATIENCE = 90.0
# What the extension adds beyond the patience: time to give up cleanly.
LOGIN_MARGIN = 15.0
# Waits of up to 1, 2, 4, ... 30 s (full jitter); a flood wait from Telegram is waited as asked.
LOGIN_RETRY = RetryPolicy(
    max_attempts=1_000, max_total=LOGIN_PATIENCE, base=1.0, cap=30.0, retry_after_cap=LOGIN_PATIENCE
)


class TelegramService:
    def __init__(
        self,
        app: App,
        runner: TelegramRunner,
        notifier: Notifier,
        clock: Clock,
        *,
        grace: float,
        login_retry: RetryPolicy = LOGIN_RETRY,
        rng: random.Random | None = None,
        leadership: Leadership | None = None,
        sharing: ChatSharing | None = None,
    ) -> None:
        self.app = app
        self.runner = runner
        self.notifier = notifier
        self.clock = clock
        self.grace = grace
        self.login_retry = login_retry
        self._rng = rng
        # With DATABASE_URL: the lease this instance leads by; losing it ends the service at once.
        self.leadership = leadership
        # With DATABASE_URL: the chats this instance answers, looked for once it is logged in.
        self.sharing = sharing
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        # Set once logged in: a worker takes the lease only then (it receives on the client it logged in).
        self.serving = asyncio.Event()
        self._phase = "connecting to Telegram"
        self._me: BotIdentity | None = None
        self._login_deadline = 0.0

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
        notes = self.app.services.features.notes
        if notes is not None:
            parts.append(f"outbox {await notes.outbox.depth()}")
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
            me = await first_of(self._log_in(), self.stop.wait(), *self._lease_lost())
        except AuthFailed as error:
            message = (
                f"Telegram refused to log in: {error}. "
                "Check TELEGRAM_BOT_TOKEN, TELEGRAM_API_ID and TELEGRAM_API_HASH."
            )
            print(message, file=sys.stderr)
            self.notifier.stopping(message)
            return EXIT_NEEDS_OPERATOR
        except (UpstreamError, TimeoutError) as error:
            message = f"could not log in to Telegram ({error}); exiting so that systemd starts the bot again"
            log.error("%s", message)
            self.notifier.stopping(message)
            await self.runner.stop()
            return EXIT_FAILED
        if not isinstance(me, BotIdentity):
            await self.runner.stop()
            if self._deposed():
                return EXIT_FAILED
            log.info("stopped while connecting to Telegram")
            return EXIT_OK
        self._me = me
        self.serving.set()
        models = ", ".join(str(ref) for ref in self.app.services.chain.refs) or "none"
        log.info("serving as @%s with models: %s", self._me.username, models)
        self._phase = f"serving as @{self._me.username}"
        self.notifier.ready(await self.summary())

        serving = asyncio.ensure_future(self.runner.run_until_disconnected())
        stopping = asyncio.ensure_future(self.stop.wait())
        safety_net = asyncio.ensure_future(self.app.router.keep_resuming())
        deposing = self._lease_lost()
        try:
            await asyncio.wait({serving, stopping, *deposing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, safety_net, *deposing):
                task.cancel()
        if self._deposed():
            # Another instance may be receiving already: not one more update here, not one more
            # send; what was in flight stays pending for the new leader (as after a crash).
            await self.runner.stop()
            self.hurry.set()
        requested = self.stop.is_set() and not self._deposed()
        if not requested and not self._deposed():
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

    async def _log_in(self) -> BotIdentity:
        """Log in, trying again while Telegram is unreachable, for `login_retry.max_total` at most
        (an attempt that hangs counts too); raises the last error, or TimeoutError."""
        self._login_deadline = self.clock.monotonic() + self.login_retry.max_total
        return await wait_for(
            self.clock,
            retry_call(self._log_in_once, self.login_retry, self.clock, rng=self._rng, on_attempt=self._login_failed),
            self.login_retry.max_total,
        )

    async def _log_in_once(self) -> BotIdentity:
        try:
            return await self.runner.start(before_messages=self._resume)
        except (UpstreamError, EOFError) as error:
            await self.runner.stop()  # the next attempt starts from a clean connection
            if isinstance(error, EOFError):
                # Telethon lets asyncio.IncompleteReadError out when Telegram drops the connection
                # during the handshake: as good as a refused connection.
                raise Unavailable(f"login failed: {type(error).__name__}: {error}", upstream="telegram") from error
            raise

    def _login_failed(self, attempt: int, error: UpstreamError, wait: float) -> None:
        log.warning("Telegram unreachable at start, attempt %d (%s); trying again in %.0f s", attempt, error, wait)
        self._phase = f"connecting to Telegram: attempt {attempt} failed ({error.message}); next in {wait:.0f} s"
        self.notifier.extend_timeout(self._login_deadline - self.clock.monotonic() + LOGIN_MARGIN, self._phase)

    def _lease_lost(self) -> list[asyncio.Task[bool]]:
        """Waits for the lease to be lost (none without a lease)."""
        if self.leadership is None:
            return []
        return [asyncio.ensure_future(self.leadership.lost.wait())]

    def _deposed(self) -> bool:
        return self.leadership is not None and self.leadership.lost.is_set()

    async def _resume(self) -> None:
        resumed = await self.app.router.resume_pending()
        if resumed:
            log.info("finishing %d message(s) left unfinished by the last run", resumed)
        if self.sharing is not None:
            await self.sharing.start()


def share_work(
    settings: Settings, clock: Clock, stack: AsyncExitStack, service: TelegramService, client: Any, *, leading: bool
) -> None:
    """With DATABASE_URL: the service answers the chats it holds (bot/chat_sharing.py); the leader
    keeps its lease, and a worker (logged in with receive_updates=`leading`, False) tries the lease
    every second and, once it holds it, receives on `client` from then on. Nothing with SQLite."""
    service.sharing = open_chat_sharing(settings, clock, service.app, stack)
    leadership = service.leadership
    if leadership is None:
        return
    if leading:
        leadership.keep()
        return
    log.info("instance %s: answering as a worker; the leader receives", leadership.name)
    catch_up = leadership.catch_up

    async def become() -> None:
        await receive_from_now(client, catch_up)
        if catch_up is not None:  # where the next leader's catch-up starts, kept as the first leader keeps it
            keeping = asyncio.ensure_future(catch_up.keep(client))
            stack.callback(keeping.cancel)

    async def promote_when_free() -> None:
        await service.serving.wait()  # a client that is not logged in cannot start receiving
        await leadership.lead_when_free(service.stop, become)

    promotion = asyncio.ensure_future(promote_when_free())
    stack.callback(promotion.cancel)


async def run_telegram(settings: Settings, *, environ: Mapping[str, str] | None = None) -> int:
    assert settings.telegram is not None
    clock = SystemClock()
    notifier = Notifier.from_environment(os.environ if environ is None else environ)
    async with AsyncExitStack() as stack:
        stack.callback(notifier.close)
        # Before the session file is opened: another bot may be using it.
        with storage_faults(settings.state_dir):
            state_lock = stack.enter_context(StateLock(settings.state_dir))
        # With PostgreSQL, instances share the state: the lease holder receives, every instance answers.
        leadership = await open_leadership(settings, clock, stack)
        leading = leadership is None or await leadership.try_lead()
        with storage_faults(settings.telegram.session_path):
            client = build_client(settings.telegram, receive_updates=leading)
        if leading and leadership is not None and leadership.catch_up is not None:
            # Catch up from where the last leader was, not from this session's own (older) state.
            await leadership.catch_up.lead(client, stack)
        # Shared through Redis when REDIS_URL is set: flood pauses too, so the governor comes from them.
        limits = await open_shared_limits(settings, clock, stack)
        governor = flood_governor_for(limits, clock)
        transport = GovernedTransport(TelegramTransport(client), governor)
        app = await build_app(
            settings,
            clock,
            transport,
            stack,
            governor=governor,
            telegram_connected=client.is_connected,
            state_lock=state_lock,
            # The offline model starts while the bot logs in: READY=1 does not wait for it.
            local_model_in_background=True,
            media=TelegramMedia(client),
            limits=limits,
            chat_admins=TelegramChatAdmins(client),
        )
        if leadership is None:
            # On its own: a restart after a SIGKILL catches up from where this run's updates stopped.
            await SharedCatchUp.of_one_instance(app.database, clock, settings.instance.name).lead(client, stack)
        menu = [(c.name, c.description) for c in app.router.commands if not c.admin_only]
        runner = TelegramRunner(client, settings.telegram.bot_token, app.router.handle, commands=menu)
        service = TelegramService(
            app, runner, notifier, clock, grace=settings.limits.shutdown_grace, leadership=leadership
        )
        share_work(settings, clock, stack, service, client, leading=leading)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, service.request_stop)
        try:
            return await service.run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
