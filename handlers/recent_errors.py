"""The last errors the bot met, redacted as they arrive, for /status and `switchboard status`."""
from __future__ import annotations

from collections import deque

from integrations.clock import Clock
from integrations.errors import UpstreamError
from integrations.redaction import Redactor
from state.db import iso_timestamp
from state.usage import ErrorEntry, ErrorJournal

ERROR_TEXT_LIMIT = 300


class RecentErrors:
    """The last upstream errors, redacted when they arrive, for /status.

    Fed by `add` (the composition root) or by the logging handler the composition root installs
    (`bot.recent_errors_handler`). `save` copies the buffer to the database so the shell's
    `switchboard status` sees it with the bot down; /status saves on every run and the
    composition root saves at shutdown.
    """

    def __init__(
        self,
        clock: Clock,
        redactor: Redactor | None = None,
        *,
        capacity: int = 20,
        journal: ErrorJournal | None = None,
    ) -> None:
        self._clock = clock
        self._redactor = redactor or Redactor()
        self._entries: deque[ErrorEntry] = deque(maxlen=capacity)
        self._journal = journal
        self._unsaved = False

    def add(self, source: str, message: str) -> None:
        text = self._redactor(" ".join(message.split()))[:ERROR_TEXT_LIMIT]
        self._entries.append(ErrorEntry(iso_timestamp(self._clock.now()), self._redactor(source), text))
        self._unsaved = True

    def add_error(self, error: BaseException, source: str = "") -> None:
        self.add(source or getattr(error, "upstream", "") or "bot", describe_error(error))

    def entries(self) -> list[ErrorEntry]:
        return list(self._entries)

    async def save(self) -> None:
        if self._journal is None or not self._unsaved:
            return
        self._unsaved = False
        await self._journal.replace(self.entries())


def describe_error(error: BaseException) -> str:
    """An error as the project states it; foreign exceptions by type only (their text may hold secrets)."""
    if isinstance(error, UpstreamError):
        return str(error)
    if isinstance(error, TimeoutError):
        return str(error) or "timed out"
    return f"failed ({type(error).__name__})"
