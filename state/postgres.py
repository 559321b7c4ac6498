"""The bot's state in PostgreSQL (DATABASE_URL=postgresql://...): the same `Database` as SQLite's.

One asyncpg connection shared by the bot's tasks, with the SQLite class's rule: a transaction's
task owns the connection until it commits or rolls back, every other task waits its turn
(state/turns.py). Statements keep the stores' `?` / `:name` placeholders (state/placeholders.py);
rows are asyncpg Records, read by name or position like sqlite3.Row. Sums of integers come back as
int, not Decimal, as they do from SQLite.

Migrations are the files `state/migrations_postgres/NNNN_name.sql`, one twin for each SQLite
migration, applied in order, each in its own transaction together with its row in
`schema_version`; concurrent starts take turns on an advisory lock. A database from a newer
version is refused before anything is written.

Anything that keeps the database from being used (server down, a refused password, a missing
database, a newer schema) is a `StorageFault` naming the server without the password. A lost
connection fails the statements running then, and the next statement connects again.
"""
from __future__ import annotations

import logging
import socket
from contextlib import asynccontextmanager
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

import asyncpg

from integrations.clock import Clock
from state.database import Dialect, Params, Write
from state.db import Migration, MigrationError, StorageFault, iso_timestamp, load_migrations
from state.placeholders import numbered
from state.run_to_end import run_to_end
from state.turns import ConnectionTurns

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
# Any fixed number: concurrent starts of the bot against one database migrate one at a time.
_MIGRATION_LOCK = 0x5377_6462  # "Swdb"
_T = TypeVar("_T")


def bundled_postgres_migrations() -> Traversable:
    return files("state") / "migrations_postgres"


