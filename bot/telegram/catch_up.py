"""Telethon's update state taken from a client and given to another: how a new leader catches up.

A Telethon client asks Telegram for the updates it missed (getDifference) from the update state
in its session: pts, qts, date and seq for the account, a pts per channel (supergroups), each
channel known by its access hash. A standby's own session has none of it (it never received), so
on its own it would start from now and never see what arrived while nobody led. Telethon writes
the state into the session file only now and then (on disconnect, about once a minute), so a
SIGKILLed leader's file is stale too. So the leader hands the state of its message box to
`SharedCatchUp.keep` every second, which stores it in PostgreSQL one round late (whatever came
in before it was handled and stored by then, so catching up from there loses nothing; what
comes again is recognised by its message id), and the new leader `seed`s its session from it.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from telethon import types

from integrations.clock import Clock
from state.catch_up import CatchUpStore
from state.db import StorageFault

log = logging.getLogger(__name__)

EVERY = 1.0  # seconds between two snapshots of the leader's update state


def update_state_of(client: Any) -> dict[str, Any] | None:
    """The client's update state as JSON-ready data; None before it has one (or for a client that
    is not Telethon's, such as the soak's socket client)."""
    box = getattr(client, "_message_box", None)
    if box is None or box.is_empty():
        return None
    account, channels = box.session_state()
    cache = client._mb_entity_cache
    return {
        "pts": account["pts"], "qts": account["qts"], "date": int(account["date"].timestamp()), "seq": account["seq"],
        "channels": {
            str(channel_id): [pts, entity.hash if (entity := cache.get(channel_id)) is not None else None]
            for channel_id, pts in channels.items()
        },
    }  # fmt: skip


def seed(client: Any, state: dict[str, Any]) -> None:
    """Put `state` into the client's session, before it connects: its catch-up starts there."""
    session = client.session
    date = datetime.fromtimestamp(state["date"], tz=timezone.utc)
    session.set_update_state(0, types.updates.State(state["pts"], state["qts"], date, state["seq"], unread_count=0))
    known = []
    for channel_id, (pts, access_hash) in state["channels"].items():
        session.set_update_state(int(channel_id), types.updates.State(pts, 0, date, 0, unread_count=0))
        if access_hash is not None:
            known.append(types.InputPeerChannel(int(channel_id), access_hash))
    if known:
        session.process_entities(types.contacts.ResolvedPeer(None, known, []))


class SharedCatchUp:
    """The update state in PostgreSQL: kept fresh by the leader, read by the next one."""

    def __init__(self, store: CatchUpStore, clock: Clock, name: str) -> None:
        self._store = store
        self._clock = clock
        self._name = name

    async def load(self) -> dict[str, Any] | None:
        """The last leader's update state, for a client already connected (bot/telegram/receiving.py)."""
        try:
            return await self._store.load()
        except StorageFault as error:
            log.warning("could not read where the last leader's Telegram updates stopped: %s", error)
            return None

    async def seed(self, client: Any) -> bool:
        """Seed the client's session from the last leader's state; False when there is none yet."""
        try:
            state = await self._store.load()
        except StorageFault as error:
            log.warning("could not read where the last leader's Telegram updates stopped: %s", error)
            return False
        if state is None or getattr(client, "session", None) is None:
            return False
        seed(client, state)
        log.info("catching up from the last leader's update state (pts %s)", state["pts"])
        return True

    async def keep(self, client: Any) -> None:
        """Store the client's update state every EVERY seconds, one round late, until cancelled."""
        previous: dict[str, Any] | None = None
        saved: dict[str, Any] | None = None
        while True:
            await self._clock.sleep(EVERY)
            if previous is not None and previous != saved:
                try:
                    await self._store.save(previous, self._name)
                    saved = previous
                except StorageFault as error:
                    log.warning("could not store the Telegram update state: %s", error)
            previous = update_state_of(client)
