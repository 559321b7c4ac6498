"""What admins changed at runtime (/allow, /deny, /budget), kept in SQLite and loaded at start.

Reads happen before every metered message, so the settings are held in memory after `load`;
every change is written to the database first and to memory after, so memory never claims
something the database lost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from state.db import Database

ALLOWED = "allowed"
DENIED = "denied"


@dataclass(frozen=True)
class BudgetOverride:
    """A per-user daily budget set by /budget; `daily_usd` None means no limit."""

    daily_usd: float | None


class AccessGrants(Protocol):
    """The runtime grant and revocation sets of the access policy (handlers.access.AccessPolicy)."""

    granted: set[int]
    revoked: set[int]


@dataclass
class AdminSettings:
    db: Database
    # The access policy's own sets: one truth, changed here after each write.
    access: AccessGrants
    budgets: dict[int, BudgetOverride] = field(default_factory=dict)

    @classmethod
    async def load(cls, db: Database, access: AccessGrants) -> AdminSettings:
        """Read the persisted settings and put the grants and revocations into `access`."""
        settings = cls(db, access)
        access.granted.clear()
        access.revoked.clear()
        for row in await db.fetchall("SELECT user_id, access FROM user_access"):
            (access.granted if row["access"] == ALLOWED else access.revoked).add(row["user_id"])
        for row in await db.fetchall("SELECT user_id, daily_usd FROM user_budgets"):
            settings.budgets[row["user_id"]] = BudgetOverride(row["daily_usd"])
        return settings

    @property
    def granted(self) -> set[int]:
        return self.access.granted

    @property
    def revoked(self) -> set[int]:
        return self.access.revoked

    async def allow(self, user_id: int, *, by: int) -> None:
        await self._set_access(user_id, ALLOWED, by)
        self.access.revoked.discard(user_id)
        self.access.granted.add(user_id)

    async def deny(self, user_id: int, *, by: int) -> None:
        await self._set_access(user_id, DENIED, by)
        self.access.granted.discard(user_id)
        self.access.revoked.add(user_id)

    def budget_override(self, user_id: int) -> BudgetOverride | None:
        return self.budgets.get(user_id)

    async def set_budget(self, user_id: int, daily_usd: float | None, *, by: int) -> None:
        """Set the user's own daily budget (None: unlimited)."""
        if daily_usd is not None and not (math.isfinite(daily_usd) and daily_usd >= 0):
            raise ValueError("a budget is a non-negative amount of US dollars")
        await self.db.execute(
            "INSERT INTO user_budgets (user_id, daily_usd, changed_by, changed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET daily_usd = excluded.daily_usd,"
            " changed_by = excluded.changed_by, changed_at = excluded.changed_at",
            (user_id, daily_usd, by, self.db.timestamp()),
        )
        self.budgets[user_id] = BudgetOverride(daily_usd)

    async def clear_budget(self, user_id: int) -> None:
        """Back to the configured default budget."""
        await self.db.execute("DELETE FROM user_budgets WHERE user_id = ?", (user_id,))
        self.budgets.pop(user_id, None)

    async def _set_access(self, user_id: int, access: str, by: int) -> None:
        await self.db.execute(
            "INSERT INTO user_access (user_id, access, changed_by, changed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET access = excluded.access,"
            " changed_by = excluded.changed_by, changed_at = excluded.changed_at",
            (user_id, access, by, self.db.timestamp()),
        )
