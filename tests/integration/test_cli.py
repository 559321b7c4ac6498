"""The command line as an operator uses it: a real process, real settings, a fake LLM server."""
import asyncio
import os
import socket
import sys
from pathlib import Path

from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ant-sentinel-cli-key-000000000000000000"


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    ours = ("TELEGRAM_", "OPENAI_", "ANTHROPIC_", "LLM_", "ADMIN_", "ALLOW", "STATE_", "PERPLEXITY_", "NOTION_")
    # NOTIFY_SOCKET too: a test run under systemd must not look like the service to the bot.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours) and k != "NOTIFY_SOCKET"}
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


# --- errors an operator can act on ------------------------------------------------------------


async def test_a_mistyped_setting_is_named_with_the_closest_one_by_run_console_and_check(tmp_path):
    # LLM_MODEL is ignored, so the default model answers.
    async with FakeAnthropic(api_key=KEY, models=("claude-sonnet-4-6",), default=anth.Reply("Hi!")) as claude:
        env_file = tmp_path / ".env"
        env_file.write_text(f"ANTHROPIC_API_KEY={KEY}\nANTHROPIC_BASE_URL={claude.base_url}\nOPENAI_APIKEY={KEY}\n")
        env = clean_env(tmp_path, LLM_MODEL="anthropic:claude-test")
        runs = [await run_cli(args, env, tmp_path, stdin="hello\n") for args in (["run"], ["console"], ["check"])]
    typo = f"OPENAI_APIKEY (in {env_file}) is not a Switchboard setting, so it is ignored: did you mean OPENAI_API_KEY?"
    other = "LLM_MODEL (in the environment) is not a Switchboard setting, so it is ignored: did you mean LLM_MODELS?"
    for code, out, err in runs[:2]:
        assert code == 0 and out == "Hi!\n\n", err
        assert typo in err and other in err
    code, out, err = runs[2]
    assert code == 0, out + err
    assert f"⚠ settings: {typo}" in out and f"⚠ settings: {other}" in out
    assert out.rstrip().endswith("checks passed (2 warnings).")
    assert all(KEY not in out + err for _, out, err in runs)


async def test_check_fails_when_no_model_could_answer_and_names_the_settings(tmp_path):
    code, out, err = await run_cli(["check", "--offline"], clean_env(tmp_path), tmp_path)
    assert code == 1, out + err
    [line] = [line for line in out.splitlines() if line.startswith("✗")]
    assert line.startswith("✗ chat models: no model can answer")
    assert "ANTHROPIC_API_KEY" in line and "OPENAI_API_KEY" in line and "LLM_LOCAL=off" in line


async def test_under_systemd_without_telegram_settings_run_stops_with_exit_2_naming_them(tmp_path):
    env = clean_env(tmp_path, NOTIFY_SOCKET=str(tmp_path / "notify"), ANTHROPIC_API_KEY=KEY)
    code, out, err = await run_cli(["run"], env, tmp_path, stdin="hello\n")
    assert code == 2 and out == ""
    assert "TELEGRAM_API_ID, TELEGRAM_API_HASH and TELEGRAM_BOT_TOKEN are not set" in err and "systemd" in err
    assert "Starting in the console" not in err and KEY not in err
    code, out, err = await run_cli(["check", "--offline"], env, tmp_path)
    assert code == 2 and "✗ settings: 1 problem(s)" in out and "TELEGRAM_BOT_TOKEN" in err


async def test_check_suggests_the_fix_of_a_base_url_with_a_wrong_v1(tmp_path):
    async with FakeAnthropic(api_key=KEY) as claude, FakeOpenAI(api_key=KEY) as gpt:
        openai_root = gpt.base_url.removesuffix("/v1")
        env = clean_env(
            tmp_path, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=f"{claude.base_url}/v1", OPENAI_API_KEY=KEY,
            OPENAI_BASE_URL=openai_root, LLM_MODELS="anthropic:claude-test,openai:gpt-test",
        )
        code, out, err = await run_cli(["check"], env, tmp_path)
    assert code == 1, out + err
    assert f"try ANTHROPIC_BASE_URL={claude.base_url}" in _line(out, "✗ anthropic models:")
    assert "(HTTP 404)" in _line(out, "✗ anthropic models:")
    assert f"OpenAI-compatible servers answer under /v1: try OPENAI_BASE_URL={openai_root}/v1" in _line(out, "✗ openai models:")


async def test_check_names_the_url_it_could_not_reach_without_its_secret_parts(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    # Nothing listens there now. A URL may carry a password or a token: never shown.
    url = f"http://user:url-password-sentinel@127.0.0.1:{port}/v1?token=url-token-sentinel"
    env = clean_env(tmp_path, OPENAI_API_KEY=KEY, OPENAI_BASE_URL=url, LLM_MODELS="openai:gpt-test")
    code, out, err = await run_cli(["check"], env, tmp_path)
    assert code == 1, out + err
    assert f"tried http://127.0.0.1:{port}/v1/models (OPENAI_BASE_URL)" in _line(out, "✗ openai models:")
    assert "sentinel" not in out + err and KEY not in out + err


def _line(out: str, start: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith(start)]
    return line
