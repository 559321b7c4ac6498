"""Fixtures shared by every test: the state on each engine (SQLite, and PostgreSQL on a cluster
started once per session; tests/pg.py, tests/backends.py), and a redis-server started once per
session for the shared limits (tests/redis_server.py)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from integrations.clock import ManualClock
from state.database import Database
from tests.backends import PostgresBackend, SQLiteBackend, StateBackend
from tests.pg import PostgresCluster, server_binaries
from tests.redis_server import RedisServer


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


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    program = shutil.which("redis-server")
    if program is None:
        pytest.skip("redis-server is not installed here (Debian: apt-get install redis-server; `make test` does it)")
    server = RedisServer(program)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, emptied; running again afterwards if the test stopped or froze it."""
    redis_session.flush()
    yield redis_session
    redis_session.thaw()
    if not redis_session.running:
        redis_session.start()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
