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


async def test_the_leader_stores_its_state_one_round_late(state_db, clock):
    """A state is stored only once a whole round has passed since it was taken: whatever had come in
    before it has been handled (and stored) by then, so catching up from it loses nothing."""
    store = CatchUpStore(state_db, clock)
    client = leader_client(pts=100)
    keeping = asyncio.ensure_future(SharedCatchUp(store, clock, "bot-a").keep(client))

    async def stored(pts: int) -> None:
        while ((await store.load()) or {}).get("pts") != pts:
            await asyncio.sleep(0)

    try:
        await clock.advance(EVERY)  # takes the state at pts 100, stores nothing yet
        assert await store.load() is None
        client._message_box.map[ENTRY_ACCOUNT].pts = 150  # received more meanwhile
        await clock.advance(EVERY)
        await clock.run_until_complete(stored(100), poll=0.05)
        await clock.advance(EVERY)
        await clock.run_until_complete(stored(150), poll=0.05)
    finally:
        keeping.cancel()
