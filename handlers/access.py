"""Who may talk to the bot. Decided before any upstream call is made."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AccessPolicy:
    admin_ids: frozenset[int] = frozenset()
    allowed_user_ids: frozenset[int] = frozenset()
    allow_everyone: bool = False
    # Runtime grants and revocations (admin /allow, /deny), loaded from and saved to the database.
    granted: set[int] = field(default_factory=set)
    revoked: set[int] = field(default_factory=set)

    def is_admin(self, user_id: int) -> bool:
        return user_id in self.admin_ids

    def is_allowed(self, user_id: int) -> bool:
        if self.is_admin(user_id):
            return True
        if user_id in self.revoked:
            return False
        return self.allow_everyone or user_id in self.allowed_user_ids or user_id in self.granted
