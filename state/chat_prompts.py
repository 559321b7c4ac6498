"""Each chat's choice of system prompt (/mode, /prompt), kept across restarts."""
from __future__ import annotations

from dataclasses import dataclass

from state.database import Database


@dataclass(frozen=True)
class ChosenPrompt:
    """A chat's choice: a mode by name, or its own prompt text (exactly one is set)."""

    mode: str | None
    custom: str | None


class ChatPrompts:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, chat_id: int) -> ChosenPrompt | None:
        """The chat's choice, or None: the operator's default prompt."""
        row = await self._db.fetchone("SELECT mode, prompt FROM chat_prompts WHERE chat_id = ?", (chat_id,))
        return None if row is None else ChosenPrompt(row["mode"], row["prompt"])

    async def choose_mode(self, chat_id: int, mode: str, *, by: int) -> None:
        await self._set(chat_id, mode, None, by)

    async def set_custom(self, chat_id: int, prompt: str, *, by: int) -> None:
        if not prompt.strip():
            raise ValueError("a prompt cannot be blank")
        await self._set(chat_id, None, prompt, by)

    async def clear(self, chat_id: int) -> None:
        """Back to the operator's default prompt."""
        await self._db.execute("DELETE FROM chat_prompts WHERE chat_id = ?", (chat_id,))

    async def _set(self, chat_id: int, mode: str | None, prompt: str | None, by: int) -> None:
        await self._db.execute(
            "INSERT INTO chat_prompts (chat_id, mode, prompt, changed_by, changed_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (chat_id) DO UPDATE SET mode = excluded.mode, prompt = excluded.prompt,"
            " changed_by = excluded.changed_by, changed_at = excluded.changed_at",
            (chat_id, mode, prompt, by, self._db.timestamp()),
        )
