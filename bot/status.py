"""`switchboard status`: the status report from the database alone, whether the bot runs or not."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from handlers.render import render_markdown
from handlers.status_report import StatusSources, build_status
from integrations.clock import Clock
from state.cache import SqliteCache
from state.engines import open_database
from state.instances import InstanceRegistry
from state.outbox import Outbox


async def status_from_database(
    db_path: Path,
    clock: Clock,
    *,
    shared_limits: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    database_url: str | None = None,
) -> str:
    """The report as plain text: what the database knows (nothing live: this process runs no bot),
    and whether Redis answers when REDIS_URL is set (`shared_limits`)."""
    if database_url is None and not db_path.is_file():
        # Opening would create an empty database, and report on that.
        return f"No database at {db_path}: the bot has not run with this state directory yet."
    # PostgreSQL's at `database_url` when given (DATABASE_URL), else SQLite's at `db_path`.
    database = await open_database(database_url, db_path, clock)
    try:
        sources = StatusSources(
            clock=clock,
            database=database,
            running=False,
            cache=SqliteCache(database, clock),
            outbox=Outbox(database, clock),
            shared_limits=shared_limits,
            instances=InstanceRegistry(database, clock),
        )
        report = await build_status(sources)
    finally:
        await database.close()
    return render_markdown(report).text
