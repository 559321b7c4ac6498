"""`switchboard check` against a real redis-server and PostgreSQL: each way REDIS_URL or
DATABASE_URL can be wrong is one ✗ line that says what to fix, and never shows the password.
(Refused connections, a wrong PostgreSQL password and an unknown PostgreSQL database:
test_shared_limits_cli.py and test_postgres_state.py.)"""
from __future__ import annotations

import io
import socket
from contextlib import contextmanager
from typing import Iterator

import pytest
import redis

from bot.check import check_command
from bot.config import RedisSettings, Secret
from integrations.clock import ManualClock
from tests.integration.telegram_bot import settings_for
from tests.pg import PASSWORD
from tests.redis_server import RedisServer

REDIS_PASSWORD = "redis-pass-sentinel-9911"


@pytest.fixture
def redis_with_password(redis_session: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of its own that asks for REDIS_PASSWORD (the session's stays open)."""
    server = RedisServer(redis_session.program)
    server.start()
    client = redis.Redis(port=server.port)
    client.config_set("requirepass", REDIS_PASSWORD)
    client.close()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that takes connections and never answers: a hung server, or a firewall black hole."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


async def check_output(tmp_path, *, offline: bool = False, hangs: bool = False, **settings) -> tuple[int, str]:
    """`check`'s output on a manual clock. Time jumps to the probes' deadlines only when the server
    `hangs`: otherwise it stands still while the real server answers, however slow the machine."""
    clock, out = ManualClock(), io.StringIO()
    code = await clock.run_until_complete(
        check_command(settings_for(tmp_path, **settings), out, offline=offline, clock=clock, timeout=10),
        limit=3600.0 if hangs else 0.0,
    )
    return code, out.getvalue()


def only_line(output: str, name: str) -> str:
    [line] = [line for line in output.splitlines() if line[2:].startswith(f"{name}:")]
    return line


async def redis_check(tmp_path, url: str, *, hangs: bool = False) -> tuple[int, str]:
    code, output = await check_output(tmp_path, hangs=hangs, redis=RedisSettings(Secret(url), instances=2))
    assert REDIS_PASSWORD not in output
    return code, only_line(output, "redis")


async def test_check_names_a_wrong_redis_password(tmp_path, redis_with_password):
    code, line = await redis_check(tmp_path, f"redis://:not-it-4711@127.0.0.1:{redis_with_password.port}/0")
    assert code == 1 and "not-it-4711" not in line
    assert line.startswith(
        f"✗ redis: Redis at redis://127.0.0.1:{redis_with_password.port}/0 refused the password; check it in REDIS_URL ("
    )


async def test_check_says_redis_wants_a_password_the_url_lacks(tmp_path, redis_with_password):
    code, line = await redis_check(tmp_path, f"redis://127.0.0.1:{redis_with_password.port}/0")
    assert code == 1
    assert line.startswith(f"✗ redis: Redis at redis://127.0.0.1:{redis_with_password.port}/0 needs a password, which REDIS_URL lacks")


async def test_check_passes_with_the_right_redis_password(tmp_path, redis_with_password):
    code, line = await redis_check(tmp_path, f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_with_password.port}/0")
    assert line.startswith("✓ redis: Redis ") and "limits shared by 2 instances" in line


async def test_check_names_a_redis_database_the_server_does_not_have(tmp_path, redis_url):
    code, line = await redis_check(tmp_path, redis_url.removesuffix("/0") + "/99")
    assert code == 1
    assert "has no database 99" in line and "fix the number at the end of REDIS_URL" in line


async def test_check_gives_up_on_a_redis_that_never_answers_in_one_line(tmp_path):
    with silent_server() as port:
        code, line = await redis_check(tmp_path, f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0", hangs=True)
    assert code == 1
    assert line.startswith(f"✗ redis: Redis at redis://127.0.0.1:{port}/0 did not answer within 2 s")


async def test_check_gives_up_on_a_postgresql_that_never_answers_in_one_line(tmp_path):
    with silent_server() as port:
        code, output = await check_output(
            tmp_path, offline=True, hangs=True, database_url=Secret(f"postgresql://switchboard:{PASSWORD}@127.0.0.1:{port}/switchboard")
        )
    assert code == 1
    line = only_line(output, "database")
    assert line.startswith(f"✗ database: cannot reach PostgreSQL at postgresql://switchboard@127.0.0.1:{port}/switchboard (timed out)")
    assert PASSWORD not in output
