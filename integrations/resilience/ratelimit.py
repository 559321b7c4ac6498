"""Pace calls to one upstream: a GCRA limiter (a leaky bucket kept as one timestamp) with FIFO waiters.

Algorithm: one unit of capacity is earned every `per / rate` seconds and up to `burst` unused
units are banked. The state is the "theoretical arrival time" (TAT): the moment the bucket would
be full again. A request of `cost` units may go at `now` once it fits, i.e. when
`max(TAT, now) + cost * interval - now <= burst * interval`; granting it moves TAT forward by
`cost * interval`. A cost larger than `burst` waits for a full bucket and then overdraws it, so an
oversized request is slow rather than impossible.

Burst semantics: in any window of `per` seconds up to `burst + rate - 1` requests of cost 1 can
pass (what was banked, plus what is earned during the window). An upstream that enforces "at most
N per rolling `per` seconds" therefore needs `rate=N, burst=1`: strict spacing of `per / N`
seconds, measured between the moments requests are actually granted (a late wake-up pushes the
next grant back rather than letting it catch up).

Waiting: callers queue in arrival order; only the head of the queue sleeps, once, on the injected
clock, for exactly the time its request needs. A cancelled waiter leaves the queue without taking
capacity. `tighten` (from an upstream's rate-limit headers, see `upstream_window.py`) and `pause`
(from a Retry-After) add limits on top; they wake the head so it recomputes its wait. A caller
that passes `max_pause` gets `RateLimited` instead of sitting out a longer pause, even if it was
already queued. A caller that passes `max_wait` gets `WaitTooLong` at once when its turn is
predicted to come later than that (from the queue ahead of it and the limits as they stand), and
at the latest when `max_wait` has passed, however the limits changed meanwhile.

Which grant a report answers: each grant is remembered in the granting task's context (a context
variable, inherited by the tasks it starts), where the adapter reads the response's headers. A
report is therefore charged with every unit granted after its own request, and one older than
the report in force is recognised as such. A report read outside any such task counts from now.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Mapping, Sequence

from integrations.clock import Clock, wait_for
from integrations.errors import RateLimited
from integrations.resilience.snapshots import LimiterSnapshot
from integrations.resilience.upstream_window import UpstreamWindow

logger = logging.getLogger(__name__)

# Float arithmetic on timestamps can leave a wait of 1e-13 s after an exact wake-up; without
# this the head would sleep a second time for nothing.
_EPSILON = 1e-9

# Per limiter (by a key of its own, never reused), the grant count right after this task's last
# grant: the ticket of the report its response will carry.
_TICKETS: ContextVar[Mapping[int, float]] = ContextVar("rate limiter tickets", default=MappingProxyType({}))
_KEYS = itertools.count()


class WaitTooLong(RateLimited):
    """A limiter of ours would hold the call longer than its caller allows; the upstream was not asked.

    Not retryable (waiting is exactly what the caller declined: it fails over instead), and it says
    nothing about the upstream's health, so breakers ignore it.
    """

    retryable = False


class RateLimiter:
    def __init__(self, name: str, rate: float, per: float, clock: Clock, burst: int | None = None) -> None:
        if rate <= 0 or per <= 0:
            raise ValueError("rate and per must be positive")
        if burst is not None and burst < 1:
            raise ValueError("burst must be at least 1")
        self.name = name
        self.rate = rate
        self.per = per
        self.burst = float(burst if burst is not None else rate)
        self._clock = clock
        self._interval = per / rate
        self._tat = clock.monotonic()
        self._paused_until = float("-inf")
        # What the upstream's headers say is left until its reset.
        self._window = UpstreamWindow()
        self._last_grant = float("-inf")
        self._granted = 0.0  # units granted so far (and positive charges): tickets count these
        self._key = next(_KEYS)
        self._waiters: deque[_Turn] = deque()
        self._timer: asyncio.Future[None] | None = None

    async def acquire(self, cost: float = 1.0, *, max_pause: float | None = None, max_wait: float | None = None) -> None:
        """Wait until `cost` units fit, behind everyone who asked earlier, then take them.

        With `max_pause`, a pause longer than that (now, or one that starts while waiting)
        raises `RateLimited` instead, so the caller can fail over rather than hang. With
        `max_wait`, a wait longer than that raises `WaitTooLong`: at once when it is foreseeable,
        else when the time is up.
        """
        if cost < 0:
            raise ValueError("cost must not be negative")
        now = self._clock.monotonic()
        self._refuse_long_pause(max_pause, now)
        if not self._waiters and self._delay(cost, now) <= _EPSILON:
            self._take(cost, now)
            return
        deadline = None
        if max_wait is not None:
            deadline = now + max_wait
            self._refuse_long_wait(deadline, now, self._delay(cost, now, self._costs_ahead(None)))
        await self._wait_in_line(cost, max_pause, deadline)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def charge(self, cost: float) -> None:
        """Take `cost` units now without waiting (negative gives them back).

        For usage known only after the fact, e.g. tokens an API reported. A refund never fills
        the bucket beyond `burst`.
        """
        now = self._clock.monotonic()
        self._tat = max(self._tat, now) + cost * self._interval
        if cost > 0:
            # The upstream counts what was used, not what we guessed: a refund does not give
            # back what its headers said was left (its next report will).
            self._window.take(cost, now)
            self._granted += cost
        self._wake_head()

    def tighten(self, remaining: int, reset_after: float, limit: int | None = None) -> None:
        """The upstream says only `remaining` units (of `limit`) are left for the next `reset_after` seconds.

        Units granted after the request this report answers are taken off. What is left goes
        without waiting until its last tenth, which is spread over the time to the reset; with
        nothing left, everyone waits for the reset. After it the configured rate alone applies.
        A newer report replaces an older one, more room or less; a report older than the one in
        force is ignored.
        """
        now = self._clock.monotonic()
        ticket = _TICKETS.get().get(self._key, self._granted)
        was_binding = self._window.binds(now)
        if not self._window.report(
            remaining, reset_after, now, ticket=ticket, in_flight=self._granted - ticket, limit=limit
        ):
            return
        if self._window.binds(now) and not was_binding:
            logger.info("%s: upstream allows %s more in %.1f s; slowing down", self.name, remaining, reset_after)
        self._wake_head()

    def pause(self, seconds: float) -> None:
        """Nobody acquires for `seconds` (e.g. a 429 with Retry-After). Never shortens a pause."""
        now = self._clock.monotonic()
        self._paused_until = max(self._paused_until, now + seconds)
        for turn in list(self._waiters)[1:]:  # the head checks for itself when woken
            if turn.max_pause is not None and self._paused_until - now > turn.max_pause:
                if not turn.future.done():
                    turn.future.set_exception(self._long_pause(now))
        self._wake_head()

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock.monotonic())

    def snapshot(self) -> LimiterSnapshot:
        now = self._clock.monotonic()
        return {
            "name": self.name,
            "rate": self.rate,
            "per": self.per,
            "burst": self.burst,
            "available": round(self._available(now), 3),
            "waiting": len(self._waiters),
            "paused_for": round(max(0.0, self._paused_until - now), 3),
            "tightened": self._window.binds(now),
        }

    def _available(self, now: float) -> float:
        """Units that could go right now (negative after an overdraw)."""
        return self.burst - max(0.0, self._tat - now) / self._interval

    def _delay(self, cost: float, now: float, ahead: Sequence[float] = ()) -> float:
        """Seconds until `cost` units may go, once the units queued before them (`ahead`) have gone."""
        fits = min(cost, self.burst)
        delay = max(self._tat, now) + (sum(ahead) + fits - self.burst) * self._interval - now
        delay = max(delay, self._paused_until - now)
        return max(delay, self._window.ready_at(cost, now, self._last_grant, ahead) - now)

    def _take(self, cost: float, now: float) -> None:
        self._tat = max(self._tat, now) + cost * self._interval
        self._window.take(cost, now)
        self._last_grant = now
        self._granted += cost
        _TICKETS.set({**_TICKETS.get(), self._key: self._granted})

    def _refuse_long_pause(self, max_pause: float | None, now: float) -> None:
        if max_pause is not None and self._paused_until - now > max_pause:
            raise self._long_pause(now)

    def _long_pause(self, now: float) -> RateLimited:
        return RateLimited(
            "paused after the upstream asked us to wait", upstream=self.name, retry_after=self._paused_until - now
        )

    def _refuse_long_wait(self, deadline: float | None, now: float, delay: float) -> None:
        if deadline is not None and now + delay > deadline + _EPSILON:
            raise self._too_long(delay)

    def _too_long(self, delay: float) -> WaitTooLong:
        return WaitTooLong(f"would wait {delay:.1f} s for capacity, longer than allowed", upstream=self.name, retry_after=delay)

    def _costs_ahead(self, turn: "_Turn | None") -> list[float]:
        """The costs queued before `turn` (before a newcomer when None), in order."""
        ahead = []
        for other in self._waiters:
            if other is turn:
                break
            ahead.append(other.cost)
        return ahead

    async def _wait_in_line(self, cost: float, max_pause: float | None, deadline: float | None) -> None:
        turn = _Turn(asyncio.get_running_loop().create_future(), max_pause, cost)
        self._waiters.append(turn)
        try:
            if self._waiters[0] is not turn:
                await self._await_turn(turn, deadline)
            while (delay := self._delay(cost, now := self._clock.monotonic())) > _EPSILON:
                self._refuse_long_pause(max_pause, now)
                self._refuse_long_wait(deadline, now, delay)
                await self._sleep_until(now + delay)
            self._take(cost, self._clock.monotonic())
        finally:
            was_head = self._waiters[0] is turn
            self._waiters.remove(turn)
            if was_head and self._waiters and not self._waiters[0].future.done():
                self._waiters[0].future.set_result(None)

    async def _await_turn(self, turn: "_Turn", deadline: float | None) -> None:
        """Wait to reach the head of the queue, but not past `deadline`."""
        if deadline is None:
            await turn.future
            return
        try:
            await wait_for(self._clock, turn.future, deadline - self._clock.monotonic())
        except TimeoutError:
            now = self._clock.monotonic()
            raise self._too_long(self._delay(turn.cost, now, self._costs_ahead(turn))) from None

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep on the clock; `_wake_head` cuts it short when the limits change."""
        timer = asyncio.ensure_future(self._timer_until(deadline))
        self._timer = timer
        try:
            await asyncio.wait((timer,))
        finally:
            self._timer = None
            timer.cancel()

    async def _timer_until(self, deadline: float) -> None:
        # Measured when the timer task starts, not when it was created: other callbacks may run
        # in between, and a relative sleep would then wake that much late.
        await self._clock.sleep(deadline - self._clock.monotonic())

    def _wake_head(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@dataclass(slots=True)
class _Turn:
    """A place in the queue: its future is resolved when it reaches the head."""

    future: asyncio.Future[None]
    max_pause: float | None
    cost: float
