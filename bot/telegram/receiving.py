"""A worker becomes the receiver: the Telegram session it answers through starts receiving updates.

A worker (several instances answering at once, bot/chat_sharing.py) logs in with Telethon's
`receive_updates=False`: Telegram sends no updates to that session, while sending, editing,
deleting, drafts, typing and fetching messages by id all work. When the worker takes the leader
lease, its message box is put where the last leader's updates stopped (the shared update state,
bot/telegram/catch_up.py), Telegram is told to send updates to this session (Telethon's
`set_receive_updates(True)`, which makes a request for it), and what arrived while nobody received
is fetched at once (`catch_up`): the session, its replies in progress and the app stay as they are.
"""
from __future__ import annotations

import logging
from typing import Any

from bot.telegram.catch_up import SharedCatchUp

log = logging.getLogger(__name__)


def seed_connected(client: Any, state: dict[str, Any]) -> None:
    """Put `state` into a connected client's message box, as Telethon loads a session's update
    state when it connects (its next getDifference starts there)."""
    from telethon._updates import ChannelState, Entity, EntityType, SessionState

    channels = [ChannelState(int(channel_id), pts) for channel_id, (pts, _hash) in state["channels"].items()]
    client._message_box.load(SessionState(0, 0, False, state["pts"], state["qts"], state["date"], state["seq"], None), channels)
    for channel_id, (_pts, access_hash) in state["channels"].items():
        if access_hash is not None:
            client._mb_entity_cache.put(Entity(EntityType.CHANNEL, int(channel_id), access_hash))


async def receive_from_now(client: Any, shared: SharedCatchUp | None) -> None:
    """Start receiving on a connected worker's client, catching up from the last leader's state."""
    state = await shared.load() if shared is not None else None
    if state is not None and getattr(client, "_message_box", None) is not None:
        seed_connected(client, state)
        log.info("catching up from the last leader's update state (pts %s)", state["pts"])
    await client.set_receive_updates(True)
    await client.catch_up()
