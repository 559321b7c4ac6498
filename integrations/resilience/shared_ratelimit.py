"""A rate limit shared by every instance through Redis: the GCRA of `ratelimit.py`, kept in one key.

The state is the same "theoretical arrival time" (TAT) as the local limiter's, stored in Redis and
moved by one Lua script, so a check and a grant are one atomic step for all instances together. The
script reserves: it moves TAT on at once and answers how long the caller must wait for its slot
(as the local limiter's head of queue would), so nobody polls Redis; callers sleep on their own
clock. With `max_wait`, a slot further away than that is not reserved and the caller gets
`WaitTooLong` at once. A Retry-After pause is a second key, holding the moment it ends, with an
expiry; while it is set the script grants nothing. A caller held by several pauses passes each key
after the first (the Telegram pace: its chat's flood wait and the bot's); a 'paused' answer says
which one holds (1 for the first pause key).

Fallback: the inherited `RateLimiter` is the local stand-in at 1/N of the rate (N instances each
keeping their share), used whenever the link is down, and for a call whose reservation fails
because Redis stopped answering. A pause taken while Redis was away is written, for the time
still left, once it answers again. A cancelled waiter gives its slot back (in the background), and a
waiter woken late pushes the slots not yet reserved back by as much.
Header reports (`tighten`) stay per instance, as each sees the account-wide counts in its own
responses.
"""
from __future__ import annotations

import asyncio
import contextlib
import math

from integrations.clock import Clock
from integrations.resilience.ratelimit import _TICKETS, RateLimiter
from integrations.resilience.redis_link import RedisLink, SharedUnavailable
from integrations.resilience.snapshots import LimiterSnapshot, TokenBudgetSnapshot
from integrations.resilience.tokens import TokenBudget

# Float rounding on timestamps must not cost a second sleep (as in ratelimit.py).
_EPSILON = 1e-9
# A grant later than its slot by more than this pushes the slots after it back.
_LATE = 1e-3

# Numbers go to and from Lua as text with every digit: Redis turns a Lua number reply into an
# integer, and Lua's tostring keeps only 14 digits.
RESERVE = """
local function num(text) return string.format('%.17g', text) end
local now, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, max_wait = tonumber(ARGV[4]), tonumber(ARGV[5])
for index = 2, #KEYS do
  local paused_until = tonumber(redis.call('GET', KEYS[index]) or '0')
  if paused_until > now then return {'paused', num(paused_until - now), index - 1} end
end
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local delay = math.max(0, tat + (math.min(cost, burst) - burst) * interval - now)
if max_wait >= 0 and delay > max_wait then return {'too_long', num(delay), num(tat - now)} end
local new_tat = tat + cost * interval
redis.call('SET', KEYS[1], num(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {'granted', num(delay), num(new_tat - now)}
"""

# Take `cost` units without waiting (negative gives them back; the bucket never fills past full).
CHARGE = """
local now, interval, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + cost * interval
if tat <= now then redis.call('DEL', KEYS[1]) return '0' end
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return string.format('%.17g', tat - now)
"""

# Pause until ARGV[2] unless a longer pause is already set; the key expires when the pause ends.
PAUSE = """
local now, ends = tonumber(ARGV[1]), tonumber(ARGV[2])
if ends <= math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0')) then return 0 end
redis.call('SET', KEYS[1], string.format('%.17g', ends), 'PX', math.ceil((ends - now) * 1000))
return 1
"""


