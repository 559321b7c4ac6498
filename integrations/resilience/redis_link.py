"""The one connection to Redis behind every shared limit, and whether it may be used right now.

Shared limits (rates, breakers, flood pauses) ask Redis through `RedisLink.run`. A connection
error, a timeout or an error reply marks the link down: every shared limit then uses its local
stand-in (1/N of the rate, N = `instances`), one warning is logged, and one prober pings Redis
with growing waits (1 s, doubling up to a minute, on the injected clock) until it answers; then
the shared limits are used again and that is logged once too. While the link is down nothing but
the prober talks to Redis, so a dead server is not hammered by every call, and no call waits on it.

Writes nobody waits for (a refund, a pause, a breaker opening) go through `spawn`: they run in the
background and a failure there only marks the link down. What an instance decided while the link
was down (a Retry-After pause, a flood wait, an open breaker) is written once Redis answers again:
each shared limit registers a `when_back` hook that writes what is still pending (the time left).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Awaitable, Callable, Coroutine, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from integrations.clock import Clock
from integrations.resilience.snapshots import SharedLimitsSnapshot

log = logging.getLogger(__name__)

T = TypeVar("T")

SHARED = "shared"
LOCAL = "local"

# Every key this bot writes starts with this, so one Redis can serve other things too.
KEY_PREFIX = "switchboard:"

# Scripts count time from here (2026-01-01 UTC) rather than from 1970: a double then keeps
# nanoseconds rather than a quarter of a microsecond, which a few additions would turn into an
# early grant.
SCRIPT_EPOCH = 1_767_225_600.0


class SharedUnavailable(Exception):
    """Redis could not be asked (or the link is down): the caller uses its local limit instead."""


def redis_location(url: str) -> str:
    """Where a Redis URL points, without its password: 'redis://127.0.0.1:6379/0'."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path or ''}"


