"""REDIS_URL from the shell: the real process's check, status and console against a real redis-server."""
from __future__ import annotations

import socket

from tests.fakes.anthropic_server import FakeAnthropic
from tests.integration.test_cli import KEY, clean_env, run_cli


async def test_check_says_redis_answers_and_how_many_instances_share_the_limits(tmp_path, redis_url):
    async with FakeAnthropic(api_key=KEY) as claude:
        env = clean_env(
            tmp_path, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS="anthropic:claude-test",
            REDIS_URL=redis_url, INSTANCES="2",
        )
        code, out, err = await run_cli(["check"], env, tmp_path)
    assert code == 0, out + err
    [line] = [line for line in out.splitlines() if line[2:].startswith("redis:")]
    assert line.startswith("✓ redis: Redis ") and f"at {redis_url}; limits shared by 2 instances" in line


async def test_check_names_an_unreachable_redis_without_its_password(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    env = clean_env(tmp_path, REDIS_URL=f"redis://:redis-password-sentinel@127.0.0.1:{port}/0")
    code, out, err = await run_cli(["check"], env, tmp_path)
    assert code == 1, out + err
    [line] = [line for line in out.splitlines() if line[2:].startswith("redis:")]
    assert line.startswith(f"✗ redis: cannot reach Redis at redis://127.0.0.1:{port}/0 (connection refused): ")
    assert "sentinel" not in out + err


async def test_bad_redis_settings_stop_start_up_naming_them(tmp_path):
    env = clean_env(tmp_path, REDIS_URL="http://:redis-password-sentinel@127.0.0.1/0", INSTANCES="none")
    code, out, err = await run_cli(["console"], env, tmp_path, stdin="hello\n")
    assert code == 2 and out == ""
    assert "REDIS_URL must be a redis:// (or rediss://, unix://) URL" in err
    assert "INSTANCES must be a positive whole number, not 'none'" in err
    assert "sentinel" not in err


async def test_status_from_the_shell_says_whether_redis_answers(tmp_path, redis_server):
    env = clean_env(tmp_path, REDIS_URL=redis_server.url, INSTANCES="3")
    code, out, err = await run_cli(["console"], env, tmp_path, stdin="/status\n")
    assert code == 0, err
    assert f"Shared limits: shared through Redis at {redis_server.url} by 3 instances" in out

    code, out, err = await run_cli(["status"], env, tmp_path)
    assert code == 0, err
    assert f"Shared limits: Redis at {redis_server.url} reachable" in out

    redis_server.stop()
    code, out, err = await run_cli(["status"], env, tmp_path)
    assert code == 0, err
    assert f"Shared limits: Redis at {redis_server.url} unreachable (ConnectionError): a running bot keeps local 1/3" in out
    code, out, err = await run_cli(["console"], env, tmp_path, stdin="/status\n")
    assert code == 0, err
    assert "Redis unreachable since" in out and "local 1/3" in out
    assert "each instance now keeps 1/3 of every limit" in err  # logged once, as a warning
