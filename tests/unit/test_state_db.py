import asyncio
import errno
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from integrations.clock import ManualClock
from state.db import (
    Database,
    MigrationError,
    StorageFault,
    bundled_migrations,
    check_storage,
    inspect_database,
    load_migrations,
    storage_fault,
)
from state.preferences import UserPreferences

MIGRATIONS = Path(str(bundled_migrations()))
MIGRATION_COUNT = len(list(MIGRATIONS.glob("*.sql")))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sqlite_db(tmp_path, clock):
    database = await Database.open(tmp_path / "state" / "bot.db", clock)
    yield database
    await database.close()


@pytest.fixture
async def db(state_backend, clock):
    """The same behaviour on either engine."""
    database = await state_backend.open(clock)
    yield database
    await database.close()


@pytest.fixture
def migrations_copy(tmp_path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, target)
    return target


async def test_migrations_bring_an_empty_database_to_the_latest_version(sqlite_db):
    assert MIGRATION_COUNT >= 1
    assert sqlite_db.schema_version == MIGRATION_COUNT
    assert (await sqlite_db.fetchone("PRAGMA user_version"))[0] == MIGRATION_COUNT
    assert {"conversations", "messages", "user_preferences"} <= table_names(sqlite_db.path)


async def test_reopening_applies_no_migration_twice_and_keeps_the_data(state_backend, clock):
    first = await state_backend.open(clock)
    await first.execute("INSERT INTO user_preferences (user_id, model, updated_at) VALUES (1, 'm', 'now')")
    await first.close()

    again = await state_backend.open(clock)
    try:
        assert again.schema_version == len(load_migrations(state_backend.migrations()))
        assert (await again.fetchone("SELECT model FROM user_preferences WHERE user_id = 1"))["model"] == "m"
    finally:
        await again.close()


async def test_database_file_its_journal_and_its_directory_are_private(tmp_path, sqlite_db):
    db = sqlite_db
    assert db.path.parent == tmp_path / "state"
    assert mode_of(db.path.parent) == 0o700
    assert mode_of(db.path) == 0o600
    await db.execute("INSERT INTO user_preferences (user_id, model, updated_at) VALUES (1, 'm', 'now')")
    for sidecar in ("-wal", "-shm"):
        written = Path(f"{db.path}{sidecar}")
        assert written.exists()
        assert mode_of(written) == 0o600


async def test_loose_existing_directory_and_files_are_tightened(tmp_path, clock):
    directory = tmp_path / "data"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    path = directory / "bot.db"
    path.touch()
    path.chmod(0o644)
    leftover_wal = Path(f"{path}-wal")
    leftover_wal.touch()
    leftover_wal.chmod(0o666)

    database = await Database.open(path, clock)
    try:
        assert mode_of(directory) == 0o700
        assert mode_of(path) == 0o600
        assert mode_of(leftover_wal) == 0o600
    finally:
        await database.close()


async def test_connection_uses_wal_foreign_keys_and_a_busy_timeout(sqlite_db):
    db = sqlite_db
    assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"
    assert (await db.fetchone("PRAGMA foreign_keys"))[0] == 1
    assert (await db.fetchone("PRAGMA busy_timeout"))[0] == 5000
    assert (await db.fetchone("PRAGMA synchronous"))[0] == 1  # NORMAL


async def test_rows_are_addressable_by_column_name(db):
    await db.execute("INSERT INTO conversations (chat_id, started_at) VALUES (?, ?)", (7, db.timestamp()))
    row = await db.fetchone("SELECT chat_id, started_at FROM conversations")
    assert row["chat_id"] == 7
    assert row["started_at"] == "2026-11-26T12:00:00.000+00:00"


async def test_a_failing_migration_leaves_the_previous_version_and_says_which(tmp_path, clock, migrations_copy):
    path = tmp_path / "bot.db"
    broken = migrations_copy / f"{MIGRATION_COUNT + 1:04d}_broken.sql"
    broken.write_text("CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n")

    with pytest.raises(MigrationError) as raised:
        await Database.open(path, clock, migrations=migrations_copy)

    assert broken.name in str(raised.value)
    assert f"version {MIGRATION_COUNT}" in str(raised.value)
    assert user_version(path) == MIGRATION_COUNT
    assert "half_done" not in table_names(path)

    broken.write_text("CREATE TABLE half_done (x INTEGER);\n")
    fixed = await Database.open(path, clock, migrations=migrations_copy)
    await fixed.close()
    assert fixed.schema_version == MIGRATION_COUNT + 1
    assert "half_done" in table_names(path)


