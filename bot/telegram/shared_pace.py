"""The bot's overall Telegram pace (thirty calls a second) kept once for every instance, in Redis.

Telegram counts its overall limit per bot account, whichever session or host sends: N instances
each keeping thirty a second would send N times too much. So every call an instance's governor lets
go also reserves a slot on one GCRA key for the bot (the script of the other shared limits,
`shared_ratelimit.RESERVE`), one round trip that also reads the chat's and the bot's flood pauses
(their keys are the script's pause keys). The burst is one: slots are spaced 1/30 s apart, so no
second holds more than thirty, whichever instances took them; a burst of B would let 30 + B - 1
into one second. The instance's own window (`FloodGovernor`) still keeps its calls in flight
counted, so one instance's latency cannot crowd its calls either.

Priorities stay the governor's: a final text waits for its slot, however far; a preview takes only
the next slot (at most one interval away), else it is deferred, so previews never queue and a final
text is never more than a slot or two behind them. Typing reserves nothing and waits for nothing:
it is dropped while the last answer said the bot's slots are taken further ahead than that, and
otherwise charged in the background.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from integrations.clock import Clock
from integrations.resilience.redis_link import RedisLink
from integrations.resilience.shared_ratelimit import CHARGE, RESERVE

# A slot reached later than this moves the slots after it back (as in shared_ratelimit).
_LATE = 1e-3


@dataclass(frozen=True)
class Slot:
    """Redis's answer: `granted` for the moment `at` (on the caller's clock); `busy` (a preview's
    slot is too far); or `paused` for `wait` seconds by the pause key at `held_by` (0: the chat's,
    1: the bot's)."""

    verdict: Literal["granted", "busy", "paused"]
    at: float = 0.0
    wait: float = 0.0
    held_by: int = 0


class SharedBotPace:
    def __init__(self, clock: Clock, link: RedisLink, per_second: int) -> None:
        self._clock = clock
        self._link = link
        self.interval = 1.0 / per_second
        self._reserve = link.script(RESERVE)
        self._charge = link.script(CHARGE)
        self._key = link.key("flood", "pace")
        # How far ahead of now the bot's slots were taken, as last seen: (seconds, when on our clock).
        self._seen_ahead = (0.0, clock.monotonic())

    async def reserve(self, pause_keys: list[str], *, preview: bool) -> Slot:
        """Reserve the bot's next slot (a preview only if it is at most one interval away) unless a
        pause in `pause_keys` holds; raises SharedUnavailable when Redis does not answer."""
        asked, now = self._clock.monotonic(), self._link.now()
        max_wait = self.interval if preview else -1.0
        args = [now, self.interval, 1, 1, max_wait]
        with self._clock.real_work():  # a test's clock must not jump past the slot while Redis answers
            verdict, seconds, *rest = await self._link.run(
                lambda client: self._reserve(keys=[self._key, *pause_keys], args=args)
            )
        if verdict == "paused":
            return Slot("paused", wait=float(seconds), held_by=int(rest[0]) - 1)
        self._seen_ahead = (float(rest[0]), self._clock.monotonic())
        # The slot counts from when we asked, not from when the answer came.
        return Slot("granted" if verdict == "granted" else "busy", at=asked + float(seconds))

    async def wait(self, slot: Slot) -> None:
        """Sleep until a granted slot; one given up by a cancel goes back to the other callers.
        Reached late (the answer's round trip, a busy loop), the slots after it move back by as
        much, so the next call still keeps its distance from this one."""
        if (wait := slot.at - self._clock.monotonic()) > 0:
            try:
                await self._clock.sleep(wait)
            except asyncio.CancelledError:
                self._spend(-1)
                raise
        if (late := self._clock.monotonic() - slot.at) > _LATE:
            self._spend(late / self.interval)

    def spend_one(self) -> None:
        """Count a call made without a reservation (typing), in the background."""
        self._spend(1)

    def has_room(self) -> bool:
        """Whether, as last seen, the bot's next slot is at most one interval away (no round trip)."""
        ahead, seen_at = self._seen_ahead
        return ahead - (self._clock.monotonic() - seen_at) <= self.interval + 1e-9

    def _spend(self, cost: float) -> None:
        async def charge() -> None:
            args = [self._link.now(), self.interval, cost]
            ahead = await self._link.run(lambda client: self._charge(keys=[self._key], args=args))
            self._seen_ahead = (float(ahead), self._clock.monotonic())

        if self._link.usable:
            self._link.spawn(charge())
