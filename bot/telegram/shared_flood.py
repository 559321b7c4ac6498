"""Telegram flood pauses shared by every instance: a chat paused by one is paused for all, and so
is the whole bot.

Telegram counts flood limits per bot account, not per session: every instance sending as the bot
spends the same allowance. A flood wait pauses its chat here as in `FloodGovernor`, and is also
written to Redis as one key per chat holding the moment the pause ends, expiring then; a bot-wide
one (`bot_pause`: flood waits in several chats at once, or on a call tied to no chat) is one key
for the bot. Before each call an instance reads its chat's key and the bot's (one round trip) and
takes on what is left of a pause another instance was given. A pause taken while Redis was
unreachable is written once it answers again, with the time still left. The pacing itself (a call
a second per chat, twenty a minute per group, thirty a second overall) stays per instance. Without
Redis the governor works alone.
"""
from __future__ import annotations

import logging
from typing import Any

from bot.telegram.flood_governor import FloodGovernor, _ChatScope
from integrations.clock import Clock
from integrations.errors import RateLimited
from integrations.resilience.redis_link import RedisLink, SharedUnavailable
from integrations.resilience.shared_ratelimit import PAUSE

log = logging.getLogger(__name__)


class SharedFloodGovernor(FloodGovernor):
    def __init__(self, clock: Clock, link: RedisLink, **pacing: Any) -> None:
        super().__init__(clock, **pacing)
        self._link = link
        self._pause_script = link.script(PAUSE)
        self._bot_key = link.key("flood", "bot")
        link.when_back(self._publish_pending)

    async def _follow_pause(self, chat_id: int, scope: _ChatScope) -> None:
        """Take on a pause another instance was given in this chat, or for the whole bot."""
        if not self._link.usable:
            return
        try:
            chat_ends, bot_ends = await self._link.run(lambda client: client.mget([self._key(chat_id), self._bot_key]))
        except SharedUnavailable:
            return
        now, monotonic = self._link.now(), self._clock.monotonic()
        if chat_ends is not None and (left := float(chat_ends) - now) > 0:
            scope.paused_until = max(scope.paused_until, monotonic + left)
        if bot_ends is not None and (left := float(bot_ends) - now) > 0 and self._bot.hold(monotonic + left):
            log.warning("Telegram: the whole bot paused for %.1f s more, every chat waits (another instance's flood wait)", left)

    def _pause(self, chat_id: int, scope: _ChatScope, error: RateLimited, kind: str) -> None:
        super()._pause(chat_id, scope, error, kind)
        self._publish(self._key(chat_id), scope.paused_until)

    def _bot_paused_by_us(self, seconds: float) -> None:
        self._publish(self._bot_key, self._bot.until)

    def _publish(self, key: str, until: float) -> None:
        """Tell every instance this pause (what is left of it), unless Redis is unreachable: then
        `_publish_pending` tells them once it is back."""
        left = until - self._clock.monotonic()
        if left > 0 and self._link.usable:
            now = self._link.now()
            self._link.spawn(self._link.run(lambda client: self._pause_script(keys=[key], args=[now, now + left])))

    def _publish_pending(self) -> int:
        """Redis is back: write the pauses still running here (taken while it was away, or followed:
        writing those again changes nothing). How many."""
        now = self._clock.monotonic()
        pending = [(self._key(chat_id), scope.paused_until) for chat_id, scope in self._chats.items() if scope.paused_until > now]
        if self._bot.until > now:
            pending.append((self._bot_key, self._bot.until))
        for key, until in pending:
            self._publish(key, until)
        return len(pending)

    def _key(self, chat_id: int) -> str:
        return self._link.key("flood", chat_id)