async def test_new_migration_files_are_picked_up_in_order(tmp_path, clock, migrations_copy):
    (migrations_copy / f"{MIGRATION_COUNT + 2:04d}_second.sql").write_text("ALTER TABLE first ADD COLUMN y;")
    (migrations_copy / f"{MIGRATION_COUNT + 1:04d}_first.sql").write_text("CREATE TABLE first (x)")

    database = await Database.open(tmp_path / "bot.db", clock, migrations=migrations_copy)
    try:
        assert database.schema_version == MIGRATION_COUNT + 2
        await database.execute("INSERT INTO first (x, y) VALUES (1, 2)")
    finally:
        await database.close()


@pytest.mark.parametrize(
    "extra, complaint",
    [
        (["0001_again.sql"], "two migrations are numbered 0001"),
        (["0099_far_ahead.sql"], "without gaps"),
        (["add-things.sql"], "NNNN_name.sql"),
    ],
)
async def test_misnumbered_migrations_are_refused_before_touching_the_database(
    tmp_path, clock, migrations_copy, extra, complaint
):
    for name in extra:
        (migrations_copy / name).write_text("CREATE TABLE x (y);")
    path = tmp_path / "bot.db"

    with pytest.raises(MigrationError, match=complaint):
        await Database.open(path, clock, migrations=migrations_copy)
    assert not path.exists()


async def test_a_database_newer_than_the_code_is_refused_without_a_byte_written(tmp_path, clock):
    path = tmp_path / "bot.db"
    with sqlite3.connect(path) as conn:  # a rollback journal: turning on WAL would rewrite the header
        conn.execute("CREATE TABLE later (x)")
        conn.execute(f"PRAGMA user_version = {MIGRATION_COUNT + 5}")
    conn.close()
    before = path.read_bytes()

    with pytest.raises(MigrationError, match="newer version") as raised:
        await Database.open(path, clock)
    assert isinstance(raised.value, StorageFault)
    assert path.read_bytes() == before
    with pytest.raises(MigrationError, match=f"schema version {MIGRATION_COUNT + 5}"):
        inspect_database(path)


async def test_a_damaged_database_file_is_a_storage_fault_and_stays_as_it_was(tmp_path, clock):
    path = tmp_path / "bot.db"
    path.write_bytes(b"\x00not sqlite\xff" * 500)

    with pytest.raises(StorageFault, match="is damaged .*restore a backup") as raised:
        await Database.open(path, clock)
    assert "\n" not in str(raised.value)
    assert path.read_bytes() == b"\x00not sqlite\xff" * 500
    with pytest.raises(StorageFault, match="is damaged"):
        inspect_database(path)


def test_checking_storage_creates_and_leaves_nothing(tmp_path):
    assert check_storage(tmp_path / "missing" / "bot.db") == 0
    assert not (tmp_path / "missing").exists()
    (tmp_path / "bot.db").touch()
    assert check_storage(tmp_path / "bot.db") == 0  # an empty file is an empty database
    assert [p.name for p in tmp_path.iterdir()] == ["bot.db"]


async def test_checking_storage_reads_the_schema_version_of_a_closed_database(tmp_path, clock):
    database = await Database.open(tmp_path / "bot.db", clock)
    await database.close()  # merges the write-ahead log, whose pages the header check does not read
    assert check_storage(tmp_path / "bot.db") == MIGRATION_COUNT


@pytest.mark.parametrize(
    "error, says",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/srv/state/bot.db"), "the disk holding /srv/state/bot.db is full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/srv/state"), "is full: free some space"),
        (OSError(errno.EROFS, "Read-only file system", "/srv/state"), "/srv/state is on a read-only file system"),
        (PermissionError(errno.EACCES, "Permission denied", "/srv/state"), "cannot be written by this user"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/srv/state"), "lies under a file"),
    ],
)
def test_file_system_errors_become_one_line_saying_what_to_do(error, says):
    fault = storage_fault(error, Path("/srv/state/bot.db"))
    assert says in str(fault) and "\n" not in str(fault)


def test_sqlite_saying_the_disk_is_full_is_a_full_disk():
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorname = "SQLITE_FULL"
    assert "is full: free some space" in str(storage_fault(error, Path("/srv/state/bot.db")))


