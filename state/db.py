"""The bot's one SQLite connection: private files, WAL, numbered migrations, serialised transactions.

Migrations are the files `state/migrations/NNNN_name.sql`, numbered 0001, 0002, ... without gaps.
Each runs in its own transaction together with the bump of `PRAGMA user_version`, so a failing
migration leaves the database at the version before it. Migration files must not contain
BEGIN/COMMIT themselves. A database from a newer version is refused before anything is written.

Anything that keeps the state from being used at start (a full disk, a read-only file system, a
damaged file, a newer schema) is raised as a `StorageFault`: one line saying what is wrong and
what to do, because restarting cannot fix it. `check_storage` finds the same faults without
creating or changing anything, for `switchboard check` and before every command touches the state.

Many asyncio tasks share one `Database`. A task inside `transaction()` owns the connection until
it commits or rolls back; every other task's statements, transactional or not, wait for their
turn, so nothing ever runs inside somebody else's transaction. A task holding a transaction must
not wait on another task that uses the database: that task would wait for the transaction forever.

Statements run on the event loop's own thread; aiosqlite's thread only opens, migrates and closes
the connection. A statement of the bot takes SQLite 0.02-0.1 ms, while a trip to another thread
and back costs two thread switches and, with the loop busy, the GIL: at 1,000 conversations each
trip took ~17 ms, and the trips, one at a time on the one connection, held every answer back by
up to 18 s (bench/scale.py, BENCHMARKS.md). The price: the loop waits while SQLite works, which
matters only for big reads (a 100,000-message conversation: ~0.1 s) and for a commit that runs
the WAL's checkpoint (a few ms, about once per 100 answers), or a disk that stalls.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import sqlite3
import stat
import tempfile
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Mapping, Sequence, TypeVar

import aiosqlite

from integrations.clock import Clock
from state.checkpoints import WalCheckpointer
from state.database import Write

logger = logging.getLogger(__name__)

T = TypeVar("T")

Params = Sequence[Any] | Mapping[str, Any]

_MIGRATION_NAME = re.compile(r"(\d{4})_[A-Za-z0-9_]+\.sql")
_PRIVATE_FILE = 0o600
_PRIVATE_DIRECTORY = 0o700
_SQLITE_MAGIC = b"SQLite format 3\0"
_USER_VERSION_AT = 60  # the header's 4-byte big-endian PRAGMA user_version
# What `check_storage` writes (and at once forgets) to prove the state directory takes data: a
# disk with less room than this cannot hold SQLite's shared-memory file, let alone new rows.
PROBE_BYTES = 64 * 1024


class StorageFault(Exception):
    """The state directory or database cannot be used; the message says what to do about it."""


class MigrationError(StorageFault):
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


def refuse_newer(version: int, known: int, path: Path) -> None:
    if version > known:
        raise MigrationError(
            f"{path} is at schema version {version} but this Switchboard only knows {known} migrations: "
            "a newer version has used it. Run that version again, or restore a backup made for this one"
        )


def storage_fault(error: OSError | sqlite3.Error, path: Path) -> StorageFault:
    """The one-line fault, with its remedy, for a file-system or SQLite error on `path`."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return StorageFault(
        _remedy(error, path) or f"{path} cannot be used ({reason}): check the disk and the state directory"
    )


@contextmanager
def storage_faults(path: Path) -> Iterator[None]:
    """Re-raise file-system and SQLite errors inside the block as the `StorageFault` they mean."""
    try:
        yield
    except (OSError, sqlite3.Error) as error:
        raise storage_fault(error, path) from error


def check_storage(path: Path, migrations: Traversable | None = None) -> int:
    """Can the database at `path` be opened and written? Its schema version (0: not created yet).

    Creates and changes nothing: the directory takes a write of PROBE_BYTES into a file that has
    no name (nothing is left behind), and the database is judged by its header alone. The header
    can lag behind a write-ahead log a crash left unmerged; `Database.open` asks SQLite itself.
    """
    check_directory(path.parent)
    return inspect_database(path, migrations)


def check_directory(directory: Path) -> None:
    """Raise a StorageFault unless `directory` takes writes, or can be created if it is missing."""
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        where = "is a file" if existing == directory else f"lies under {existing}, which is a file"
        raise StorageFault(f"{directory} {where}, not a directory: move the file away, or point STATE_DIR elsewhere")
    if existing != directory:
        if not os.access(existing, os.W_OK | os.X_OK):
            code = errno.EROFS if _read_only_file_system(existing) else errno.EACCES
            raise storage_fault(OSError(code, os.strerror(code), str(existing)), directory)
        return
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".switchboard-probe-") as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:  # named after the directory, not the probe's passing name
        raise storage_fault(OSError(error.errno, error.strerror, str(directory)), directory) from error


