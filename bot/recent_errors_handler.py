"""A logging handler that copies the bot's own warnings and errors into `RecentErrors` for /status."""
from __future__ import annotations

import logging
from typing import Sequence

from handlers.recent_errors import RecentErrors, describe_error


class RecentErrorsHandler(logging.Handler):
    """Records warnings and errors of the bot's own loggers (`prefixes`).

    Deprecation signals (`exclude`) are left out: /status lists them in their own section.
    """

    def __init__(
        self,
        errors: RecentErrors,
        level: int = logging.WARNING,
        prefixes: Sequence[str] = ("integrations", "handlers", "bot", "switchboard"),
        exclude: Sequence[str] = ("switchboard.deprecation",),
    ) -> None:
        super().__init__(level)
        self._errors = errors
        self._prefixes = tuple(prefixes)
        self._exclude = tuple(exclude)

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(self._prefixes) or record.name.startswith(self._exclude):
            return
        try:
            # Structured records (bot.logs.UpstreamLog) carry their facts in `fields`.
            fields = dict(getattr(record, "fields", None) or {})
            source = str(fields.pop("upstream", "") or record.name)
            text = record.getMessage()
            if fields:
                text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({describe_error(record.exc_info[1])})"
            self._errors.add(source, text)
        except Exception:
            self.handleError(record)
