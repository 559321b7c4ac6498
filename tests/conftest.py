"""Fixtures shared by every test: the state on each engine (SQLite, and PostgreSQL on a cluster
started once per session; tests/pg.py, tests/backends.py)."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from integrations.resilience.clock import ManualClock
from state.database import Database
from tests.backends import PostgresBackend, SQLiteBackend, StateBackend
from tests.pg import PostgresCluster, server_binaries


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    if server_binaries() is None:
        pytest.skip("PostgreSQL's server is not installed here (Debian: apt-get install postgresql; `make test` does it)")
    cluster = PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_backend(postgres_cluster: PostgresCluster) -> PostgresBackend:
    """The cluster's shared database, emptied when first opened."""
    return PostgresBackend(postgres_cluster)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def state_db(state_backend: StateBackend, clock: ManualClock) -> AsyncIterator[Database]:
    """A migrated, empty database on each engine in turn, closed afterwards."""
    database = await state_backend.open(clock)
    yield database
    await database.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StateBackend:
    """The state's engine: each test using it runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return SQLiteBackend(tmp_path / "state" / "bot.db")
    backend: PostgresBackend = request.getfixturevalue("postgres_backend")
    return backend
