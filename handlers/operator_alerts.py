"""Telling the operator about a fault only they can fix: a refused key, named by its setting.

Told of every failed model call (`observe`), it picks out the account faults (a credential the
provider refused, an account out of credit), logs each at ERROR naming the setting to fix (so it
shows in the log and in /status's recent errors), and messages the admins about each setting at
most once per `interval`, since the same fault repeats with every message until it is fixed. The
messages are sent in the background: the user's reply never waits for them.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Collection, Mapping

from handlers.richtext import RichText
from integrations.clock import Clock
from integrations.errors import AuthFailed, QuotaExhausted, UpstreamError

log = logging.getLogger(__name__)

Send = Callable[[int, RichText], Awaitable[object]]

ALERT_INTERVAL = 3600.0


class OperatorAlerts:
    def __init__(
        self,
        clock: Clock,
        send: Send,
        admins: Collection[int],
        credential_settings: Mapping[str, str],
        *,
        interval: float = ALERT_INTERVAL,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        """`credential_settings` maps an upstream to the setting holding its key (anthropic ->
        ANTHROPIC_API_KEY); `send` delivers a message to one admin's chat."""
        self._clock = clock
        self._redact = redact
        self._send = send
        self._admins = tuple(sorted(admins))
        self._settings = dict(credential_settings)
        self._interval = interval
        self._last_sent: dict[tuple[str, str], float] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def observe(self, error: UpstreamError) -> None:
        alert = self.describe(error)
        if alert is None:
            return
        alert = self._redact(alert)
        log.error("%s", alert)
        key = (error.upstream, type(error).__name__)
        now = self._clock.monotonic()
        last = self._last_sent.get(key)
        if not self._admins or (last is not None and now - last < self._interval):
            return
        self._last_sent[key] = now
        task = asyncio.ensure_future(self._tell_admins(alert))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def describe(self, error: UpstreamError) -> str | None:
        """What the operator must do about `error`, or None when it is not theirs to fix."""
        setting = self._settings.get(error.upstream)
        if setting is None:
            return None
        said = error.message + (f", HTTP {error.status}" if error.status else "")
        if isinstance(error, AuthFailed):
            return (
                f"{error.upstream} refused {setting} ({said}), so none of its models can answer. Fix "
                f"{setting} where the bot reads it (the env file, the environment or the credentials "
                "directory); a key changed in the env file is used without a restart."
            )
        if isinstance(error, QuotaExhausted):
            return (
                f"{error.upstream} says the account of {setting} is out of credit ({said}), so none of "
                "its models can answer. Add credit with the provider, or use another key."
            )
        return None

    async def settle(self) -> None:
        """Wait until the messages under way are sent (or given up)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await self.settle()

    async def _tell_admins(self, alert: str) -> None:
        text = RichText.plain(f"⚠️ Needs the operator: {alert}\n\n(Sent at most once an hour while it lasts.)")
        for admin in self._admins:
            try:
                await self._send(admin, text)
            except Exception as error:  # the log has the alert; a failed message must not go unnoticed
                why = str(error) if isinstance(error, UpstreamError) else type(error).__name__
                # Telegram lets a bot write only to users who started a chat with it.
                log.warning("could not tell admin %s: %s (has the admin started a chat with the bot?)", admin, why)
