"""The Notion database's schema, kept in SQLite for a while so each note does not fetch it again."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from integrations.clock import Clock
from state.database import Database
from state.db import iso_timestamp


class SchemaCache:
    def __init__(self, db: Database, clock: Clock, ttl: float) -> None:
        self._db = db
        self._clock = clock
        self._ttl = timedelta(seconds=ttl)

    async def get(self, database_id: str) -> dict[str, Any] | None:
        """The schema stored for `database_id`, unless it is older than the TTL."""
        row = await self._db.fetchone(
            "SELECT schema, fetched_at FROM notion_schema_cache WHERE database_id = ?", (database_id,)
        )
        if row is None:
            return None
        fetched_at = datetime.fromisoformat(row["fetched_at"])
        if self._clock.now() - fetched_at >= self._ttl:
            return None
        schema: dict[str, Any] = json.loads(row["schema"])
        return schema

    async def put(self, database_id: str, schema: dict[str, Any]) -> None:
        await self._db.execute(
            "INSERT INTO notion_schema_cache (database_id, schema, fetched_at) VALUES (?, ?, ?)"
            " ON CONFLICT (database_id) DO UPDATE SET schema = excluded.schema, fetched_at = excluded.fetched_at",
            (database_id, json.dumps(schema), iso_timestamp(self._clock.now())),
        )

    async def forget(self, database_id: str) -> None:
        await self._db.execute("DELETE FROM notion_schema_cache WHERE database_id = ?", (database_id,))