def inspect_database(path: Path, migrations: Traversable | None = None) -> int:
    """The schema version in the database file's header (0: no file yet, or an empty one)."""
    known = len(load_migrations(migrations if migrations is not None else bundled_migrations()))
    if not os.path.lexists(path):
        return 0
    with storage_faults(path):
        if not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        with path.open("rb") as file:
            header = file.read(100)
    if not header:
        return 0  # SQLite takes an empty file for an empty database
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StorageFault(_damaged(path, "not an SQLite database"))
    version = int.from_bytes(header[_USER_VERSION_AT : _USER_VERSION_AT + 4], "big")
    refuse_newer(version, known, path)
    return version


def _remedy(error: OSError | sqlite3.Error, path: Path) -> str | None:
    """What a person must do about `error`, or None when it is not about the disk or the file."""
    code = error.errno if isinstance(error, OSError) else None
    name = getattr(error, "sqlite_errorname", "") or ""
    where = Path(getattr(error, "filename", None) or path)
    cannot_write = code in (errno.EACCES, errno.EPERM) or name.startswith(
        ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR")
    )
    if code in (errno.ENOSPC, errno.EDQUOT) or name == "SQLITE_FULL" or (cannot_write and _no_room(where)):
        return f"the disk holding {where} is full: free some space (df -h {_nearest_existing(where)}) and start again"
    if code == errno.EROFS or (cannot_write and _read_only_file_system(where)):
        return f"{where} is on a read-only file system: make it writable, or point STATE_DIR at a writable directory"
    if code == errno.ENOTDIR:
        return f"{where} lies under a file, not a directory: move the file away, or point STATE_DIR elsewhere"
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return _damaged(path, str(error))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return f"{path} is locked by another program (an sqlite3 shell?): close it and start again"
    if name.startswith("SQLITE_IOERR"):
        return f"reading or writing {path} failed ({error}): check the disk (dmesg) and the state directory"
    if cannot_write:
        return (
            f"{where} cannot be written by this user (uid {os.geteuid()}): give it to the user the bot "
            "runs as (chown), or point STATE_DIR elsewhere"
        )
    return None


def _damaged(path: Path, reason: str) -> str:
    return (
        f"{path} is damaged ({reason}): stop the bot, move the file aside and restore a backup, "
        "or start without it (an empty history)"
    )


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _no_room(path: Path) -> bool:
    try:
        info = os.statvfs(_nearest_existing(path))
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < PROBE_BYTES


