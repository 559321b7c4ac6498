"""SQLite's WAL checkpoints, run on a thread of their own instead of inside a commit on the loop.

In WAL mode every commit appends pages to the -wal file, and SQLite copies them back into the
database file (a checkpoint) once the WAL holds 1,000 pages, inside whichever commit crossed
that line: 4-7 ms with the event loop stopped, every ~125 cache puts or ~110 answers
(BENCHMARKS.md). Here the bot's own connection never checkpoints (`wal_autocheckpoint=0`);
every `CHECK_EVERY` statements the WAL's size is looked at, and once it holds `PAGES` pages a
PASSIVE checkpoint runs on a second connection in a worker thread (sqlite3 lets go of the GIL
while it copies). PASSIVE never waits for the writer, so the loop's commits go on meanwhile; the
next commit after a complete checkpoint starts the WAL from its beginning again.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

logger = logging.getLogger(__name__)

PAGES = 1000  # SQLite's own autocheckpoint threshold
CHECK_EVERY = 64  # statements between two looks at the WAL's size (one stat each)


class WalCheckpointer:
    def __init__(self, path: Path, page_size: int) -> None:
        self._path = path
        self._wal = Path(f"{path}-wal")
        self._threshold = PAGES * page_size
        self._statements = 0
        self._running: asyncio.Future[None] | None = None
        self._connection: sqlite3.Connection | None = None  # used by one worker thread at a time
        self.completed = 0  # checkpoints run to their end, for tests and the curious

    def after_statement(self) -> None:
        """Called after each statement on the bot's connection: starts a checkpoint when due."""
        self._statements += 1
        if self._statements % CHECK_EVERY or (self._running is not None and not self._running.done()):
            return
        try:
            size = self._wal.stat().st_size
        except OSError:
            return  # no WAL (yet): nothing to copy
        if size >= self._threshold:
            self._running = asyncio.get_running_loop().run_in_executor(None, self._checkpoint)

    async def idle(self) -> None:
        """Until no checkpoint is under way."""
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)

    async def aclose(self) -> None:
        """Wait for a checkpoint under way, then close its connection."""
        await self.idle()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _checkpoint(self) -> None:
        try:
            if self._connection is None:
                self._connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                self._connection.execute("PRAGMA busy_timeout=5000")
            _, in_wal, copied = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if copied == in_wal:
                self.completed += 1
        except sqlite3.Error as error:
            # The WAL keeps growing until the next try succeeds; nothing is lost meanwhile.
            logger.warning("WAL checkpoint of %s failed: %s", self._path.name, error)
