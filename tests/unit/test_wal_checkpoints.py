"""The bot's SQLite connection never checkpoints inside a commit (4-7 ms with the loop stopped);
a thread of its own copies the WAL back, so the -wal file stays bounded and nothing is lost."""
from __future__ import annotations

from pathlib import Path

from integrations.clock import ManualClock
from state.checkpoints import CHECK_EVERY, PAGES
from state.db import Database

ROW = "x" * 3000  # about a page each


async def test_a_thread_copies_the_wal_back_and_it_starts_over(tmp_path):
    path = tmp_path / "state.sqlite3"
    database = await Database.open(path, ManualClock())
    checkpoints = database.checkpoints
    assert checkpoints is not None
    await database.execute("CREATE TABLE filler (value TEXT NOT NULL)")
    wal = Path(f"{path}-wal")
    largest = 0
    for _ in range(3 * PAGES):
        await database.execute("INSERT INTO filler (value) VALUES (?)", (ROW,))
        await checkpoints.idle()  # what the loop would do meanwhile: let a started checkpoint end
        largest = max(largest, wal.stat().st_size)
    assert checkpoints.completed >= 2
    # Without them the WAL would hold every row written (3,000 pages and more).
    assert largest < (PAGES + 2 * CHECK_EVERY) * 4096 * 1.2
    await database.close()

    reopened = await Database.open(path, ManualClock())
    row = await reopened.fetchone("SELECT COUNT(*) FROM filler")
    assert row is not None and row[0] == 3 * PAGES
    await reopened.close()


async def test_the_connection_itself_never_checkpoints(tmp_path):
    database = await Database.open(tmp_path / "state.sqlite3", ManualClock())
    row = await database.fetchone("PRAGMA wal_autocheckpoint")
    assert row is not None and row[0] == 0
    await database.close()
