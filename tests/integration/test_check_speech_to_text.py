"""`switchboard check` probes speech to text like the other upstreams: configured? key accepted? model listed?

Through the real openai SDK against the fake transcription endpoint (an OpenAI-compatible server
with its model list); the output is what the operator reads, secrets never in it.
"""
import io
import socket
from dataclasses import replace

from bot.check import check_command
from bot.config import Secret, SttSettings
from integrations.clock import ManualClock
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.transcription_server import FakeTranscription
from tests.integration.telegram_bot import ANTHROPIC_KEY, OPENAI_KEY, settings_for
from tests.integration.test_cli import clean_env, run_cli

CLAUDE = "anthropic:claude-test"
STT_KEY = "sk-sentinel-check-stt-key-000000000000000"


async def run_check(settings) -> tuple[int, str]:
    out = io.StringIO()
    code = await check_command(settings, out, clock=ManualClock())
    return code, out.getvalue()


def stt_line(out: str) -> str:
    [line] = [line for line in out.splitlines() if "speech to text" in line]
    return line


async def test_a_working_endpoint_that_offers_the_model_passes(tmp_path):
    async with FakeTranscription(api_key=STT_KEY) as stt, FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        stt_settings = SttSettings("whisper-1", Secret(STT_KEY), base_url=stt.base_url)
        code, out = await run_check(settings_for(tmp_path, anthropic=claude, models=[CLAUDE], stt=stt_settings))
    assert code == 0, out
    assert stt_line(out) == f"✓ speech to text: {stt.base_url}: 1 model offered, including whisper-1 (0 ms)"
    # The console cannot receive voice messages: the settings line does not say voice is on.
    assert "voice on Telegram only (the console takes no voice messages)" in out.splitlines()[0]


async def test_a_refused_key_fails_naming_the_setting_and_never_shows_the_key(tmp_path):
    wrong = "sk-sentinel-wrong-stt-key-0000000000000"
    async with FakeTranscription(api_key=STT_KEY) as stt, FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        stt_settings = SttSettings("whisper-1", Secret(wrong), base_url=stt.base_url)
        code, out = await run_check(settings_for(tmp_path, anthropic=claude, models=[CLAUDE], stt=stt_settings))
    assert code == 1
    line = stt_line(out)
    assert line == "✗ speech to text: stt: credential refused (invalid_api_key); check STT_API_KEY (HTTP 401) (0 ms)"
    assert wrong not in out and STT_KEY not in out


async def test_a_key_taken_from_openai_api_key_is_named_as_that_setting(tmp_path):
    async with FakeTranscription(api_key=STT_KEY) as stt, FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        stt_settings = SttSettings("whisper-1", Secret(OPENAI_KEY), key_setting="OPENAI_API_KEY", base_url=stt.base_url)
        code, out = await run_check(settings_for(tmp_path, anthropic=claude, models=[CLAUDE], stt=stt_settings))
    assert code == 1 and "check OPENAI_API_KEY" in stt_line(out) and OPENAI_KEY not in out


async def test_a_model_the_endpoint_does_not_offer_fails_naming_stt_model(tmp_path):
    async with FakeTranscription(api_key=STT_KEY) as stt, FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        stt_settings = SttSettings("whisper-9", Secret(STT_KEY), base_url=stt.base_url)
        code, out = await run_check(settings_for(tmp_path, anthropic=claude, models=[CLAUDE], stt=stt_settings))
    assert code == 1
    assert "lacks whisper-9 (retired or misspelt? see STT_MODEL)" in stt_line(out)


async def test_an_endpoint_that_does_not_answer_names_the_url_tried(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        stt_settings = SttSettings("whisper-1", Secret(STT_KEY), base_url=f"http://127.0.0.1:{port}/v1")
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], stt=stt_settings)
        code, out = await run_check(replace(settings, llm_connect_timeout=2.0))
    assert code == 1
    assert f"tried http://127.0.0.1:{port}/v1/models (STT_BASE_URL)" in stt_line(out)


async def test_without_stt_model_the_line_says_voice_is_off_and_nothing_fails(tmp_path):
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        code, out = await run_check(settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
    assert code == 0
    assert stt_line(out) == "– speech to text: off (no STT_MODEL): voice messages get a reply saying so"


async def test_the_check_command_probes_speech_to_text_from_the_environment(tmp_path):
    async with FakeTranscription(api_key=STT_KEY) as stt, FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        env = clean_env(
            tmp_path, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS=CLAUDE,
            STT_MODEL="whisper-1", STT_BASE_URL=stt.base_url, STT_API_KEY=STT_KEY,
        )
        code, out, err = await run_cli(["check"], env, tmp_path)
    assert code == 0, out + err
    assert f"✓ speech to text: {stt.base_url}: 1 model offered, including whisper-1 (" in out
    assert STT_KEY not in out + err
