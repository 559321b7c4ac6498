"""The bot's state directory read from outside, between runs of the crash soak (read only, never changed)."""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from bot.app import DATABASE_NAME

UNFINISHED_MESSAGES = "SELECT COUNT(*) FROM messages WHERE role = 'user' AND status IN ('pending', 'answering', 'delivering')"
# Notes not delivered yet, or whose user has not heard how they ended.
UNFINISHED_NOTES = "SELECT COUNT(*) FROM note_outbox WHERE status = 'pending' OR user_told = 0"


class StateQueries:
    """What the soak asks of the bot's database, whichever engine holds it (`_rows` reads it)."""

    def stored_texts(self) -> set[str]:
        """What users sent that the bot has stored (accepted), whatever became of it since."""
        return {row[0] for row in self._rows("SELECT content FROM messages WHERE role = 'user'")}

    def statuses(self) -> dict[str, str]:
        """Each stored user message's status, by its text."""
        return {row[0]: row[1] for row in self._rows("SELECT content, status FROM messages WHERE role = 'user'")}

    def unfinished(self) -> int:
        """Messages and notes whose lifecycle has not ended (0 when the bot has nothing left to do)."""
        return sum(row[0] for query in (UNFINISHED_MESSAGES, UNFINISHED_NOTES) for row in self._rows(query))

    def _rows(self, query: str) -> list[tuple]:
        raise NotImplementedError


class StateProbe(StateQueries):
    """The state directory's SQLite database."""

    def __init__(self, state_dir: Path) -> None:
        self._database = state_dir / DATABASE_NAME

    def _rows(self, query: str) -> list[tuple]:
        if not self._database.exists():
            return []
        try:
            with closing(sqlite3.connect(f"file:{self._database}?mode=ro", uri=True, timeout=5)) as connection:
                return connection.execute(query).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []  # killed before its migrations ran
            raise
