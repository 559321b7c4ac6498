"""The two engines the state runs on, for tests that must pass on both (`state_backend` fixture).

`open()` gives a fresh `Database` on the same storage each time it is called, so a test can
"restart" by opening again: SQLite on one file under the test's tmp_path, PostgreSQL on the test
cluster's shared database, emptied (tables truncated, ids restarted) before its first open.
Given its own `migrations`, a PostgreSQL backend uses a new empty database instead.
"""
from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

from integrations.clock import Clock
from state.database import Database
from state.db import Database as SQLiteDatabase
from state.db import bundled_migrations
from state.postgres import PostgresDatabase, bundled_postgres_migrations, connect
from tests.pg import PostgresCluster

_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"


class StateBackend(Protocol):
    name: str

    async def open(self, clock: Clock, *, migrations: Traversable | None = None) -> Database: ...

    def migrations(self) -> Traversable:
        """This engine's bundled migrations."""
        ...


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self, clock: Clock, *, migrations: Traversable | None = None) -> Database:
        return await SQLiteDatabase.open(self.path, clock, migrations=migrations)

    def migrations(self) -> Traversable:
        return bundled_migrations()


class PostgresBackend:
    name = "postgresql"

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self.url = cluster.url()
        self._own_url: str | None = None
        self._emptied = False

    async def open(self, clock: Clock, *, migrations: Traversable | None = None) -> Database:
        if not self._emptied:
            self._emptied = True
            await self.empty()
        if migrations is not None and self._own_url is None:
            self._own_url = self.cluster.url(self.cluster.create_database())
        # Once a test has migrated a database of its own, reopening means that one.
        database = await PostgresDatabase.open(self._own_url or self.url, clock, migrations=migrations)
        if self._own_url is None and self.cluster.migrated_tables is None:
            self.cluster.migrated_tables = frozenset(await self._tables(database))
        return database

    def migrations(self) -> Traversable:
        return bundled_postgres_migrations()

    async def empty(self) -> None:
        """Every table of the shared database emptied, as if just migrated."""
        conn = await connect(self.url)
        try:
            tables = set(await self._tables(conn))
            ours = self.cluster.migrated_tables or frozenset()
            if tables - ours:  # made by a test itself
                await conn.execute(f"DROP TABLE {', '.join(sorted(tables - ours))} CASCADE")
            if tables & ours - {"schema_version"}:
                await conn.execute(f"TRUNCATE {', '.join(sorted(tables & ours - {'schema_version'}))} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    @staticmethod
    async def _tables(source: Any) -> list[str]:
        rows = await source.fetchall(_TABLES) if hasattr(source, "fetchall") else await source.fetch(_TABLES)
        return [row["tablename"] for row in rows]
