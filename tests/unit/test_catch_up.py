"""Catch-up handed from leader to leader: the update state of one real Telethon client, stored in
the database, seeds another client's session so that its catch-up starts where the first was."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from telethon import TelegramClient, types
from telethon._updates.messagebox import ENTRY_ACCOUNT
from telethon._updates.session import ChannelState, Entity, EntityType, SessionState
from telethon.sessions import MemorySession, SQLiteSession

from bot.telegram.catch_up import EVERY, SharedCatchUp, update_state_of
from state.catch_up import CatchUpStore

CHANNEL, ACCESS_HASH = 1234567890, -987654321012345
WHEN = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def leader_client(pts: int) -> TelegramClient:
    """A client whose message box is where a leader's would be after receiving for a while."""
    client = TelegramClient(MemorySession(), api_id=1, api_hash="0" * 32, catch_up=True)
    client._message_box.load(
        SessionState(0, 0, False, pts, 7, int(WHEN.timestamp()), 3, None), [ChannelState(CHANNEL, 900)]
    )
    client._mb_entity_cache.put(Entity(EntityType.MEGAGROUP, CHANNEL, ACCESS_HASH))
    return client


async def test_a_new_leaders_session_starts_its_catch_up_where_the_last_leader_was(state_db, clock, tmp_path):
    store = CatchUpStore(state_db, clock)
    await store.save(update_state_of(leader_client(pts=4242)), "bot-a")
    standby = TelegramClient(SQLiteSession(str(tmp_path / "standby")), api_id=1, api_hash="0" * 32, catch_up=True)
    assert await SharedCatchUp(store, clock, "bot-b").seed(standby)
    # What Telethon's connect() reads from the session before it asks Telegram for the difference.
    states = dict(standby.session.get_update_states())
    assert (states[0].pts, states[0].qts, states[0].seq, states[0].date) == (4242, 7, 3, WHEN)
    assert states[CHANNEL].pts == 900
    assert standby.session.get_input_entity(CHANNEL) == types.InputPeerChannel(CHANNEL, ACCESS_HASH)


async def test_without_a_last_leader_nothing_is_seeded(state_db, clock, tmp_path):
    standby = TelegramClient(MemorySession(), api_id=1, api_hash="0" * 32)
    assert not await SharedCatchUp(CatchUpStore(state_db, clock), clock, "bot-b").seed(standby)
    assert list(standby.session.get_update_states()) == []


async def test_the_leader_stores_its_state_every_second_when_nothing_is_being_handled(state_db, clock):
    store = CatchUpStore(state_db, clock)
    client = leader_client(pts=100)
    keeping = asyncio.ensure_future(SharedCatchUp(store, clock, "bot-a").keep(client))
    try:
        await clock.advance(EVERY)
        await clock.run_until_complete(stored(store, 100), poll=0.05)
        client._message_box.map[ENTRY_ACCOUNT].pts = 150  # received (and handled) more meanwhile
        await clock.advance(EVERY)
        await clock.run_until_complete(stored(store, 150), poll=0.05)
    finally:
        keeping.cancel()


async def test_a_state_is_stored_only_once_the_updates_it_covers_were_handled(state_db, clock):
    """Telethon's message box moves on as an update arrives, before its handler has stored the
    message (a new leader's catch-up waits until the last run's messages are resumed; a failed
    store is tried again seconds later). Stored then, the state would make a leader killed meanwhile
    hand its successor a catch-up that starts past that message: it would never be answered."""
    store = CatchUpStore(state_db, clock)
    client = leader_client(pts=100)
    handled = asyncio.Event()
    handler = asyncio.ensure_future(handled.wait())  # the handler of the update that made it pts 100
    client._event_handler_tasks.add(handler)
    keeping = asyncio.ensure_future(SharedCatchUp(store, clock, "bot-a").keep(client))
    try:
        await clock.advance(EVERY)  # takes the state at pts 100 with that handler in flight
        client._message_box.map[ENTRY_ACCOUNT].pts = 150
        await clock.advance(5 * EVERY)
        assert await store.load() is None
        handled.set()
        await handler
        await clock.advance(EVERY)
        await clock.run_until_complete(stored(store, 100), poll=0.05)  # the state taken with it, not a newer one
        await clock.advance(EVERY)
        await clock.run_until_complete(stored(store, 150), poll=0.05)
    finally:
        keeping.cancel()


async def stored(store: CatchUpStore, pts: int) -> None:
    while ((await store.load()) or {}).get("pts") != pts:
        await asyncio.sleep(0)
