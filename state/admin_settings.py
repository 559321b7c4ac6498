"""What admins changed at runtime (/allow, /deny, /budget), kept in SQLite and loaded at start.

Reads happen before every metered message, so the settings are held in memory after `load`;
every change is written to the database first and to memory after, so memory never claims
something the database lost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from state.database import Database
from state.periods import Period

ALLOWED = "allowed"
DENIED = "denied"


@dataclass(frozen=True)
class BudgetOverride:
    """A user's own budget for one period, set by /budget; `usd` None means no limit."""

    usd: float | None


class AccessGrants(Protocol):
    """The runtime grant and revocation sets of the access policy (handlers.access.AccessPolicy)."""

    granted: set[int]
    revoked: set[int]


@dataclass
class AdminSettings:
    db: Database
    # The access policy's own sets: one truth, changed here after each write.
    access: AccessGrants
    # Each user's own budgets by period; a period left out follows its default.
    budgets: dict[int, dict[Period, BudgetOverride]] = field(default_factory=dict)

    @classmethod
    async def load(cls, db: Database, access: AccessGrants) -> AdminSettings:
        """Read the persisted settings and put the grants and revocations into `access`."""
        settings = cls(db, access)
        access.granted.clear()
        access.revoked.clear()
        for row in await db.fetchall("SELECT user_id, access FROM user_access"):
            (access.granted if row["access"] == ALLOWED else access.revoked).add(row["user_id"])
        for row in await db.fetchall("SELECT user_id, period, usd FROM user_budgets"):
            settings.budgets.setdefault(row["user_id"], {})[row["period"]] = BudgetOverride(row["usd"])
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

    def budget_override(self, user_id: int, period: Period = "day") -> BudgetOverride | None:
        return self.budgets.get(user_id, {}).get(period)

    async def set_budget(self, user_id: int, usd: float | None, *, period: Period = "day", by: int) -> None:
        """Set the user's own budget for `period` (None: unlimited)."""
        if usd is not None and not (math.isfinite(usd) and usd >= 0):
            raise ValueError("a budget is a non-negative amount of US dollars")
        await self.db.execute(
            "INSERT INTO user_budgets (user_id, period, usd, changed_by, changed_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, period) DO UPDATE SET usd = excluded.usd,"
            " changed_by = excluded.changed_by, changed_at = excluded.changed_at",
            (user_id, period, usd, by, self.db.timestamp()),
        )
        self.budgets.setdefault(user_id, {})[period] = BudgetOverride(usd)

    async def clear_budget(self, user_id: int, period: Period = "day") -> None:
        """Back to the configured default budget for `period`."""
        await self.db.execute("DELETE FROM user_budgets WHERE user_id = ? AND period = ?", (user_id, period))
        own = self.budgets.get(user_id, {})
        own.pop(period, None)
        if not own:
            self.budgets.pop(user_id, None)

    async def _set_access(self, user_id: int, access: str, by: int) -> None:
        await self.db.execute(
            "INSERT INTO user_access (user_id, access, changed_by, changed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET access = excluded.access,"
            " changed_by = excluded.changed_by, changed_at = excluded.changed_at",
            (user_id, access, by, self.db.timestamp()),
        )
