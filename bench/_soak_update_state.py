"""The soak's socket client's update state, kept as Telethon keeps it: a message box advanced by
each update applied (Telegram's pts rule), and the part of a session that holds it between runs.

bench/_soak_telegram_child.py uses them as Telethon's client uses `_message_box`, `session` and
`_mb_entity_cache`, so bot/telegram/catch_up.py reads and seeds them unchanged.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from telethon import types


class SocketSession:
    """The update state part of a Telethon session, in a JSON file (or in memory without a path).

    Like Telethon's SQLite session, what is set reaches the file only on `save()`: a process killed
    before that leaves the file as it was."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._states: dict[int, types.updates.State] = {}
        if path is not None and path.exists():
            for entity_id, (pts, qts, date, seq) in json.loads(path.read_text()).items():
                self._states[int(entity_id)] = types.updates.State(
                    pts, qts, datetime.fromtimestamp(date, tz=timezone.utc), seq, unread_count=0
                )

    def set_update_state(self, entity_id: int, state: types.updates.State) -> None:
        self._states[entity_id] = state

    def get_update_states(self) -> list[tuple[int, types.updates.State]]:
        return list(self._states.items())

    def process_entities(self, tlo: Any) -> None:
        """Entities (channels' access hashes) are of no use here: every chat is addressed by its id."""

    def save(self) -> None:
        if self._path is not None:
            states = {str(i): [s.pts, s.qts, int(s.date.timestamp()), s.seq] for i, s in self._states.items()}
            self._path.write_text(json.dumps(states))


class SocketMessageBox:
    """The account's update state as Telethon's MessageBox keeps it (telethon/_updates/messagebox.py):
    the pts of the last update applied and the date of the state; no channels (the soak's Telegram
    keeps every chat in the account's sequence)."""

    def __init__(self) -> None:
        self.pts: int | None = None
        self.date = 0

    def load(self, state: Any, channel_states: Any = ()) -> None:
        """From a session's `types.updates.State` (its date a datetime) or Telethon's `SessionState`
        (its date a timestamp), as `MessageBox.load` takes it."""
        date = state.date
        self.pts, self.date = state.pts, int(date.timestamp() if isinstance(date, datetime) else date)

    def is_empty(self) -> bool:
        return self.pts is None

    def session_state(self) -> tuple[dict[str, Any], dict[int, int]]:
        """What Telethon's `MessageBox.session_state()` gives: the account's state and each channel's pts."""
        date = datetime.fromtimestamp(self.date, tz=timezone.utc)
        return {"pts": self.pts or 0, "qts": 0, "date": date, "seq": 0}, {}

    def verdict(self, pts: int, pts_count: int) -> str:
        """Telegram's rule for an update: "apply" when local_pts + pts_count == pts, "skip" when
        greater (already applied), "gap" when smaller (missed some: get the difference)."""
        assert self.pts is not None
        expected = self.pts + pts_count
        return "apply" if expected == pts else ("skip" if expected > pts else "gap")


class NoEntities:
    """Telethon's entity cache, empty: channels' access hashes do not exist here."""

    def get(self, entity_id: int) -> None:
        return None

    def put(self, entity: Any) -> None:
        """Nothing to keep."""