class RedisLink:
    def __init__(
        self,
        client: Redis,
        clock: Clock,
        *,
        location: str,
        instances: int = 1,
        probe_first: float = 1.0,
        probe_max: float = 60.0,
    ) -> None:
        if instances < 1:
            raise ValueError("instances must be at least 1")
        self.instances = instances
        self.location = location
        self._client = client
        self._clock = clock
        self._probe_first = probe_first
        self._probe_max = probe_max
        self._down_since: datetime | None = None
        self._last_error: str | None = None
        self._prober: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._when_back: list[Callable[[], int]] = []
        # See `now`: wall time read once, then carried on by the monotonic clock.
        self._epoch_offset = clock.now().timestamp() - SCRIPT_EPOCH - clock.monotonic()

    @classmethod
    def from_url(cls, url: str, clock: Clock, *, instances: int = 1, timeout: float = 0.5) -> "RedisLink":
        """A link to `url`. redis-py retries once at once, no more: a pooled connection that a
        restarted server closed fails its first command, and a dead server costs two quick
        refusals or two timeouts rather than redis-py's default backoff."""
        return cls(_client(url, timeout), clock, location=redis_location(url), instances=instances)

    @property
    def usable(self) -> bool:
        return self._down_since is None

    @property
    def down_since(self) -> datetime | None:
        return self._down_since

    def now(self) -> float:
        """The time every script is told it is: seconds since SCRIPT_EPOCH, from the caller's clock.

        Not Redis's own TIME: the caller's clock is the one its waits run on (tests inject a
        ManualClock, so they stay deterministic). Epoch-based because instances must agree on it:
        instances on one host share one clock, and NTP-synced hosts differ by milliseconds, which
        shifts a limit by as little. The wall clock is read once and carried on by the monotonic
        one: a wall-clock step (NTP) then moves no limit here, and the microseconds a datetime
        keeps do not round a grant early.
        """
        return self._clock.monotonic() + self._epoch_offset

    def key(self, *parts: object) -> str:
        return KEY_PREFIX + ":".join(str(part) for part in parts)

    def script(self, source: str) -> AsyncScript:
        """A Lua script run with EVALSHA (loaded again by redis-py if Redis restarted and forgot it)."""
        return self._client.register_script(source)

    async def run(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """`operation(client)`, or SharedUnavailable when the link is down or Redis fails to answer."""
        if not self.usable:
            raise SharedUnavailable(f"Redis at {self.location} unreachable")
        try:
            return await operation(self._client)
        except (RedisError, OSError) as error:
            self.lost(error)
            raise SharedUnavailable(f"Redis at {self.location}: {type(error).__name__}") from error

    def when_back(self, publish: Callable[[], int]) -> None:
        """Call `publish` each time Redis answers again after being unreachable; it writes what it
        decided alone meanwhile (through `spawn`) and says how many things that was."""
        self._when_back.append(publish)

    def spawn(self, write: Coroutine[Any, Any, object]) -> None:
        """Run a write in the background; nobody waits for it, and a failure only marks the link down."""
        task = asyncio.ensure_future(self._quietly(write))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for the background writes started so far (tests, and shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def ping(self) -> None:
        """Ask Redis directly, link up or not (start-up and `switchboard check`); raises RedisError or OSError."""
        await self._client.ping()

    async def start(self) -> None:
        """Find out once whether Redis answers, so the log says at start which limits are in force."""
        try:
            await self.ping()
        except (RedisError, OSError) as error:
            self.lost(error)
        else:
            log.info("shared limits: Redis at %s reachable; limits shared by %d instances", self.location, self.instances)

    def lost(self, error: BaseException) -> None:
        """Redis failed: fall back to the local limits until the prober reaches it again."""
        self._last_error = type(error).__name__
        if self._down_since is not None:
            return
        self._down_since = self._clock.now()
        log.warning(
            "shared limits: Redis at %s unreachable (%s); each instance now keeps 1/%d of every limit",
            self.location, self._last_error, self.instances,
        )
        self._prober = asyncio.ensure_future(self._probe())

    def snapshot(self) -> SharedLimitsSnapshot:
        return {
            "state": SHARED if self.usable else LOCAL,
            "location": self.location,
            "instances": self.instances,
            "down_since": self._down_since.isoformat() if self._down_since is not None else None,
            "last_error": None if self.usable else self._last_error,
        }

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._client.aclose()

    async def _probe(self) -> None:
        wait = self._probe_first
        while True:
            await self._clock.sleep(wait)
            try:
                await self.ping()
            except (RedisError, OSError) as error:
                self._last_error = type(error).__name__
                wait = min(wait * 2, self._probe_max)
                continue
            self._down_since = None
            self._last_error = None
            self._prober = None
            published = self._publish_pending()
            log.info(
                "shared limits: Redis at %s reachable again; limits are shared again%s", self.location,
                f"; {published} pause(s) and open breaker(s) taken while it was away written for the others" if published else "",
            )
            return

    def _publish_pending(self) -> int:
        published = 0
        for publish in self._when_back:
            try:
                published += publish()
            except Exception:  # one limit's write must not keep the others' from Redis
                log.exception("shared limits: writing what was decided while Redis was away failed")
        return published

    async def _quietly(self, write: Coroutine[Any, Any, object]) -> None:
        try:
            await write
        except SharedUnavailable:
            pass  # `run` marked the link down already
        except (RedisError, OSError) as error:
            self.lost(error)


def _client(url: str, timeout: float) -> Redis:
    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1), decode_responses=True
    )


async def redis_version(url: str, *, timeout: float = 0.5) -> str:
    """'Redis 7.0.15 at redis://host:6379/0' when it answers (`switchboard check`); raises RedisError or OSError."""
    client = _client(url, timeout)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return f"Redis {info.get('redis_version', '(version unknown)')} at {redis_location(url)}"


async def reachability(url: str, *, instances: int, timeout: float = 0.5) -> dict[str, object]:
    """What a link's snapshot would say now, asked from outside the bot (`switchboard status`)."""
    state: dict[str, object] = {"state": SHARED, "location": redis_location(url), "instances": instances, "down_since": None}
    try:
        await redis_version(url, timeout=timeout)
    except (RedisError, OSError) as error:
        return {**state, "state": LOCAL, "last_error": type(error).__name__}
    return {**state, "last_error": None}