def shown_url(url: str) -> str:
    """The URL as it may be shown: scheme, user, host, port and database, never the password."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


class PostgresDatabase:
    def __init__(self, connection: asyncpg.Connection, url: str, clock: Clock, timeout: float) -> None:
        self._conn = connection
        self._url = url
        self._clock = clock
        self._timeout = timeout
        self._turns = ConnectionTurns()
        self._version = 0
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        clock: Clock,
        *,
        migrations: Traversable | None = None,
        timeout: float = CONNECT_TIMEOUT,
    ) -> PostgresDatabase:
        """Connect to the database at `url` and apply pending migrations."""
        pending = load_migrations(migrations if migrations is not None else bundled_postgres_migrations())
        database = cls(await connect(url, timeout), url, clock, timeout)
        try:
            database._version = await schema_version_of(database._conn, url, len(pending))
            await database._migrate(pending)
        except BaseException:
            await database._conn.close()
            raise
        return database

    @property
    def dialect(self) -> Dialect:
        return "postgresql"

    @property
    def schema_version(self) -> int:
        return self._version

    @property
    def where(self) -> str:
        return shown_url(self._url)

    def timestamp(self) -> str:
        """Now, as stored in the database."""
        return iso_timestamp(self._clock.now())

    async def execute(self, sql: str, params: Params = ()) -> None:
        """Run one statement (use `INSERT ... RETURNING id` with `fetchone` for a new row's id)."""
        await self._run(lambda conn, query, args: conn.execute(query, *args), sql, params)

    async def execute_rowcount(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns how many rows it inserted, changed or deleted."""
        status = await self._run(lambda conn, query, args: conn.execute(query, *args), sql, params)
        count = status.rsplit(" ", 1)[-1]  # "INSERT 0 3", "UPDATE 2", "DELETE 0"
        return int(count) if count.isdigit() else 0

    async def fetchone(self, sql: str, params: Params = ()) -> asyncpg.Record | None:
        return await self._run(lambda conn, query, args: conn.fetchrow(query, *args), sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        return list(await self._run(lambda conn, query, args: conn.fetch(query, *args), sql, params))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """BEGIN ... COMMIT, or ROLLBACK if the block raises (or is cancelled)."""
        async with self._turns.owning():
            conn = await self._connection()
            transaction = conn.transaction()
            with _connection_faults(self._url, conn), self._clock.real_work():
                await transaction.start()
            try:
                yield
            except BaseException:
                with self._clock.real_work():
                    await _quietly(transaction.rollback)
                raise
            with _connection_faults(self._url, conn), self._clock.real_work():
                await transaction.commit()

    async def write_all(self, writes: Sequence[Write]) -> None:
        """All of `writes` in one transaction (or in this task's own, which a cancel rolls back).
        A round trip each, as asyncpg has no pipeline for different statements; a cancel of a
        transaction of their own waits for it (state/run_to_end.py), as SQLite's does."""
        if self._turns.held_here():
            await self._write_each(writes)
            return

        async def in_transaction() -> None:
            async with self.transaction():
                await self._write_each(writes)

        await run_to_end(in_transaction())

    async def _write_each(self, writes: Sequence[Write]) -> None:
        for write in writes:
            if await self.execute_rowcount(write.sql, write.params) < 1 and write.missing is not None:
                raise LookupError(write.missing)

    async def close(self) -> None:
        """Close after any running transaction has finished. Closing twice is fine."""
        if self._turns.held_here():
            raise RuntimeError("cannot close the database from inside a transaction")
        async with self._turns.turn():
            if self._closed:
                return
            self._closed = True
            await self._conn.close()

    async def _run(
        self, call: Callable[[asyncpg.Connection, str, list[Any]], Awaitable[_T]], sql: str, params: Params
    ) -> _T:
        query, args = numbered(sql, params)
        async with self._turns.turn():
            conn = await self._connection()
            with _connection_faults(self._url, conn), self._clock.real_work():
                return await call(conn, query, args)

    async def _connection(self) -> asyncpg.Connection:
        """The connection, made again if the last one was lost (never inside a transaction: that
        transaction is gone with it, and its statements fail)."""
        if self._closed:
            raise StorageFault(f"the database {self.where} was closed")
        if self._conn.is_closed():
            logger.warning("connection to %s was lost; connecting again", self.where)
            self._conn = await connect(self._url, self._timeout)
        return self._conn

    async def _migrate(self, migrations: list[Migration]) -> None:
        for migration in migrations[self._version :]:
            try:
                async with self._conn.transaction():
                    await self._conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    await self._conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version ("
                        " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                    )
                    current = await self._conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                    # Another instance may have applied it while this one waited for the lock.
                    if current < migration.version:
                        await self._conn.execute(migration.sql)
                        await self._conn.execute(
                            "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                            migration.version, migration.name, self.timestamp(),
                        )
                        logger.info("applied migration %s to %s", migration.name, self.where)
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.name} failed: {exc}; "
                    f"{self.where} stays at schema version {migration.version - 1}"
                ) from exc
            self._version = migration.version


async def connect(url: str, timeout: float = CONNECT_TIMEOUT) -> asyncpg.Connection:
    """A connection to `url`, or a StorageFault saying why there is none."""
    with _connection_faults(url):
        conn = await asyncpg.connect(url, timeout=timeout)
    # SUM over BIGINT is NUMERIC; read it as SQLite gives it (an int), not as a Decimal.
    await conn.set_type_codec("numeric", encoder=str, decoder=_number, schema="pg_catalog", format="text")
    return conn


async def schema_version_of(conn: asyncpg.Connection, url: str, known: int) -> int:
    """The schema version of the database behind `conn` (0 if never migrated); a newer one than
    this code knows is refused."""
    with _connection_faults(url):
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        version = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")) if exists else 0
    if version > known:
        raise MigrationError(
            f"{shown_url(url)} is at schema version {version} but this Switchboard only knows {known} "
            "migrations: a newer version has used it. Run that version again, or restore a backup made for this one"
        )
    return version


async def check_postgres(url: str, timeout: float = CONNECT_TIMEOUT) -> int:
    """Can the database at `url` be reached and used? Its schema version. Writes nothing."""
    conn = await connect(url, timeout)
    try:
        return await schema_version_of(conn, url, len(load_migrations(bundled_postgres_migrations())))
    finally:
        await conn.close()


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


async def _quietly(rollback: Callable[[], Awaitable[None]]) -> None:
    try:
        await rollback()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        logger.warning("rollback failed: %s", exc)


class _connection_faults:
    """Re-raise a failure to reach or use the server as the StorageFault it means; `conn`, in
    use when it happened, is dropped, so the next statement connects again."""

    def __init__(self, url: str, conn: asyncpg.Connection | None = None) -> None:
        self._url = url
        self._conn = conn

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: Any) -> None:
        if error is None:
            return
        fault = connection_fault(error, self._url)
        if fault is not None:
            if self._conn is not None:
                self._conn.terminate()
            raise fault from error


def connection_fault(error: BaseException, url: str) -> StorageFault | None:
    """The one-line fault, with its remedy, for `error` reaching or using the server at `url`;
    None for an error in a statement (a bug, not the server)."""
    where = shown_url(url)
    parts = urlsplit(url)
    user = parts.username or "(the default user)"
    database = parts.path.lstrip("/") or user
    if isinstance(error, asyncpg.InvalidPasswordError):
        return StorageFault(
            f"PostgreSQL at {where} refused the password of user {user}: check the password in DATABASE_URL"
        )
    if isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):
        return StorageFault(
            f"PostgreSQL at {where} refused user {user} ({error}): check the user in DATABASE_URL "
            "and the server's pg_hba.conf"
        )
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return StorageFault(
            f"the database {database} does not exist on the PostgreSQL server at {where}: create it "
            f"(createdb {database}) or fix DATABASE_URL"
        )
    if isinstance(error, (asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)):
        return StorageFault(f"PostgreSQL at {where} does not take connections now ({error}): try again shortly")
    if isinstance(error, _LOST) or (isinstance(error, asyncpg.InterfaceError) and "closed" in str(error)):
        return StorageFault(
            f"the connection to PostgreSQL at {where} was lost ({type(error).__name__}); the next statement connects again"
        )
    if isinstance(error, (OSError, TimeoutError)):
        reason = "timed out" if isinstance(error, TimeoutError) else _os_reason(error)
        return StorageFault(
            f"cannot reach PostgreSQL at {where} ({reason}): is the server running, and are the host "
            "and port in DATABASE_URL right?"
        )
    if isinstance(error, asyncpg.exceptions.ClientConfigurationError) or (
        isinstance(error, ValueError) and "dsn" in str(error).lower()
    ):
        return StorageFault(f"DATABASE_URL {where} cannot be used: {error}")
    return None


# The server ended the session (a restart, pg_terminate_backend) or the connection broke under a
# statement: the connection is unusable, the next statement needs a new one.
_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.ConnectionFailureError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.exceptions.InternalClientError,
)


def _os_reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return "no such host"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return error.strerror or str(error) or type(error).__name__
