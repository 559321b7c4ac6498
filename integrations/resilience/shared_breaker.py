"""A circuit breaker whose open state is shared by every instance through Redis.

Each instance counts failures as `CircuitBreaker` does; whichever opens the circuit writes "open
until T (reason)" to one Redis hash, with an expiry an hour past T, so a key left by a crashed
instance goes away by itself. Before every call an instance reads that hash (one script, one round
trip) and follows it:

    no key                 closed everywhere: a circuit open here closes (a probe elsewhere
                           succeeded, or an operator reset it)
    T in the future        open everywhere until T: calls fail fast with `CircuitOpen`
    T passed               half-open: one instance wins the probe slot (SET NX with an expiry of
                           one cooldown, in case it dies mid-probe) and lets one call through;
                           the others fail fast until its outcome is written

A probe that succeeds deletes the hash (unless someone opened it again meanwhile); one that fails
writes a later T. When Redis is unreachable the breaker works alone, as `CircuitBreaker`; what it
did meanwhile is written as soon as Redis answers again (the link's `when_back`), whether or not
this instance makes another call: a circuit it opened (with the cooldown still left), one a probe
closed, or an operator's reset (which would otherwise be undone by the open state Redis kept).
"""
from __future__ import annotations

from typing import Awaitable, Callable, Literal, TypeVar

from integrations.clock import Clock
from integrations.resilience.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, _Guard
from integrations.resilience.redis_link import RedisLink, SharedUnavailable
from integrations.resilience.snapshots import BreakerSnapshot

T = TypeVar("T")
# What this breaker did while Redis was unreachable, to be written once it answers again.
Unwritten = Literal["open", "closed", "reset"] | None

# How long a shared open state outlives its cooldown before Redis forgets it unprobed.
STALE_AFTER_MS = 3_600_000

OPEN_SCRIPT = """
local now, ends = tonumber(ARGV[1]), tonumber(ARGV[2])
if ends > tonumber(redis.call('HGET', KEYS[1], 'until') or '0') then
  redis.call('HSET', KEYS[1], 'until', ARGV[2], 'reason', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil((ends - now) * 1000) + tonumber(ARGV[4]))
end
redis.call('DEL', KEYS[2])
return 1
"""

# ARGV[2] == '1': an operator's reset, which closes whatever the state.
CLOSE_SCRIPT = """
local ends = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if ARGV[2] == '1' or ends <= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1], KEYS[2]) return 1 end
return 0
"""

# {} when closed, else {until, reason, 1 if this caller won the probe slot}.
READ_SCRIPT = """
local ends = redis.call('HGET', KEYS[1], 'until')
if not ends then return {} end
local probe = 0
if tonumber(ends) <= tonumber(ARGV[1]) and ARGV[3] == '1' then
  if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then probe = 1 end
end
return {ends, redis.call('HGET', KEYS[1], 'reason') or '', probe}
"""


