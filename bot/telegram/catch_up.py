"""Telethon's update state taken from a client and given to another: how a new leader catches up.

A Telethon client asks Telegram for the updates it missed (getDifference) from the update state
in its session: pts, qts, date and seq for the account, a pts per channel (supergroups), each
channel known by its access hash. A standby's own session has none of it (it never received), so
on its own it would start from now and never see what arrived while nobody led. Telethon writes
the state into the session file only now and then (on disconnect, about once a minute), so a
SIGKILLed leader's file is stale too. So the leader hands the state of its message box to
`SharedCatchUp.keep` every second, which stores it in PostgreSQL once every update it covers has
been handled, and the new leader `seed`s its session from it. The message box moves on as an
update arrives, before its handler runs (and stores the message): a handler still waiting (a new
leader's catch-up held until the last run's messages are resumed, a store tried again a few
seconds later) would be lost with a leader killed right after its state was stored. So a state
is stored only once the handler tasks in flight when it was taken (`_event_handler_tasks`) have
all finished (Telethon moves the box on and starts those tasks with no await in between, so a
state taken with none in flight is stored at once); what comes again is recognised by its id.

All of it goes through the few parts of a client `CatchingUp` names, which Telethon's client has
and so has the soak's socket client (bench/_soak_telegram_child.py), whose fake Telegram keeps the
account's pts as Telegram does: a new leader that starts from the wrong state misses messages there.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from typing import Any, Protocol

from telethon import types

from integrations.clock import Clock
from state.catch_up import CatchUpStore
from state.database import Database
from state.db import StorageFault

log = logging.getLogger(__name__)

EVERY = 1.0  # seconds between two snapshots of the leader's update state


class MessageBox(Protocol):
    """Where a client keeps the update state it has reached (Telethon's `MessageBox`)."""

    def is_empty(self) -> bool: ...

    def session_state(self) -> tuple[dict[str, Any], dict[int, int]]: ...


class UpdateStateSession(Protocol):
    """The part of a Telethon session a client reads its update state from when it connects."""

    def set_update_state(self, entity_id: int, state: types.updates.State) -> None: ...

    def process_entities(self, tlo: Any) -> None: ...


class CatchingUp(Protocol):
    """What the handover reads from a client and writes into it: Telethon's `TelegramClient` has
    these (private, but stable across 1.x), and the soak's socket client copies them."""

    session: UpdateStateSession
    _message_box: MessageBox
    _mb_entity_cache: Any  # .get(channel_id) -> an entity with .hash, or None
    _event_handler_tasks: set[asyncio.Task[Any]]  # one per update being handled


def update_state_of(client: CatchingUp) -> dict[str, Any] | None:
    """The client's update state as JSON-ready data; None before it has one."""
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


def seed(client: CatchingUp, state: dict[str, Any]) -> None:
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

    @classmethod
    def of_one_instance(cls, database: Database, clock: Clock, name: str) -> SharedCatchUp:
        """An instance on its own keeps its update state in its own database too: Telethon writes
        it into the session file only on disconnect and once a minute, so a process SIGKILLed in
        its first minute left none, and its restart would start from now (Telegram's getState)
        and never see what arrived while it was down."""
        return cls(CatchUpStore(database, clock), clock, name)

    async def lead(self, client: CatchingUp, stack: AsyncExitStack) -> None:
        """A new leader's client: seeded before it connects, then its state kept until `stack` closes."""
        await self.seed(client)
        keeping = asyncio.ensure_future(self.keep(client))
        stack.callback(keeping.cancel)

    async def load(self) -> dict[str, Any] | None:
        """The last leader's update state, for a client already connected (bot/telegram/receiving.py)."""
        try:
            return await self._store.load()
        except StorageFault as error:
            log.warning("could not read where the last leader's Telegram updates stopped: %s", error)
            return None

    async def seed(self, client: CatchingUp) -> bool:
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

    async def keep(self, client: CatchingUp) -> None:
        """Every EVERY seconds until cancelled: take the client's state with the handler tasks in
        flight then, and store it once they have all finished (at once when there were none)."""
        taken: tuple[dict[str, Any], set[asyncio.Task[Any]]] | None = None
        saved: dict[str, Any] | None = None
        while True:
            await self._clock.sleep(EVERY)
            if taken is None and (now := update_state_of(client)) is not None:
                taken = (now, set(client._event_handler_tasks))
            if taken is not None and all(task.done() for task in taken[1]):
                state, taken = taken[0], None
                if state != saved:
                    try:
                        await self._store.save(state, self._name)
                        saved = state
                    except StorageFault as error:
                        log.warning("could not store the Telegram update state: %s", error)
