"""Where Telegram's catch-up starts, shared by the instances: the leader's update state, one row.

The leader writes it every second (`save`); a standby that takes over reads it (`load`) and puts
it into its own Telegram session before logging in, so Telegram hands it what arrived since.
What the state holds is the Telegram layer's business (bot/telegram/catch_up.py): here it is a
JSON object and who wrote it when.
"""
from __future__ import annotations

import json
from typing import Any

from integrations.clock import Clock
from state.database import Database
from state.db import iso_timestamp


class CatchUpStore:
    def __init__(self, database: Database, clock: Clock) -> None:
        self._db = database
        self._clock = clock

    async def save(self, state: dict[str, Any], written_by: str) -> None:
        await self._db.execute(
            "INSERT INTO telegram_catch_up (id, state, written_by, updated_at) VALUES (1, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state, written_by = excluded.written_by,"
            " updated_at = excluded.updated_at",
            (json.dumps(state, sort_keys=True), written_by, iso_timestamp(self._clock.now())),
        )

    async def load(self) -> dict[str, Any] | None:
        row = await self._db.fetchone("SELECT state FROM telegram_catch_up WHERE id = 1")
        if row is None:
            return None
        state: dict[str, Any] = json.loads(row["state"])
        return state
