"""What only PostgreSQL's Database does: numbered placeholders, its own migrations (a twin for
each SQLite one), a newer schema refused untouched, a lost connection made again."""
from pathlib import Path

import asyncpg
import pytest

from state.db import MigrationError, StorageFault, bundled_migrations, load_migrations
from state.placeholders import numbered
from state.postgres import PostgresDatabase, bundled_postgres_migrations, connect


def test_question_marks_are_numbered_in_order_outside_quotes_comments_and_casts():
    sql, args = numbered("SELECT '?', \"a?\", x::BIGINT FROM t -- why?\nWHERE a = ? AND b = ?", (1, 2))
    assert sql == "SELECT '?', \"a?\", x::BIGINT FROM t -- why?\nWHERE a = $1 AND b = $2"
    assert args == [1, 2]


def test_a_name_used_twice_is_bound_once():
    sql, args = numbered("SELECT :id, ':id' WHERE id < :id AND n = :n", {"id": 7, "n": "x"})
    assert (sql, args) == ("SELECT $1, ':id' WHERE id < $1 AND n = $2", [7, "x"])


@pytest.mark.parametrize("sql, params", [("a = ?", ()), ("a = ?", (1, 2)), ("a = :x", (1,)), ("a = ?", {"x": 1})])
def test_parameters_that_do_not_match_the_placeholders_are_refused(sql, params):
    with pytest.raises(ValueError):
        numbered(sql, params)


def test_every_sqlite_migration_has_a_postgresql_twin_of_the_same_name():
    sqlite = [m.name for m in load_migrations(bundled_migrations())]
    postgres = [m.name for m in load_migrations(bundled_postgres_migrations())]
    assert postgres == sqlite


@pytest.fixture
def migrations_copy(tmp_path) -> Path:
    target = tmp_path / "migrations"
    target.mkdir()
    for migration in Path(str(bundled_postgres_migrations())).glob("*.sql"):
        (target / migration.name).write_text(migration.read_text())
    return target


async def test_a_failing_migration_leaves_the_previous_version_and_says_which(postgres_backend, clock, migrations_copy):
    known = len(list(migrations_copy.glob("*.sql")))
    broken = migrations_copy / f"{known + 1:04d}_broken.sql"
    broken.write_text("CREATE TABLE half_done (x BIGINT);\nINSERT INTO no_such_table VALUES (1);\n")

    with pytest.raises(MigrationError) as raised:
        await postgres_backend.open(clock, migrations=migrations_copy)
    assert broken.name in str(raised.value) and f"stays at schema version {known}" in str(raised.value)

    broken.write_text("CREATE TABLE half_done (x BIGINT);\n")
    fixed = await postgres_backend.open(clock, migrations=migrations_copy)
    try:
        assert fixed.schema_version == known + 1
        assert await fixed.fetchall("SELECT x FROM half_done") == []
    finally:
        await fixed.close()


async def test_a_database_newer_than_the_code_is_refused_before_anything_is_written(postgres_backend, clock, migrations_copy):
    known = len(list(migrations_copy.glob("*.sql")))
    (migrations_copy / f"{known + 1:04d}_later.sql").write_text("CREATE TABLE later (x BIGINT);\n")
    newer = await postgres_backend.open(clock, migrations=migrations_copy)
    await newer.execute("INSERT INTO later (x) VALUES (1)")
    await newer.close()

    with pytest.raises(MigrationError, match=f"is at schema version {known + 1} but this Switchboard only knows {known}"):
        await postgres_backend.open(clock, migrations=bundled_postgres_migrations())
    conn = await connect(postgres_backend.cluster.url(Path(newer.where).name))
    try:
        assert await conn.fetchval("SELECT MAX(version) FROM schema_version") == known + 1
    finally:
        await conn.close()


async def test_a_lost_connection_is_made_again_and_a_statement_caught_by_the_loss_is_a_storage_fault(
    postgres_backend, clock, caplog
):
    db = await postgres_backend.open(clock)
    try:
        await db.execute("INSERT INTO user_preferences (user_id, model, updated_at) VALUES (1, 'm', 'now')")
        killer = await connect(postgres_backend.url)
        try:  # what a server restart or an idle-session timeout does to the bot's connection
            await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await killer.close()
        query = "SELECT model FROM user_preferences WHERE user_id = ?"
        try:  # the loss is seen before the statement (reconnect at once) or by it (this one fails)
            row = await db.fetchone(query, (1,))
        except StorageFault as fault:
            assert "the connection to PostgreSQL at postgresql://switchboard@127.0.0.1:" in str(fault)
            assert "was lost" in str(fault)
            row = await db.fetchone(query, (1,))
        assert row["model"] == "m"
        assert "was lost; connecting again" in caplog.text
    finally:
        await db.close()


async def test_sql_errors_stay_what_they_are(postgres_backend, clock):
    db = await postgres_backend.open(clock)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await db.fetchone("SELECT 1 FROM no_such_table")
        assert isinstance(db, PostgresDatabase) and db.dialect == "postgresql"
    finally:
        await db.close()


def test_database_url_must_name_a_postgresql_database_and_a_bad_one_is_not_echoed(tmp_path):
    from bot.config import ConfigError, load_settings

    settings = load_settings({"DATABASE_URL": "postgresql://bot:s3cret-pw@db.internal:5432/switchboard"}, cwd=tmp_path)
    assert settings.database_url is not None and "s3cret-pw" not in repr(settings)
    assert "s3cret-pw" in settings.secret_values(), "the log redaction hides the password"
    assert load_settings({}, cwd=tmp_path).database_url is None, "SQLite by default"
    for bad in ("mysql://bot:s3cret-pw@db/x", "postgresql://bot:s3cret-pw@db:port/x", "postgresql://bot:s3cret-pw@db"):
        with pytest.raises(ConfigError) as raised:
            load_settings({"DATABASE_URL": bad}, cwd=tmp_path)
        assert "DATABASE_URL must be a postgresql:// URL with a host and a database" in str(raised.value)
        assert "s3cret-pw" not in str(raised.value)
