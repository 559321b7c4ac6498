"""What one SQL statement costs the event loop: our `Database` beside aiosqlite's own cursor API.

The same work, interleaved in one process on one SQLite file: 300 rounds of a transaction with
an INSERT and an UPDATE, then a one-row SELECT. "aiosqlite cursors" goes through aiosqlite's public
cursor API (a trip to its thread to execute, another to fetch, another to close: what state/db.py
did before 677ab2c); "Database" is state/db.py (one trip per statement until 844d085, since
then on the loop's thread, as the floor plus the lock and the async calls); "sqlite3, no thread"
is the same statements run synchronously, the floor. Prints the median of 5 rounds each, in ms per round.

Run: .venv/bin/python bench/sqlite_hops.py
"""
from __future__ import annotations

import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiosqlite  # noqa: E402

from integrations.clock import SystemClock  # noqa: E402
from state.db import Database  # noqa: E402

ROUNDS = 300
REPEATS = 5
SCHEMA = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)"


async def ours(db: Database, base: int) -> None:
    for i in range(base, base + ROUNDS):
        async with db.transaction():
            await db.execute("INSERT INTO t (v) VALUES (?)", (str(i),))
            await db.execute("UPDATE t SET v = ? WHERE id = ?", ("x", i))
        await db.fetchone("SELECT v FROM t WHERE id = ?", (i,))


async def cursors(conn: aiosqlite.Connection, base: int) -> None:
    for i in range(base, base + ROUNDS):
        async with conn.execute("BEGIN IMMEDIATE"):
            pass
        async with conn.execute("INSERT INTO t (v) VALUES (?)", (str(i),)):
            pass
        async with conn.execute("UPDATE t SET v = ? WHERE id = ?", ("x", i)):
            pass
        async with conn.execute("COMMIT"):
            pass
        async with conn.execute("SELECT v FROM t WHERE id = ?", (i,)) as cursor:
            await cursor.fetchone()


def synchronous(conn: sqlite3.Connection, base: int) -> None:
    for i in range(base, base + ROUNDS):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (str(i),))
        conn.execute("UPDATE t SET v = ? WHERE id = ?", ("x", i))
        conn.execute("COMMIT")
        conn.execute("SELECT v FROM t WHERE id = ?", (i,)).fetchone()


async def main() -> None:
    folder = Path(tempfile.mkdtemp())
    db = await Database.open(folder / "ours.db", SystemClock())
    await db.execute(SCHEMA)
    plain = await aiosqlite.connect(folder / "cursors.db", isolation_level=None)
    await plain.execute("PRAGMA journal_mode=WAL")
    await plain.execute("PRAGMA synchronous=NORMAL")  # as state/db.py sets it
    await plain.execute(SCHEMA)
    floor = sqlite3.connect(folder / "sync.db", isolation_level=None)
    floor.execute("PRAGMA journal_mode=WAL")
    floor.execute("PRAGMA synchronous=NORMAL")
    floor.execute(SCHEMA)
    times: dict[str, list[float]] = {"Database (ours)": [], "aiosqlite cursors": [], "sqlite3, no thread": []}
    for repeat in range(REPEATS):
        base = 1 + repeat * ROUNDS
        started = time.perf_counter()
        await ours(db, base)
        times["Database (ours)"].append((time.perf_counter() - started) / ROUNDS * 1000)
        started = time.perf_counter()
        await cursors(plain, base)
        times["aiosqlite cursors"].append((time.perf_counter() - started) / ROUNDS * 1000)
        started = time.perf_counter()
        synchronous(floor, base)
        times["sqlite3, no thread"].append((time.perf_counter() - started) / ROUNDS * 1000)
    await db.close()
    await plain.close()
    floor.close()
    print(f"{ROUNDS} rounds of (BEGIN, INSERT, UPDATE, COMMIT, SELECT one row), {REPEATS} repeats, interleaved")
    for name, values in times.items():
        shown = " ".join(f"{value:.3f}" for value in values)
        print(f"{name:20} median {statistics.median(values):.3f} ms a round  ({shown})")


if __name__ == "__main__":
    asyncio.run(main())
