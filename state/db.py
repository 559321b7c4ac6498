"""The bot's one SQLite connection: private files, WAL, numbered migrations, serialised transactions.

Migrations are the files `state/migrations/NNNN_name.sql`, numbered 0001, 0002, ... without gaps.
Each runs in its own transaction together with the bump of `PRAGMA user_version`, so a failing
migration leaves the database at the version before it. Migration files must not contain
BEGIN/COMMIT themselves.

Many asyncio tasks share one `Database`. A task inside `transaction()` owns the connection until
it commits or rolls back; every other task's statements, transactional or not, wait for their
turn, so nothing ever runs inside somebody else's transaction. A task holding a transaction must
not wait on another task that uses the database: that task would wait for the transaction forever.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import stat
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

import aiosqlite

from integrations.resilience.clock import Clock

logger = logging.getLogger(__name__)

Params = Sequence[Any] | Mapping[str, Any]

_MIGRATION_NAME = re.compile(r"(\d{4})_[A-Za-z0-9_]+\.sql")
_PRIVATE_FILE = 0o600
_PRIVATE_DIRECTORY = 0o700


class MigrationError(Exception):
    """The schema could not be brought up to date; the message says which file and why."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def bundled_migrations() -> Traversable:
    return files("state") / "migrations"


def load_migrations(source: Traversable) -> list[Migration]:
    """Read and order the migration files, refusing gaps and duplicate numbers."""
    found: dict[int, Migration] = {}
    for entry in source.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"{entry.name}: migration files are named NNNN_name.sql")
        version = int(match[1])
        if version in found:
            raise MigrationError(
                f"two migrations are numbered {version:04d}: {found[version].name} and {entry.name}"
            )
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        numbers = ", ".join(f"{v:04d}" for v in versions)
        raise MigrationError(f"migrations must be numbered 0001, 0002, ... without gaps; found {numbers}")
    return [found[v] for v in versions]


def iso_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a fixed width, so stored timestamps also sort as text."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


class Database:
    def __init__(self, connection: aiosqlite.Connection, path: Path, clock: Clock) -> None:
        self._conn = connection
        self._path = path
        self._clock = clock
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._version = 0
        self._closed = False

    @classmethod
    async def open(cls, path: Path, clock: Clock, *, migrations: Traversable | None = None) -> Database:
        """Open (creating if needed) the database at `path` and apply pending migrations."""
        path = Path(path)
        pending = load_migrations(migrations if migrations is not None else bundled_migrations())
        _make_private_directory(path.parent)
        _make_private_file(path)
        # SQLite gives new -wal/-shm files the database file's mode; leftovers from before may be looser.
        for sidecar in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            if sidecar.exists():
                _tighten(sidecar, _PRIVATE_FILE)

        # isolation_level=None: no implicit BEGINs, transactions are exactly the ones we open.
        connection = await aiosqlite.connect(path, isolation_level=None)
        try:
            connection.row_factory = sqlite3.Row
            database = cls(connection, path, clock)
            await database._configure()
            await database._migrate(pending)
        except BaseException:
            await connection.close()
            raise
        return database

    @property
    def path(self) -> Path:
        return self._path

    @property
    def schema_version(self) -> int:
        return self._version

    def timestamp(self) -> str:
        """Now, as stored in the database."""
        return iso_timestamp(self._clock.now())

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the rowid of the row it inserted, if any (else 0)."""
        async with self._turn(), self._conn.execute(sql, params) as cursor:
            return cursor.lastrowid or 0

    async def execute_rowcount(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns how many rows it inserted, changed or deleted."""
        async with self._turn(), self._conn.execute(sql, params) as cursor:
            return cursor.rowcount

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self._turn(), self._conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._turn(), self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises (or is cancelled)."""
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            raise RuntimeError("transactions do not nest: this task is already inside one")
        async with self._lock:
            self._owner = task
            try:
                await self._run("BEGIN IMMEDIATE")
                yield
                await self._run("COMMIT")
            except BaseException:
                await self._rollback()
                raise
            finally:
                self._owner = None

    async def close(self) -> None:
        """Close after any running transaction has finished. Closing twice is fine."""
        if self._owner is not None and self._owner is asyncio.current_task():
            raise RuntimeError("cannot close the database from inside a transaction")
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._conn.close()

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self._owner is not None and self._owner is asyncio.current_task():
            yield  # inside this task's own transaction
            return
        async with self._lock:
            yield

    async def _run(self, sql: str) -> None:
        async with self._conn.execute(sql):
            pass

    async def _rollback(self) -> None:
        # Always queued, even when BEGIN seems not to have run: a cancelled task may have queued a
        # BEGIN that has not executed yet, and the connection runs statements in order.
        try:
            await self._run("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "no transaction is active" not in str(exc):
                logger.warning("rollback failed: %s", exc)

    async def _configure(self) -> None:
        async with self._conn.execute("PRAGMA journal_mode=WAL") as cursor:
            row = await cursor.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            logger.warning("SQLite refused WAL mode for %s; using %s", self._path, row and row[0])
        await self._run("PRAGMA foreign_keys=ON")
        await self._run("PRAGMA busy_timeout=5000")
        await self._run("PRAGMA synchronous=NORMAL")

    async def _migrate(self, migrations: list[Migration]) -> None:
        row = await self.fetchone("PRAGMA user_version")
        current = int(row[0]) if row else 0
        self._version = current
        if current > len(migrations):
            raise MigrationError(
                f"{self._path.name} is at schema version {current} but this code only knows "
                f"{len(migrations)} migrations; refusing to run an older version against it"
            )
        for migration in migrations[current:]:
            # PRAGMA cannot take parameters; the version is an int parsed from our own file name.
            script = f"BEGIN IMMEDIATE;\n{migration.sql}\n;\nPRAGMA user_version = {migration.version:d};\nCOMMIT;"
            try:
                async with self._conn.executescript(script):
                    pass
            except BaseException as exc:
                await self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise MigrationError(
                        f"migration {migration.name} failed: {exc}; "
                        f"{self._path.name} stays at schema version {migration.version - 1}"
                    ) from exc
                raise
            self._version = migration.version
            logger.info("applied migration %s to %s", migration.name, self._path.name)


def _make_private_directory(directory: Path) -> None:
    directory.mkdir(mode=_PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    _tighten(directory, _PRIVATE_DIRECTORY)


def _make_private_file(path: Path) -> None:
    """Create the database file as 0600 before SQLite does, so it is never briefly readable by others."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _PRIVATE_FILE))
    except FileExistsError:
        _tighten(path, _PRIVATE_FILE)


def _tighten(target: Path, mode: int) -> None:
    """Take away the permission bits `mode` does not grant, if the file is ours."""
    info = target.stat()
    current = stat.S_IMODE(info.st_mode)
    looser = current & 0o777 & ~mode
    if not looser:
        return
    if info.st_uid != os.geteuid():
        logger.warning("%s has mode %o and is not ours to tighten", target, current)
        return
    target.chmod(current & ~looser)
    logger.info("tightened %s from mode %o to %o", target, current, current & ~looser)
