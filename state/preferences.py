"""Per-user settings that outlive restarts; for now, which model a user chose with /model."""
from __future__ import annotations

from state.database import Database


class UserPreferences:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def model_for(self, user_id: int) -> str | None:
        """The model this user chose, or None to use the configured default."""
        row = await self._db.fetchone("SELECT model FROM user_preferences WHERE user_id = ?", (user_id,))
        return None if row is None else row["model"]

    async def set_model(self, user_id: int, model: str | None) -> None:
        """Remember the user's model; None forgets it, so the default applies again."""
        if model is None:
            await self._db.execute("DELETE FROM user_preferences WHERE user_id = ?", (user_id,))
            return
        if not model.strip():
            raise ValueError("a model name cannot be blank")
        await self._db.execute(
            "INSERT INTO user_preferences (user_id, model, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET model = excluded.model, updated_at = excluded.updated_at",
            (user_id, model.strip(), self._db.timestamp()),
        )
