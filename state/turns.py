"""One connection shared by many asyncio tasks: a transaction's task owns it, every other waits.

A task inside `owning()` holds the connection until its block ends; any other task's statement
(`turn()`), transactional or not, waits until then, so nothing runs inside somebody else's
transaction. Statements of the owning task itself run at once. Transactions do not nest.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator


class ConnectionTurns:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    def held_here(self) -> bool:
        """Is the calling task inside its own transaction?"""
        return self._owner is not None and self._owner is asyncio.current_task()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One statement's turn (immediate inside the caller's own transaction)."""
        if self.held_here():
            yield
            return
        async with self._lock:
            yield

    @asynccontextmanager
    async def owning(self) -> AsyncIterator[None]:
        """The connection for the calling task alone, until the block ends."""
        if self.held_here():
            raise RuntimeError("transactions do not nest: this task is already inside one")
        async with self._lock:
            self._owner = asyncio.current_task()
            try:
                yield
            finally:
                self._owner = None
