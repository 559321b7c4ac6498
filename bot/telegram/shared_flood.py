"""Telegram flood pauses shared by every instance: a chat paused by one is paused for all, and so
is the whole bot.

Telegram counts flood limits per bot account, not per session: every instance sending as the bot
spends the same allowance. A flood wait pauses its chat here as in `FloodGovernor`, and is also
written to Redis as one key per chat holding the moment the pause ends, expiring then; a bot-wide
one (`bot_pause`: flood waits in several chats at once, or on a call tied to no chat) is one key
for the bot. A call the governor lets go reserves the bot's next overall slot (`shared_pace`: thirty
a second for all instances together) in the same round trip that reads its chat's key and the
bot's, and takes on what is left of a pause another instance was given; typing reads the two keys
alone, reserving nothing. A pause taken while Redis was unreachable is written once it answers
again, with the time still left. While Redis is unreachable each instance keeps 1/INSTANCES of the
overall pace on its own. A chat's pace (a call a second, twenty a minute in a group) stays with the
instance answering it: a chat is answered by one instance at a time. Without Redis the governor
works alone.
"""
from __future__ import annotations

import logging
from typing import Any

from bot.telegram.flood_governor import CallKind, FloodGovernor, _ChatScope
from bot.telegram.shared_pace import SharedBotPace
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
        self._full_pace = self._global.limit
        self._pace = SharedBotPace(clock, link, self._full_pace)
        link.when_back(self._publish_pending)

    def _choose_pace(self) -> None:
        self._fit_pace()

    def _fit_pace(self) -> bool:
        """This instance's window: the whole pace while Redis keeps the bot's (each call then also
        takes a shared slot), 1/INSTANCES of it while Redis is unreachable. True if it changed."""
        limit = self._full_pace if self._link.usable else max(1, self._full_pace // self._link.instances)
        changed = limit != self._global.limit
        self._global.resize(limit)
        return changed

    async def _bot_slot(self, chat_id: int, scope: _ChatScope, preview: bool) -> bool:
        """Reserve the bot's next overall slot and wait for it, unless a pause holds the chat or the
        bot (taken on here). False to start over: after a pause, or with the local share once Redis
        stops answering."""
        if not self._link.usable:
            return not self._fit_pace()
        try:
            slot = await self._pace.reserve([self._key(chat_id), self._bot_key], preview=preview)
        except SharedUnavailable:
            self._fit_pace()
            return False
        if slot.verdict == "paused":
            until = self._clock.monotonic() + slot.wait
            if slot.held_by == 0:
                scope.paused_until = max(scope.paused_until, until)
            else:
                self._follow_bot_pause(slot.wait)
            return False
        if slot.verdict == "busy":
            self._defer_preview(scope)
        await self._pace.wait(slot)
        return True

    def _bot_has_room(self) -> bool:
        return not self._link.usable or self._pace.has_room()

    def _typing_went_out(self) -> None:
        self._pace.spend_one()

    async def _follow_pause(self, chat_id: int, scope: _ChatScope, kind: CallKind) -> None:
        """Before typing, take on a pause another instance was given in this chat or for the whole
        bot (other calls learn them when they reserve their slot)."""
        if kind != "typing" or not self._link.usable:
            return
        try:
            chat_ends, bot_ends = await self._link.run(lambda client: client.mget([self._key(chat_id), self._bot_key]))
        except SharedUnavailable:
            return
        now, monotonic = self._link.now(), self._clock.monotonic()
        if chat_ends is not None and (left := float(chat_ends) - now) > 0:
            scope.paused_until = max(scope.paused_until, monotonic + left)
        if bot_ends is not None and (left := float(bot_ends) - now) > 0:
            self._follow_bot_pause(left)

    def _follow_bot_pause(self, left: float) -> None:
        if self._bot.hold(self._clock.monotonic() + left):
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
