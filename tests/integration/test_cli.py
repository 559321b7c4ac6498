"""The command line as an operator uses it: a real process, real settings, a fake LLM server."""
import asyncio
import os
import sys
from pathlib import Path

from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ant-sentinel-cli-key-000000000000000000"


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "OPENAI_", "ANTHROPIC_", "LLM_", "ADMIN_", "ALLOW", "STATE_", "PERPLEXITY_", "NOTION_"))}
    env.update({"PYTHONPATH": str(ROOT), "STATE_DIR": str(tmp_path / "state"), "LLM_LOCAL": "off"})
    env.update(settings)
    return env


async def run_cli(args: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env, cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    return process.returncode, out.decode(), err.decode()


async def test_console_reads_one_message_per_line_and_prints_each_reply(tmp_path):
    async with FakeAnthropic(api_key=KEY, default=anth.Reply("**Four**, of course.")) as claude:
        env = clean_env(tmp_path, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS="anthropic:claude-test")
        code, out, err = await run_cli(["console"], env, tmp_path, stdin="what is 2+2?\n\n/model\n")
    assert code == 0, err
    replies = out.split("\n\n")
    assert replies[0] == "Four, of course."
    assert "anthropic:claude-test" in replies[1]
    assert out.endswith("\n\n")
    assert "Traceback" not in err and KEY not in err and KEY not in out
    assert claude.calls == 1


async def test_run_without_telegram_settings_uses_the_console_and_says_why(tmp_path):
    async with FakeAnthropic(api_key=KEY, default=anth.Reply("Hi!")) as claude:
        env = clean_env(tmp_path, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS="anthropic:claude-test")
        code, out, err = await run_cli([], env, tmp_path, stdin="hello\n")
    assert code == 0
    assert out == "Hi!\n\n"
    assert "TELEGRAM_BOT_TOKEN" in err


async def test_bad_settings_stop_start_up_with_one_message_naming_each(tmp_path):
    secret_token = "123456:" + "S" * 35
    env = clean_env(tmp_path, TELEGRAM_API_ID="not-a-number", TELEGRAM_BOT_TOKEN=secret_token, LLM_FIRST_TOKEN_TIMEOUT="-3")
    code, out, err = await run_cli(["run"], env, tmp_path)
    assert code == 2
    assert "TELEGRAM_API_ID" in err and "TELEGRAM_API_HASH" in err and "LLM_FIRST_TOKEN_TIMEOUT" in err
    assert "Traceback" not in err
    assert secret_token not in err and "S" * 35 not in err


async def test_help_lists_the_subcommands(tmp_path):
    code, out, err = await run_cli(["--help"], clean_env(tmp_path), tmp_path)
    assert code == 0
    assert "run" in out and "console" in out


async def test_env_file_option_is_read(tmp_path):
    async with FakeAnthropic(api_key=KEY, default=anth.Reply("From the env file.")) as claude:
        env_file = tmp_path / "custom.env"
        env_file.write_text(f"ANTHROPIC_API_KEY={KEY}\nANTHROPIC_BASE_URL={claude.base_url}\nLLM_MODELS=anthropic:claude-test\n")
        code, out, err = await run_cli(["--env-file", str(env_file), "console"], clean_env(tmp_path), tmp_path, stdin="hi\n")
    assert code == 0, err
    assert out == "From the env file.\n\n"


async def test_an_env_file_line_that_cannot_be_read_stops_start_up_naming_its_line(tmp_path):
    env_file = tmp_path / "bot.env"
    env_file.write_text(f"LLM_MODELS=anthropic:claude-test\nANTHROPIC_API_KEY='{KEY}\nLLM_FIRST_TOKEN_TIMEOUT=-3\n")
    code, out, err = await run_cli(["--env-file", str(env_file), "run"], clean_env(tmp_path), tmp_path)
    assert code == 2
    assert "line 2 (it seems to set ANTHROPIC_API_KEY)" in err and "LLM_FIRST_TOKEN_TIMEOUT" in err
    assert KEY not in err + out and "Traceback" not in err
