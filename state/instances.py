"""The instances sharing one database, as each reports itself: name, leader or standby, last seen.

Each process writes its own row (`report`) when it starts, each time it tries or renews the
leader lease, and when it stops; nobody writes another's row, except that a new leader marks the
rows that still say "leader" as stopped: their holder lost the lease, so it died or is exiting (a
leader that loses its lease exits; started again, it reports itself as a standby).
`listing` reads them all for /status and `switchboard status`, with how many chats each is
answering (`chats_answering`) and the queue they share (`queue_depth`).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from integrations.clock import Clock
from state.database import Database
from state.db import iso_timestamp

Role = Literal["standby", "leader", "stopped"]


@dataclass(frozen=True)
class InstanceRow:
    name: str
    role: Role
    pid: int
    host: str
    started_at: datetime
    last_seen: datetime
    leader_since: datetime | None


class InstanceRegistry:
    def __init__(self, database: Database, clock: Clock) -> None:
        self._db = database
        self._clock = clock

    async def report(
        self, name: str, role: Role, *, pid: int, host: str, started_at: datetime, leader_since: datetime | None = None
    ) -> None:
        """This instance's row, as of now."""
        await self._db.execute(
            "INSERT INTO instances (name, role, pid, host, started_at, last_seen, leader_since)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET role = excluded.role, pid = excluded.pid, host = excluded.host,"
            " started_at = excluded.started_at, last_seen = excluded.last_seen, leader_since = excluded.leader_since",
            (
                name, role, pid, host, iso_timestamp(started_at), iso_timestamp(self._clock.now()),
                iso_timestamp(leader_since) if leader_since is not None else None,
            ),
        )  # fmt: skip

    async def depose_others(self, name: str) -> None:
        """Rows of earlier leaders say stopped now: `name` holds the lease."""
        await self._db.execute(
            "UPDATE instances SET role = 'stopped', leader_since = NULL WHERE role = 'leader' AND name <> ?", (name,)
        )

    async def listing(self) -> list[InstanceRow]:
        """Every instance that ever reported, the leader first, then by name."""
        rows = await self._db.fetchall(
            "SELECT name, role, pid, host, started_at, last_seen, leader_since FROM instances"
            " ORDER BY CASE role WHEN 'leader' THEN 0 WHEN 'standby' THEN 1 ELSE 2 END, name"
        )
        return [
            InstanceRow(
                row["name"], row["role"], int(row["pid"]), row["host"], datetime.fromisoformat(row["started_at"]),
                datetime.fromisoformat(row["last_seen"]),
                datetime.fromisoformat(row["leader_since"]) if row["leader_since"] else None,
            )  # fmt: skip
            for row in rows
        ]

    async def chats_answering(self) -> dict[str, int]:
        """How many chats each instance is answering now (its live claims, state/chat_claims.py)."""
        rows = await self._db.fetchall(
            "SELECT instance, COUNT(*) AS chats FROM chat_claims WHERE until >= ? GROUP BY instance",
            (iso_timestamp(self._clock.now()),),
        )
        return {row["instance"]: int(row["chats"]) for row in rows}

    async def queue_depth(self) -> int:
        """User messages accepted and not answered yet (waiting, being answered, delivering)."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM messages WHERE role = 'user' AND status IN ('pending', 'answering', 'delivering')"
        )
        return int(row[0])
