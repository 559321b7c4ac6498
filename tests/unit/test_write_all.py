"""`Database.write_all`: statements nobody reads, kept all or none, in one trip; a cancel comes after."""
import asyncio

import pytest

from state.database import Write

INSERT = "INSERT INTO kv (k, v) VALUES (?, ?)"


@pytest.fixture
async def db(state_db):
    await state_db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    return state_db


async def rows(db) -> list[tuple[str, str]]:
    return [(row["k"], row["v"]) for row in await db.fetchall("SELECT k, v FROM kv ORDER BY k")]


async def test_the_writes_are_kept_together(db):
    await db.write_all([Write(INSERT, ("a", "1")), Write(INSERT, ("b", "2")), Write("UPDATE kv SET v = '3' WHERE k = 'a'")])

    assert await rows(db) == [("a", "3"), ("b", "2")]


async def test_a_write_that_must_find_its_row_and_does_not_undoes_them_all(db):
    with pytest.raises(LookupError, match="no such key"):
        await db.write_all([Write(INSERT, ("a", "1")), Write("UPDATE kv SET v = '2' WHERE k = 'zz'", missing="no such key")])

    assert await rows(db) == []
    await db.write_all([Write(INSERT, ("a", "1"))])  # the connection is usable, no transaction left open
    assert await rows(db) == [("a", "1")]


async def test_a_failing_statement_undoes_the_writes_before_it(db):
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        await db.write_all([Write(INSERT, ("a", "1")), Write(INSERT, ("a", "2"))])

    assert await rows(db) == []


async def test_inside_a_transaction_the_writes_are_part_of_it(db):
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await db.write_all([Write(INSERT, ("a", "1"))])
            assert await rows(db) == [("a", "1")]
            raise RuntimeError("the rest of the transaction fails")

    assert await rows(db) == []


async def test_a_cancel_while_they_run_waits_for_them_and_is_raised_at_the_next_await(db):
    reached: list[str] = []

    async def writer() -> None:
        await db.write_all([Write(INSERT, ("a", "1")), Write(INSERT, ("b", "2"))])
        reached.append("kept")  # told the truth: the writes were kept
        await asyncio.sleep(0)
        reached.append("not reached")

    task = asyncio.ensure_future(writer())
    await asyncio.sleep(0)  # the writes are on their way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert reached == ["kept"]
    assert await rows(db) == [("a", "1"), ("b", "2")]


async def test_a_cancel_of_writes_that_fail_raises_the_cancel(db):
    async def writer() -> None:
        await db.write_all([Write(INSERT, ("a", "1")), Write(INSERT, ("a", "2"))])

    task = asyncio.ensure_future(writer())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await rows(db) == []