async def test_concurrent_read_modify_write_transactions_do_not_interleave(db):
    await db.execute("CREATE TABLE counter (value INTEGER NOT NULL)")
    await db.execute("INSERT INTO counter (value) VALUES (0)")

    async def increment() -> None:
        async with db.transaction():
            value = (await db.fetchone("SELECT value FROM counter"))["value"]
            await asyncio.sleep(0)  # give every other task the chance to barge in
            await db.execute("UPDATE counter SET value = ?", (value + 1,))

    await asyncio.gather(*(increment() for _ in range(50)))

    assert (await db.fetchone("SELECT value FROM counter"))["value"] == 50


async def test_a_statement_from_another_task_is_not_swept_into_a_rolled_back_transaction(db):
    await db.execute("CREATE TABLE items (name TEXT)")
    inside = asyncio.Event()
    release = asyncio.Event()

    async def doomed() -> None:
        async with db.transaction():
            await db.execute("INSERT INTO items (name) VALUES ('doomed')")
            inside.set()
            await release.wait()
            raise RuntimeError("give up")

    transaction = asyncio.create_task(doomed())
    await inside.wait()
    outsider = asyncio.create_task(db.execute("INSERT INTO items (name) VALUES ('outsider')"))
    await asyncio.sleep(0)
    release.set()

    with pytest.raises(RuntimeError):
        await transaction
    await outsider
    assert [row["name"] for row in await db.fetchall("SELECT name FROM items")] == ["outsider"]


async def test_an_exception_in_a_transaction_rolls_back_all_of_it(db):
    await db.execute("CREATE TABLE items (name TEXT)")
    with pytest.raises(ValueError):
        async with db.transaction():
            await db.execute("INSERT INTO items (name) VALUES ('a')")
            await db.execute("INSERT INTO items (name) VALUES ('b')")
            raise ValueError("boom")

    assert await db.fetchall("SELECT name FROM items") == []


async def test_a_cancelled_transaction_rolls_back_and_frees_the_database(db):
    await db.execute("CREATE TABLE items (name TEXT)")
    inside = asyncio.Event()

    async def stuck() -> None:
        async with db.transaction():
            await db.execute("INSERT INTO items (name) VALUES ('half')")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with db.transaction():
        await db.execute("INSERT INTO items (name) VALUES ('next')")
    assert [row["name"] for row in await db.fetchall("SELECT name FROM items")] == ["next"]


async def test_nested_transactions_in_one_task_are_refused(db):
    async with db.transaction():
        with pytest.raises(RuntimeError, match="nest"):
            async with db.transaction():
                pass


async def test_execute_reports_the_inserted_rowid_and_rowcount(sqlite_db):
    db = sqlite_db
    await db.execute("CREATE TABLE items (name TEXT)")
    first = await db.execute("INSERT INTO items (name) VALUES (?)", ("a",))
    second = await db.execute("INSERT INTO items (name) VALUES (:name)", {"name": "b"})
    assert second == first + 1
    assert await db.execute_rowcount("UPDATE items SET name = 'z'") == 2


async def test_insert_returning_gives_the_new_id_and_rowcount_counts_changed_rows(db):
    insert = "INSERT INTO conversations (chat_id, started_at) VALUES (:chat, :at) RETURNING id"
    first = await db.fetchone(insert, {"chat": 1, "at": db.timestamp()})
    second = await db.fetchone(insert, {"chat": -1001234567890, "at": db.timestamp()})  # past 2^31
    assert second["id"] == first["id"] + 1
    assert await db.execute_rowcount("UPDATE conversations SET ended_at = ? WHERE ended_at IS NULL", ("x",)) == 2
    assert await db.execute_rowcount("DELETE FROM conversations WHERE chat_id = ?", (7,)) == 0
    assert [tuple(row) for row in await db.fetchall("SELECT chat_id, ended_at FROM conversations ORDER BY id")] == [
        (1, "x"),
        (-1001234567890, "x"),
    ]


async def test_model_preference_is_set_replaced_cleared_and_survives_restart(state_backend, clock):
    db = await state_backend.open(clock)
    preferences = UserPreferences(db)
    assert await preferences.model_for(42) is None
    await preferences.set_model(42, "openai:gpt-5")
    await preferences.set_model(42, "anthropic:claude-sonnet-4-6")
    await preferences.set_model(7, "openai:gpt-5")
    await db.close()

    db = await state_backend.open(clock)
    preferences = UserPreferences(db)
    try:
        assert await preferences.model_for(42) == "anthropic:claude-sonnet-4-6"
        await preferences.set_model(42, None)
        assert await preferences.model_for(42) is None
        assert await preferences.model_for(7) == "openai:gpt-5"
    finally:
        await db.close()


async def test_blank_model_preference_is_refused(db):
    with pytest.raises(ValueError):
        await UserPreferences(db).set_model(1, "  ")