class SharedCircuitBreaker(CircuitBreaker):
    def __init__(
        self,
        name: str,
        clock: Clock,
        link: RedisLink,
        failure_threshold: int = 5,
        window: float = 60.0,
        cooldown: float = 30.0,
    ) -> None:
        super().__init__(name, clock, failure_threshold=failure_threshold, window=window, cooldown=cooldown)
        self._link = link
        self._state_key = link.key("breaker", name)
        self._probe_key = link.key("breaker", name, "probe")
        self._open_script = link.script(OPEN_SCRIPT)
        self._close_script = link.script(CLOSE_SCRIPT)
        self._read_script = link.script(READ_SCRIPT)
        self._following = False  # changing state because the shared one says so: nothing to write
        self._force_close = False
        self._probe_won = False  # this instance holds the shared probe slot
        self._unwritten: Unwritten = None
        self._writes_pending = 0
        link.when_back(self._publish_unwritten)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        await self.follow_shared()
        return await super().call(fn)

    def guard(self) -> "_SharedGuard":
        return _SharedGuard(self)

    def reset(self) -> None:
        self._force_close = True
        try:
            super().reset()
        finally:
            self._force_close = False
        if self._link.usable:
            self._write(self._close_shared(force=True))
        else:
            self._unwritten = "reset"

    def snapshot(self) -> BreakerSnapshot:
        return {**super().snapshot(), "shared": self._link.usable}

    async def follow_shared(self) -> None:
        """Take on the state the other instances agreed on (nothing when Redis is unreachable)."""
        if not self._link.usable or self._writes_pending:
            return  # our own write has not landed yet: the local state is the newer one
        args = [self._link.now(), max(1, int(self.cooldown * 1000)), "0" if self._probe_won else "1"]
        try:
            reply = await self._link.run(
                lambda client: self._read_script(keys=[self._state_key, self._probe_key], args=args)
            )
        except SharedUnavailable:
            return
        if self._writes_pending:
            return
        self._following = True
        try:
            self._follow(reply, float(args[0]))
        finally:
            self._following = False

    def _publish_unwritten(self) -> int:
        """Redis is back: what this breaker did while it was away is written for the others."""
        unwritten, self._unwritten = self._unwritten, None
        if unwritten == "open":
            left = self._retry_at - self._clock.monotonic()
            if self._state != OPEN or left <= 0:
                return 0  # its cooldown is over: the next call here probes, as anywhere
            self._write(self._open_shared(left, self._last_error or ""))
            return 1
        if unwritten is not None and self._state == CLOSED:
            # A probe's close removes only an open state that has run out; a reset removes any.
            self._write(self._close_shared(force=unwritten == "reset"))
            return 1
        return 0

    def _follow(self, reply: list[str], now: float) -> None:
        if not reply:
            if self._unwritten == "open" and self._state == OPEN:
                # Opened while Redis was away: the others learn of it now, rather than it closing.
                self._unwritten = None
                self._write(self._open_shared(self._retry_at - self._clock.monotonic(), self._last_error or ""))
            elif self._state != CLOSED:
                self._close()
            return
        ends, reason, probe = float(reply[0]), reply[1], int(reply[2])
        left = ends - now
        monotonic = self._clock.monotonic()
        if left > 0:
            if self.state != OPEN or monotonic + left > self._retry_at + 1e-3:
                self._last_error = reason or self._last_error
                self._open(monotonic, left)
            return
        if probe:
            self._probe_won = True
            self._state, self._probe_in_flight = HALF_OPEN, False  # the next call here is the probe
        elif not self._probe_won:
            self._last_error = reason or self._last_error
            self._state, self._probe_in_flight = HALF_OPEN, True  # another instance is probing

    def _open(self, now: float, cooldown: float) -> None:
        super()._open(now, cooldown)
        self._probe_won = False
        self._unwritten = None
        if not self._following:
            if self._link.usable:
                self._write(self._open_shared(cooldown, self._last_error or ""))
            else:
                self._unwritten = "open"

    def _close(self) -> None:
        was_open = self._state != CLOSED
        super()._close()
        self._probe_won = False
        self._unwritten = None
        if was_open and not self._following and not self._force_close:
            if self._link.usable:
                self._write(self._close_shared(force=False))
            else:
                self._unwritten = "closed"

    def _write(self, write: Awaitable[object]) -> None:
        self._writes_pending += 1

        async def written() -> None:
            try:
                await write
            finally:
                self._writes_pending -= 1

        self._link.spawn(written())

    async def _open_shared(self, cooldown: float, reason: str) -> None:
        now = self._link.now()
        args: list[str | float] = [now, now + cooldown, reason[:200], STALE_AFTER_MS]
        await self._link.run(lambda client: self._open_script(keys=[self._state_key, self._probe_key], args=args))

    async def _close_shared(self, *, force: bool) -> None:
        args = [self._link.now(), "1" if force else "0"]
        await self._link.run(lambda client: self._close_script(keys=[self._state_key, self._probe_key], args=args))


class _SharedGuard(_Guard):
    """`async with breaker.guard():` after reading the shared state."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        breaker = self._breaker
        assert isinstance(breaker, SharedCircuitBreaker)
        await breaker.follow_shared()
        await super().__aenter__()
