"""Telegram flood pauses shared by every instance: a chat paused by one is paused for all.

A flood wait pauses its chat here as in `FloodGovernor`, and is also written to Redis as one key
per chat holding the moment the pause ends, expiring then. Before each call an instance reads its
chat's key and takes on what is left of a pause another instance was given. The pacing itself (a
call a second per chat, twenty a minute per group, thirty a second overall) stays per instance: it
is the sending session's, and each instance sends through its own. Without Redis the governor
works alone.
"""
from __future__ import annotations

from typing import Any

from bot.telegram.flood_governor import FloodGovernor, _ChatScope
from integrations.clock import Clock
from integrations.errors import RateLimited
from integrations.resilience.redis_link import RedisLink, SharedUnavailable
from integrations.resilience.shared_ratelimit import PAUSE


class SharedFloodGovernor(FloodGovernor):
    def __init__(self, clock: Clock, link: RedisLink, **pacing: Any) -> None:
        super().__init__(clock, **pacing)
        self._link = link
        self._pause_script = link.script(PAUSE)

    async def _follow_pause(self, chat_id: int, scope: _ChatScope) -> None:
        """Take on a pause another instance was given in this chat."""
        if not self._link.usable:
            return
        try:
            ends = await self._link.run(lambda client: client.get(self._key(chat_id)))
        except SharedUnavailable:
            return
        if ends is None:
            return
        left = float(ends) - self._link.now()
        if left > 0:
            scope.paused_until = max(scope.paused_until, self._clock.monotonic() + left)

    def _pause(self, chat_id: int, scope: _ChatScope, error: RateLimited, kind: str) -> None:
        super()._pause(chat_id, scope, error, kind)
        left = scope.paused_until - self._clock.monotonic()
        if left > 0 and self._link.usable:
            now = self._link.now()
            key = self._key(chat_id)
            self._link.spawn(self._link.run(lambda client: self._pause_script(keys=[key], args=[now, now + left])))

    def _key(self, chat_id: int) -> str:
        return self._link.key("flood", chat_id)
