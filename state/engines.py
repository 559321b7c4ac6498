"""Which engine holds the state: SQLite under STATE_DIR by default, PostgreSQL when DATABASE_URL
is set. asyncpg is imported only then, so a bot without the `postgres` group starts as before."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from integrations.clock import Clock
from state.database import Database
from state.db import Database as SQLiteDatabase
from state.db import StorageFault


async def open_database(url: str | None, path: Path, clock: Clock) -> Database:
    """The state's database, migrated: PostgreSQL at `url` if given, else SQLite at `path`."""
    if url is None:
        return await SQLiteDatabase.open(path, clock)
    database: Database = await postgres().PostgresDatabase.open(url, clock)
    return database


def postgres() -> ModuleType:
    """state.postgres, or a StorageFault saying how to install what it needs."""
    try:
        return importlib.import_module("state.postgres")
    except ImportError as error:
        raise StorageFault(
            f"DATABASE_URL names a PostgreSQL database, but {error.name or 'asyncpg'} is not installed: "
            "pip install -c constraints.txt -e '.[postgres]' (make run installs it)"
        ) from error
