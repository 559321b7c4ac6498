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


async def holding_the_connection(db, release: asyncio.Event) -> asyncio.Task[None]:
    """Another task's transaction, open until `release`: writes asked for meanwhile must wait."""
    began = asyncio.Event()

    async def hold() -> None:
        async with db.transaction():
            await db.execute(INSERT, ("held", "0"))
            began.set()
            await release.wait()

    holder = asyncio.ensure_future(hold())
    await began.wait()
    return holder


async def a_few_turns() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_writes_asked_for_during_another_transaction_wait_for_its_end(db):
    release = asyncio.Event()
    holder = await holding_the_connection(db, release)
    writer = asyncio.ensure_future(db.write_all([Write(INSERT, ("a", "1"))]))
    await a_few_turns()
    assert not writer.done()
    release.set()
    await asyncio.gather(holder, writer)

    assert await rows(db) == [("a", "1"), ("held", "0")]


async def test_a_cancel_while_they_wait_is_raised_and_never_hides_writes_that_were_kept(db):
    """SQLite writes at once when the turn comes (a cancel before it stops them); PostgreSQL's
    round trips run to the end and the cancel comes after. Either way the caller is told the truth."""
    reached: list[str] = []
    release = asyncio.Event()

    async def writer() -> None:
        await db.write_all([Write(INSERT, ("a", "1")), Write(INSERT, ("b", "2"))])
        reached.append("kept")
        await asyncio.sleep(0)
        reached.append("not reached")

    holder = await holding_the_connection(db, release)
    task = asyncio.ensure_future(writer())
    await a_few_turns()  # the writes are asked for, and wait for the connection
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await holder

    kept = await rows(db)
    assert kept in ([("held", "0")], [("a", "1"), ("b", "2"), ("held", "0")])
    assert reached == (["kept"] if len(kept) == 3 else [])


async def test_a_cancel_of_writes_that_fail_raises_the_cancel(db):
    release = asyncio.Event()
    holder = await holding_the_connection(db, release)
    task = asyncio.ensure_future(db.write_all([Write(INSERT, ("a", "1")), Write(INSERT, ("a", "2"))]))
    await a_few_turns()
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await holder

    assert await rows(db) == [("held", "0")]
