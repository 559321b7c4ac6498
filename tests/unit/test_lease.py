"""The leader lease on a real PostgreSQL (tests/pg.py): one holder at a time, free again the moment
the holder's session ends, and a holder that cannot confirm it within the lease counts itself out."""
from __future__ import annotations

import asyncio

import pytest

from bot.telegram.leadership import Leadership
from integrations.clock import ManualClock
from state.instances import InstanceRegistry
from state.lease import LeaderLease
from state.postgres import connect

LEASE = 10.0
# Real time the server gets to answer before the manual clock jumps to its next deadline.
POLL = 0.2


@pytest.fixture
async def leases(postgres_backend, clock):
    """Make leases on the test cluster; every one is released afterwards."""
    made: list[LeaderLease] = []

    def make(lease_seconds: float = LEASE) -> LeaderLease:
        made.append(LeaderLease(postgres_backend.url, clock, lease_seconds=lease_seconds))
        return made[-1]

    yield make
    for lease in made:
        await lease.release()


async def end_session(url: str, pid: int | None) -> None:
    """What the server does when a holder's socket closes (its process was SIGKILLed): the session
    ends, and with it the lock. pg_terminate_backend with a timeout waits until it has."""
    assert pid is not None
    admin = await connect(url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await admin.close()


async def test_of_two_contenders_exactly_one_takes_the_lease(leases):
    first, second = leases(), leases()
    assert await first.try_take() is True
    assert await second.try_take() is False
    assert (first.held, second.held) == (True, False)
    assert await first.renew() is True


async def test_the_lease_is_free_for_another_as_soon_as_the_holders_session_ends(leases, postgres_backend):
    holder, standby = leases(), leases()
    assert await holder.try_take()
    assert not await standby.try_take()
    await end_session(postgres_backend.url, holder.session)
    assert await standby.try_take(), "taken at the very next try, no expiry to wait out"
    assert await holder.renew() is False and not holder.held
    assert await holder.try_take() is False, "the old holder cannot take it back while the new one holds it"


async def test_a_released_lease_is_taken_by_the_next_try(leases):
    holder, standby = leases(), leases()
    assert await holder.try_take()
    await holder.release()
    assert await standby.try_take()


async def test_a_holder_that_has_not_confirmed_its_lease_for_the_whole_lease_steps_down(leases, clock):
    holder = leases()
    assert await holder.try_take()
    await clock.advance(LEASE / 2)
    assert await holder.renew() is True, "confirmed within the lease"
    await clock.advance(LEASE)  # say the event loop was stuck, or every ping timed out
    assert await holder.renew() is False
    assert not holder.held
    assert holder.session is None, "its session is ended, so the server frees the lock too"


async def test_an_unreachable_server_is_no_lease_and_says_so(clock, caplog):
    lease = LeaderLease("postgresql://switchboard:pw@127.0.0.1:1/switchboard", clock, lease_seconds=LEASE)
    assert await lease.try_take() is False
    assert "cannot reach PostgreSQL at postgresql://switchboard@127.0.0.1:1/switchboard" in caplog.text
    assert "pw@" not in caplog.text


async def leadership(postgres_backend, clock: ManualClock, leases, name: str) -> Leadership:
    database = await postgres_backend.open(clock)
    return Leadership(leases(), InstanceRegistry(database, clock), clock, name=name)


async def test_a_standby_takes_over_within_a_second_of_the_leaders_session_ending(postgres_backend, clock, leases):
    a = await leadership(postgres_backend, clock, leases, "bot-a")
    b = await leadership(postgres_backend, clock, leases, "bot-b")
    stop = asyncio.Event()
    assert await a.wait_to_lead(stop)
    a.keep()
    waiting = asyncio.ensure_future(b.wait_to_lead(stop))
    await clock.run_until(lambda: b.tries >= 3, poll=POLL)
    assert not waiting.done() and b.role == "standby"
    rows = {row.name: row.role for row in await b.registry.listing()}
    assert rows == {"bot-a": "leader", "bot-b": "standby"}

    await end_session(postgres_backend.url, a.lease.session)
    killed_at = clock.monotonic()
    await clock.run_until_complete(waiting, poll=POLL)
    assert waiting.result() is True
    assert clock.monotonic() - killed_at <= b.try_every
    assert [(row.name, row.role) for row in await b.registry.listing()] == [("bot-b", "leader"), ("bot-a", "stopped")]
    await clock.run_until(a.lost.is_set, poll=POLL, limit=a.lease.renew_every)
    assert a.lost.is_set(), "the old leader learns it lost the lease at its next confirmation"
    await a.close()
    await b.close()


async def test_a_stop_while_standing_by_ends_the_wait(postgres_backend, clock, leases):
    a = await leadership(postgres_backend, clock, leases, "bot-a")
    b = await leadership(postgres_backend, clock, leases, "bot-b")
    stop = asyncio.Event()
    assert await a.wait_to_lead(stop)
    waiting = asyncio.ensure_future(b.wait_to_lead(stop))
    await clock.run_until(lambda: b.tries >= 2, poll=POLL)
    stop.set()
    assert await clock.run_until_complete(waiting, poll=POLL) is False
    await b.close()
    assert {row.name: row.role for row in await a.registry.listing()}["bot-b"] == "stopped"
    await a.close()