def _read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(_nearest_existing(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
        self._checkpoints: WalCheckpointer | None = None  # in WAL mode (state/checkpoints.py)

    @classmethod
    async def open(cls, path: Path, clock: Clock, *, migrations: Traversable | None = None) -> Database:
        """Open (creating if needed) the database at `path` and apply pending migrations."""
        path = Path(path)
        pending = load_migrations(migrations if migrations is not None else bundled_migrations())
        with storage_faults(path):
            _make_private_directory(path.parent)
            _make_private_file(path)
            # SQLite gives new -wal/-shm files the database file's mode; leftovers from before may be looser.
            for sidecar in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                if sidecar.exists():
                    _tighten(sidecar, _PRIVATE_FILE)
            # isolation_level=None: no implicit BEGINs, transactions are exactly the ones we open.
            # check_same_thread=False: statements run on the loop's thread (see above), the
            # connection is opened and closed on aiosqlite's.
            with clock.real_work():
                connection = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
        try:
            connection.row_factory = sqlite3.Row
            database = cls(connection, path, clock)
            with storage_faults(path):
                await database._configure(len(pending))
            await database._migrate(pending)
        except BaseException:
            with clock.real_work():
                await connection.close()
            raise
        return database

    @property
    def path(self) -> Path:
        return self._path

    @property
    def dialect(self) -> Literal["sqlite"]:
        return "sqlite"

    @property
    def where(self) -> str:
        return str(self._path)

    @property
    def schema_version(self) -> int:
        return self._version

    @property
    def checkpoints(self) -> WalCheckpointer | None:
        """Who copies the WAL back into the database file (None when SQLite refused WAL mode)."""
        return self._checkpoints

    def timestamp(self) -> str:
        """Now, as stored in the database."""
        return iso_timestamp(self._clock.now())

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the rowid of the row it inserted, if any (else 0)."""
        async with self._turn():
            return self._statement(_inserted_rowid, sql, params)

    async def execute_rowcount(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns how many rows it inserted, changed or deleted."""
        async with self._turn():
            return self._statement(_rowcount, sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self._turn():
            return self._statement(_first_row, sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._turn():
            return self._statement(_all_rows, sql, params)

    async def write_all(self, writes: Sequence[Write]) -> None:
        """All of `writes` in one transaction (or in this task's own), at once once it is this
        task's turn: a cancel can come only before anything is written."""
        connection: sqlite3.Connection = self._conn._conn
        async with self._turn():
            if self._owner is not None and self._owner is asyncio.current_task():
                _write_each(connection, writes)
            else:
                _write_in_transaction(connection, writes)

    def _statement(self, read: Callable[[sqlite3.Cursor], T], sql: str, params: Params) -> T:
        """Run `sql` and `read` its cursor, here on the loop's thread (see the module's doc)."""
        cursor = self._conn._conn.execute(sql, params)
        try:
            return read(cursor)
        finally:
            cursor.close()
            if self._checkpoints is not None:
                self._checkpoints.after_statement()

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
            with self._clock.real_work():
                if self._checkpoints is not None:
                    await self._checkpoints.aclose()  # first: the last connection to close checkpoints
                await self._conn.close()

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """This task's turn at the connection, for one statement (at once inside its own transaction)."""
        if self._owner is not None and self._owner is asyncio.current_task():
            yield
            return
        async with self._lock:
            yield

    async def _run(self, sql: str) -> None:
        self._statement(_nothing, sql, ())

    async def _rollback(self) -> None:
        # Always run: it answers "no transaction is active" when BEGIN itself failed.
        try:
            await self._run("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "no transaction is active" not in str(exc):
                logger.warning("rollback failed: %s", exc)

    async def _configure(self, known: int) -> None:
        """Read the schema version first: a database this code must refuse is not written to."""
        await self._run("PRAGMA busy_timeout=5000")
        await self._run("PRAGMA foreign_keys=ON")
        row = await self.fetchone("PRAGMA user_version")
        self._version = int(row[0]) if row else 0
        refuse_newer(self._version, known, self._path)
        with self._clock.real_work():
            async with self._conn.execute("PRAGMA journal_mode=WAL") as cursor:
                row = await cursor.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            logger.warning("SQLite refused WAL mode for %s; using %s", self._path, row and row[0])
        else:
            # Checkpoints run on a thread of their own, not inside a commit on the loop.
            await self._run("PRAGMA wal_autocheckpoint=0")
            page_size = await self.fetchone("PRAGMA page_size")
            self._checkpoints = WalCheckpointer(self._path, int(page_size[0]) if page_size else 4096)
        await self._run("PRAGMA synchronous=NORMAL")

    async def _migrate(self, migrations: list[Migration]) -> None:
        for migration in migrations[self._version :]:
            # PRAGMA cannot take parameters; the version is an int parsed from our own file name.
            script = f"BEGIN IMMEDIATE;\n{migration.sql}\n;\nPRAGMA user_version = {migration.version:d};\nCOMMIT;"
            try:
                with self._clock.real_work():
                    async with self._conn.executescript(script):
                        pass
            except BaseException as exc:
                await self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise MigrationError(
                        f"migration {migration.name} failed: {_remedy(exc, self._path) or exc}; "
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


def _write_in_transaction(connection: sqlite3.Connection, writes: Sequence[Write]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        _write_each(connection, writes)
        connection.execute("COMMIT")
    except BaseException:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "no transaction is active" not in str(exc):  # else SQLite rolled back by itself
                logger.warning("rollback failed: %s", exc)
        raise


def _write_each(connection: sqlite3.Connection, writes: Sequence[Write]) -> None:
    for write in writes:
        cursor = connection.execute(write.sql, write.params)
        try:
            if write.missing is not None and cursor.rowcount < 1:
                raise LookupError(write.missing)
        finally:
            cursor.close()


def _inserted_rowid(cursor: sqlite3.Cursor) -> int:
    return cursor.lastrowid or 0


def _rowcount(cursor: sqlite3.Cursor) -> int:
    return cursor.rowcount


def _first_row(cursor: sqlite3.Cursor) -> sqlite3.Row | None:
    row: sqlite3.Row | None = cursor.fetchone()
    return row


def _all_rows(cursor: sqlite3.Cursor) -> list[sqlite3.Row]:
    return cursor.fetchall()


def _nothing(cursor: sqlite3.Cursor) -> None:
    return None
