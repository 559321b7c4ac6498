"""What the SQLite state costs at 100k rows: a cache `put`, and loading a long conversation.

Cache: `SqliteCache.put` of a new 1 kB entry into a cache already holding its bound of 100,000
entries (so every put also evicts the oldest), through the bot's own `Database` (aiosqlite, WAL).
History: `HistoryStore.context_for` of the newest message of one conversation of 100,000 rows
(questions and their answers). Baselines in the same run, on a copy of the same rows: the same
INSERT, and a SELECT of the same rows in id order, on a plain `sqlite3` connection (same WAL and
synchronous settings), and the INSERT through `Database.execute` alone (the cost of the async
connection itself). Targets: put p99 <= 1 ms; the history query needs no temporary B-tree.

    .venv/bin/python bench/storage.py [--puts N] [--loads N] [--rows N]
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.clock import SystemClock  # noqa: E402
from state.cache import SqliteCache  # noqa: E402
from state.db import Database, iso_timestamp  # noqa: E402
from state.history import CONTEXT_QUERY, HistoryStore  # noqa: E402

CHAT, USER = 100, 42
VALUE = '{"text": "' + "x" * 1000 + '"}'
CACHE_INSERT = "INSERT INTO cache_entries (kind, key, value, stored_at, expires_at) VALUES (?, ?, ?, ?, ?)"
PLAIN_HISTORY = "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY id"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def plain_connection(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def fill_cache(path: Path, rows: int) -> None:
    stored_at = iso_timestamp(SystemClock().now())
    with plain_connection(path) as connection:
        connection.execute("BEGIN")
        connection.executemany(CACHE_INSERT, ((("search", f"old {i}", VALUE, stored_at, 4e9)) for i in range(rows)))
        connection.execute("COMMIT")


def fill_history(path: Path, rows: int) -> None:
    """One open conversation: `rows` messages, each question followed by its answer, then one pending."""
    now = iso_timestamp(SystemClock().now())
    with plain_connection(path) as connection:
        connection.execute("BEGIN")
        conversation = connection.execute(
            "INSERT INTO conversations (chat_id, started_at) VALUES (?, ?)", (CHAT, now)
        ).lastrowid
        for turn in range(rows // 2):
            question = connection.execute(
                "INSERT INTO messages (conversation_id, chat_id, user_id, telegram_message_id, role, content,"
                " status, created_at) VALUES (?, ?, ?, ?, 'user', ?, 'answered', ?)",
                (conversation, CHAT, USER, turn + 1, f"question {turn} " + "q" * 100, now),
            ).lastrowid
            connection.execute(
                "INSERT INTO messages (conversation_id, chat_id, role, content, status, model, in_reply_to,"
                " created_at) VALUES (?, ?, 'assistant', ?, 'answered', 'bench:model', ?, ?)",
                (conversation, CHAT, f"answer {turn} " + "a" * 400, question, now),
            )
        connection.execute("COMMIT")


async def timed(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def timed_sync(call: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def report(label: str, samples: list[float], *, tail: float = 0.99) -> None:
    print(
        f"  {label:46} median {statistics.median(samples) * 1000:8.3f} ms  "
        f"p{round(tail * 100)} {percentile(samples, tail) * 1000:8.3f} ms  max {max(samples) * 1000:8.3f} ms"
    )


async def bench_cache(directory: Path, rows: int, puts: int) -> None:
    clock = SystemClock()
    path = directory / "cache.sqlite3"
    await (await Database.open(path, clock)).close()  # the schema
    fill_cache(path, rows)
    baseline_path = directory / "cache-plain.sqlite3"
    shutil.copy(path, baseline_path)
    database = await Database.open(path, clock)
    try:
        cache = SqliteCache(database, clock, max_entries=rows)
        keys = iter(range(10**9))
        now = iso_timestamp(clock.now())

        async def put() -> None:
            await cache.put("search", f"new {next(keys)}", VALUE, ttl=3600)

        async def bare_insert() -> None:
            await database.execute(CACHE_INSERT, ("search", f"new {next(keys)}", VALUE, now, 4e9))

        await timed(put, 50)  # warm-up
        samples = await timed(put, puts)
        left = await database.fetchone("SELECT COUNT(*) FROM cache_entries")
        async_insert = await timed(bare_insert, puts)
    finally:
        await database.close()
    with plain_connection(baseline_path) as connection:
        plain = timed_sync(
            lambda: connection.execute(CACHE_INSERT, ("search", f"new {next(keys)}", VALUE, now, 4e9)), puts
        )
    print(f"cache put at {rows:,} entries ({puts} puts, each evicting one; {left[0]:,} entries after)")
    report("SqliteCache.put", samples)
    report("baseline: one INSERT via Database.execute", async_insert)
    report("baseline: one INSERT, plain sqlite3", plain)


async def bench_history(directory: Path, rows: int, loads: int) -> None:
    clock = SystemClock()
    path = directory / "history.sqlite3"
    await (await Database.open(path, clock)).close()
    fill_history(path, rows)
    database = await Database.open(path, clock)
    try:
        history = HistoryStore(database, clock)
        incoming = await history.record_incoming(CHAT, USER, rows + 1, "the newest question")
        assert incoming is not None
        context: list[object] = []

        async def load() -> None:
            context[:] = await history.context_for(incoming)

        await timed(load, 2)
        samples = await timed(load, loads)
        plan = [row["detail"] for row in await database.fetchall(f"EXPLAIN QUERY PLAN {CONTEXT_QUERY}", {"id": 1, "after": 0, "answers_before": 1})]
    finally:
        await database.close()
    with plain_connection(path) as connection:
        connection.execute(PLAIN_HISTORY, (1,)).fetchall()
        plain = timed_sync(lambda: connection.execute(PLAIN_HISTORY, (1,)).fetchall(), loads)
    print(f"history load of one conversation of {rows:,} rows ({loads} loads, {len(context):,} messages each)")
    print(f"  query plan: {'; '.join(plan)}")
    report("HistoryStore.context_for", samples, tail=0.9)
    report("baseline: SELECT the same rows, plain sqlite3", plain, tail=0.9)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--loads", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchboard-storage-") as temp:
        await bench_cache(Path(temp), args.rows, args.puts)
        await bench_history(Path(temp), args.rows, args.loads)


if __name__ == "__main__":
    asyncio.run(main())