class SharedRateLimiter(RateLimiter):
    """`rate` units per `per` seconds for all instances together; the inherited limiter is the local 1/N."""

    def __init__(
        self, name: str, rate: float, per: float, clock: Clock, link: RedisLink, burst: int | None = None
    ) -> None:
        shared_burst = float(burst if burst is not None else rate)
        super().__init__(name, rate / link.instances, per, clock, burst=max(1, math.floor(shared_burst / link.instances)))
        self.shared_rate = rate
        self.shared_burst = shared_burst
        self._shared_interval = per / rate
        self._link = link
        self._reserve = link.script(RESERVE)
        self._charge = link.script(CHARGE)
        self._pause = link.script(PAUSE)
        self._tat_key = link.key("rate", name)
        self._pause_key = link.key("rate", name, "paused")
        # The shared TAT as last seen: (seconds it was ahead of shared time, when on our clock).
        self._seen_ahead = (0.0, clock.monotonic())
        self._shared_waiting = 0
        link.when_back(self._publish_pending_pause)

    async def acquire(self, cost: float = 1.0, *, max_pause: float | None = None, max_wait: float | None = None) -> None:
        if cost < 0:
            raise ValueError("cost must not be negative")
        if not self._link.usable:
            await super().acquire(cost, max_pause=max_pause, max_wait=max_wait)
            return
        start = self._clock.monotonic()
        deadline = None if max_wait is None else start + max_wait
        self._shared_waiting += 1
        try:
            await self._acquire_shared(cost, max_pause, deadline)
        except SharedUnavailable:
            # Redis stopped answering before a slot was reserved: the local share decides instead.
            left = None if deadline is None else max(0.0, deadline - self._clock.monotonic())
            await super().acquire(cost, max_pause=max_pause, max_wait=left)
        finally:
            self._shared_waiting -= 1

    def charge(self, cost: float) -> None:
        if not self._link.usable:
            super().charge(cost)
            return
        if cost > 0:
            self._window.take(cost, self._clock.monotonic())
            self._granted += cost
        self._link.spawn(self._charge_shared(cost))

    def pause(self, seconds: float) -> None:
        super().pause(seconds)  # holds this instance at once, and its local share if Redis goes
        if self._link.usable:
            self._link.spawn(self._pause_shared(seconds))

    def _publish_pending_pause(self) -> int:
        """Redis is back: a Retry-After pause still running here is written, for the time left."""
        left = self._paused_until - self._clock.monotonic()
        if left <= 0:
            return 0
        self._link.spawn(self._pause_shared(left))
        return 1

    def snapshot(self) -> LimiterSnapshot:
        snapshot = super().snapshot()
        if not self._link.usable:
            return {**snapshot, "shared": False}
        ahead, seen_at = self._seen_ahead
        ahead -= self._clock.monotonic() - seen_at
        available = self.shared_burst - max(0.0, ahead) / self._shared_interval
        return {
            **snapshot,
            "rate": self.shared_rate,
            "burst": self.shared_burst,
            "available": round(available, 3),
            "waiting": len(self._waiters) + self._shared_waiting,
            "shared": True,
        }

    async def _acquire_shared(self, cost: float, max_pause: float | None, deadline: float | None) -> None:
        while True:
            now = self._clock.monotonic()
            self._refuse_long_pause(max_pause, now)
            # Our own pause and the upstream's headers hold this instance without asking Redis.
            hold = max(self._paused_until, self._window.ready_at(cost, now, self._last_grant)) - now
            if hold > _EPSILON:
                self._refuse_long_wait(deadline, now, hold)
                await self._clock.sleep(hold)
                continue
            max_wait = -1.0 if deadline is None else max(0.0, deadline - now)
            verdict, seconds, ahead = await self._ask(cost, max_wait)
            # The slot counts from when we asked, not from when the answer came.
            slot = now + seconds
            if verdict == "paused":
                # Another instance was told to wait: so are we, for what is left of it.
                RateLimiter.pause(self, seconds)
                continue
            self._seen_ahead = (ahead, self._clock.monotonic())
            if verdict == "too_long":
                raise self._too_long(seconds)
            if (wait := slot - self._clock.monotonic()) > _EPSILON:
                try:
                    await self._clock.sleep(wait)
                except asyncio.CancelledError:
                    self._link.spawn(self._charge_shared(-cost))
                    raise
            if (late := self._clock.monotonic() - slot) > _LATE:
                # Woken late (a busy loop): slots not yet handed out move back by as much, so the
                # next grant still keeps its distance from this one, as in the local limiter.
                with contextlib.suppress(SharedUnavailable):  # the slot was ours all the same
                    await self._charge_shared(late / self._shared_interval)
            self._take_reserved(cost)
            return

    async def _ask(self, cost: float, max_wait: float) -> tuple[str, float, float]:
        now = self._link.now()
        args = [now, self._shared_interval, self.shared_burst, cost, max_wait]
        reply = await self._link.run(lambda client: self._reserve(keys=[self._tat_key, self._pause_key], args=args))
        verdict, seconds, *rest = reply  # after 'paused', rest names the pause key: not how far ahead
        return str(verdict), float(seconds), float(rest[0]) if rest and verdict != "paused" else 0.0

    def _take_reserved(self, cost: float) -> None:
        """Book a grant Redis made, as `_take` would, without spending the local share."""
        now = self._clock.monotonic()
        self._window.take(cost, now)
        self._last_grant = now
        self._granted += cost
        # The ticket a header report read in this task is charged from (see ratelimit.py).
        _TICKETS.set({**_TICKETS.get(), self._key: self._granted})

    async def _charge_shared(self, cost: float) -> None:
        args = [self._link.now(), self._shared_interval, cost]
        ahead = await self._link.run(lambda client: self._charge(keys=[self._tat_key], args=args))
        self._seen_ahead = (float(ahead), self._clock.monotonic())

    async def _pause_shared(self, seconds: float) -> None:
        now = self._link.now()
        await self._link.run(lambda client: self._pause(keys=[self._pause_key], args=[now, now + seconds]))


class SharedTokenBudget(TokenBudget):
    """A tokens-per-minute budget shared by every instance; its local stand-in keeps 1/N of it."""

    def __init__(self, name: str, tokens_per_minute: int, clock: Clock, link: RedisLink) -> None:
        super().__init__(name, tokens_per_minute, clock)
        self._bucket = SharedRateLimiter(name, tokens_per_minute, 60.0, clock, link, burst=tokens_per_minute)

    def snapshot(self) -> TokenBudgetSnapshot:
        """As `TokenBudget.snapshot`, the budget in force: the local share while Redis is unreachable."""
        bucket = self._bucket.snapshot()
        return {**super().snapshot(), "tokens_per_minute": bucket["rate"], "shared": bucket["shared"]}
