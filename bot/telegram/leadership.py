"""Leader or worker: with DATABASE_URL, only the holder of the leader lease receives from Telegram.

An instance tries the lease once at start (`try_lead`). The holder is the leader: it logs in to
receive updates and confirms the lease every `lease_seconds / 5`; the moment it cannot, `lost` is
set and the Telegram service disconnects at once and exits (bot/telegram/service.py), so two
instances never receive together. systemd (Restart=on-failure) starts it again, as a worker.
Every other instance is a worker: it answers the chats it holds (bot/chat_sharing.py) on a session
that receives nothing, reports itself (state/instances.py) and tries the lease every `try_every`
seconds (`lead_when_free`); once it holds it, it starts receiving on that session
(bot/telegram/receiving.py) and leads.

SQLite keeps one bot per state directory (state/lock.py): there is no lease, and `open_leadership`
gives None.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Awaitable, Callable

from bot.config import Settings
from bot.telegram.catch_up import SharedCatchUp
from integrations.clock import Clock, first_of
from state.catch_up import CatchUpStore
from state.db import StorageFault
from state.engines import postgres
from state.instances import InstanceRegistry, Role
from state.lease import LeaderLease

log = logging.getLogger(__name__)

# How often a standby tries the lease: a SIGKILLed leader's lock is free at once, so this sets the
# takeover time together with the login.
TRY_EVERY = 1.0


class Leadership:
    def __init__(
        self,
        lease: LeaderLease,
        registry: InstanceRegistry,
        clock: Clock,
        *,
        name: str,
        try_every: float = TRY_EVERY,
        catch_up: SharedCatchUp | None = None,
    ) -> None:
        self.lease = lease
        # Where Telegram's catch-up starts, handed from leader to leader (bot/telegram/catch_up.py).
        self.catch_up = catch_up
        self.registry = registry
        self.clock = clock
        self.name = name
        self.try_every = try_every
        self.lost = asyncio.Event()
        self.role: Role = "standby"
        self._started_at = clock.now()
        self._leader_since: datetime | None = None
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self._keeping: asyncio.Task[None] | None = None
        self.tries = 0  # of the lease, as a standby

    async def wait_to_lead(self, stop: asyncio.Event) -> bool:
        """Stand by until this instance holds the lease (True), or until `stop` is set (False)."""
        log.info("instance %s: standing by for the leader lease", self.name)
        while not stop.is_set():
            if await self.try_lead():
                return True
            await first_of(self.clock.sleep(self.try_every), stop.wait())
        return False

    async def try_lead(self) -> bool:
        """One try of the lease, without waiting: True if this instance leads now."""
        self.tries += 1
        if await self.lease.try_take():
            await self._become_leader()
            return True
        await self._report("standby")
        return False

    async def lead_when_free(self, stop: asyncio.Event, become: Callable[[], Awaitable[object]]) -> None:
        """Try the lease every `try_every` seconds until it is held, then `become` the receiver
        and keep the lease; or until `stop` is set. For an instance that answers meanwhile."""
        if await self.wait_to_lead(stop):
            await become()
            self.keep()

    def keep(self) -> None:
        """Start confirming the lease in the background; `lost` is set when that fails."""
        self._keeping = asyncio.ensure_future(self._keep())

    async def close(self) -> None:
        """Give the lease up (if held) and say this instance stopped."""
        if self._keeping is not None:
            self._keeping.cancel()
            await asyncio.gather(self._keeping, return_exceptions=True)
        await self.lease.release()
        self._leader_since = None
        await self._report("stopped")

    async def _become_leader(self) -> None:
        self._leader_since = self.clock.now()
        log.info("instance %s: took the leader lease; receiving from Telegram", self.name)
        await self._report("leader")
        try:
            await self.registry.depose_others(self.name)
        except StorageFault as error:
            log.warning("could not mark earlier leaders as stopped: %s", error)

    async def _keep(self) -> None:
        while True:
            await self.clock.sleep(self.lease.renew_every)
            if not await self.lease.renew():
                self.role = "standby"
                self._leader_since = None
                log.error("instance %s: no longer the leader; disconnecting from Telegram now", self.name)
                self.lost.set()
                return
            await self._report("leader")

    async def _report(self, role: Role) -> None:
        """This instance's row; a database that does not answer costs a log line, not the lease."""
        self.role = role
        try:
            await self.registry.report(
                self.name, role, pid=self._pid, host=self._host, started_at=self._started_at,
                leader_since=self._leader_since,
            )  # fmt: skip
        except StorageFault as error:
            log.warning("could not record instance %s as %s: %s", self.name, role, error)


async def open_leadership(settings: Settings, clock: Clock, stack: AsyncExitStack) -> Leadership | None:
    """The leadership of this instance when the state is in PostgreSQL, closed by `stack`; None with SQLite."""
    if settings.database_url is None:
        return None
    url = settings.database_url.reveal()
    # Its own connection for the instance rows (migrating first, so the table exists), the lease another.
    database = await postgres().PostgresDatabase.open(url, clock)
    stack.push_async_callback(database.close)
    lease = LeaderLease(url, clock, lease_seconds=settings.instance.lease_seconds)
    name = settings.instance.name
    catch_up = SharedCatchUp(CatchUpStore(database, clock), clock, name)
    leadership = Leadership(lease, InstanceRegistry(database, clock), clock, name=name, catch_up=catch_up)
    stack.push_async_callback(leadership.close)
    return leadership
