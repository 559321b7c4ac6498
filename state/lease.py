"""The leader lease: one instance at a time, among those sharing one PostgreSQL, holds Telegram.

Why an advisory lock on a dedicated connection, not a lease row with an expiry: the server itself
holds the lock for exactly as long as that connection's session lives, and ends the session the
moment the holder's socket closes (a SIGKILLed process's kernel closes it), so a standby can take
over at its next try instead of waiting out an expiry; and there is no row to race on, no clock of
another host to trust. A lease row would be renewed by writes and expire by comparing clocks.

What the lock cannot see by itself is a holder whose host vanished without closing its socket (a
power cut, a cable): the server then learns of it only from TCP keepalives. The session therefore
asks the server for keepalives that give up on a silent client after about 2 × `lease_seconds`,
while the holder pings its session every `lease_seconds / 5` and counts itself deposed as soon as
`lease_seconds` pass without an answer. The holder always gives up before the server lets the
lock go, so two holders never overlap.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import asyncpg

from integrations.clock import Clock, wait_for
from state.db import StorageFault
from state.postgres import connect, connection_fault, shown_url

log = logging.getLogger(__name__)

# Any fixed number shared by every instance of the bot (the migrations' lock is another).
LEADER_LOCK = 0x5377_4C64  # "SwLd"

# What a lost or unreachable server raises on the lease's connection.
_FAULTS = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, OSError, TimeoutError,
    StorageFault,
)

Connect = Callable[[str, float], Awaitable[asyncpg.Connection]]


class LeaderLease:
    """`await lease.try_take()` → True once held; `await lease.renew()` → False once lost."""

    def __init__(self, url: str, clock: Clock, *, lease_seconds: float, connector: Connect = connect) -> None:
        self._url = url
        self._clock = clock
        self.lease_seconds = lease_seconds
        self._connect = connector
        self._conn: asyncpg.Connection | None = None
        self._held = False
        self._confirmed_at = 0.0  # monotonic time of the last answer that proved the lock ours

    @property
    def held(self) -> bool:
        return self._held

    @property
    def session(self) -> int | None:
        """The server's process id of the session holding (or trying) the lock, for logs and tests."""
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None

    @property
    def renew_every(self) -> float:
        return self.lease_seconds / 5

    async def try_take(self) -> bool:
        """One try, without waiting: True if this instance now holds the lease. A server that
        cannot be reached is a False (logged), as another instance may hold it."""
        if self._held:
            return True
        try:
            conn = await self._connection()
            taken = bool(await wait_for(self._clock, conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK), self.lease_seconds))
        except _FAULTS as error:
            log.warning("could not try the leader lease at %s: %s", shown_url(self._url), _reason(error, self._url))
            await self._drop()
            return False
        if taken:
            self._held = True
            self._confirmed_at = self._clock.monotonic()
        return taken

    async def renew(self) -> bool:
        """Ask the server whether the session holding the lock is still ours. False once it is
        not, or once `lease_seconds` passed since the last proof: from then on the lease is lost
        (the caller must stop acting as leader at once) and the connection is dropped."""
        if not self._held or self._conn is None:
            return False
        remaining = self._confirmed_at + self.lease_seconds - self._clock.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError(f"no answer for {self.lease_seconds:g} s")
            mine = await wait_for(self._clock, self._conn.fetchval(_STILL_MINE, LEADER_LOCK), remaining)
        except _FAULTS as error:
            log.error("lost the leader lease: %s", _reason(error, self._url))
            await self._drop()
            return False
        if not mine:
            log.error("lost the leader lease: the server no longer counts this session as its holder")
            await self._drop()
            return False
        self._confirmed_at = self._clock.monotonic()
        return True

    async def release(self) -> None:
        """Give the lease up (closing the session frees the lock on the server)."""
        if self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.close(timeout=2.0)
            except _FAULTS:
                self._conn.terminate()
        self._conn = None
        self._held = False

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect(self._url, self.lease_seconds)
            await self._conn.execute(_keepalives(self.lease_seconds))
        return self._conn

    async def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            self._conn.terminate()
        self._conn = None


# True while this session holds the lock (pg_locks lists advisory locks by their two 32-bit halves).
_STILL_MINE = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = $1)"
)


def _keepalives(lease_seconds: float) -> str:
    """The server gives up on a silent client after about twice the lease (idle + 3 probes)."""
    idle = max(1, round(lease_seconds))
    interval = max(1, round(lease_seconds / 3))
    return f"SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; SET tcp_keepalives_count = 3"


def _reason(error: BaseException, url: str) -> str:
    fault = connection_fault(error, url)
    return str(fault) if fault is not None else f"{type(error).__name__}: {error}"
