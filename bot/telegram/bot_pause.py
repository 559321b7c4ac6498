"""A flood wait that holds the whole bot, not one chat: when Telegram's overall limit is reached.

Telegram counts its flood limits per bot account (its token), whatever session or host a call
comes from: about thirty messages a second for the whole bot besides one a second per chat. Its
FLOOD_WAIT names only the seconds, never which limit was hit. The governor paces every chat well
under its own limit, so flood waits in several different chats within a moment mean the bot's
overall limit was reached: then every chat waits, here and (with Redis) on every instance.
`FloodGovernor.pause_bot` is the same pause for a caller that knows a wait is the bot's. A flood
wait on a method tied to no chat (the command menu at login) is not one: Telegram limits "the given
method with the given input parameters", so it holds that method, not the bot's sending.
"""
from __future__ import annotations

from collections import deque

# Flood waits in this many different chats within WINDOW seconds are the bot's overall limit.
CHATS = 3
WINDOW = 1.0


class BotPause:
    """Until when the whole bot waits, and whether the flood waits seen so far say it must."""

    def __init__(self, *, chats: int = CHATS, window: float = WINDOW) -> None:
        if chats < 2:
            raise ValueError("a bot-wide flood wait needs at least two chats to tell it from a chat's own")
        self._chats = chats
        self._window = window
        self._recent: deque[tuple[float, int]] = deque()  # (when, chat) of each flood wait, oldest first
        self.until = float("-inf")
        self.count = 0  # bot-wide pauses taken here (not those followed from another instance)

    def chat_flooded(self, chat_id: int, now: float) -> bool:
        """Record a chat's flood wait; True when, with the others just before it, it is bot-wide."""
        self._recent.append((now, chat_id))
        while self._recent and self._recent[0][0] < now - self._window:
            self._recent.popleft()
        if len({chat for _, chat in self._recent}) < self._chats:
            return False
        self._recent.clear()  # the pause answers these; the next ones count afresh
        return True

    def hold(self, until: float) -> bool:
        """Hold the bot until `until` (a later pause already set stays); True if that is later than before."""
        if until <= self.until:
            return False
        self.until = until
        return True

    def left(self, now: float) -> float:
        return max(0.0, self.until - now)
