"""What the operator sees of upstream traffic: structured attempt logs and deprecation signals."""
import logging
from contextlib import AsyncExitStack

from tests.fakes import anthropic_server as anth
from tests.integration.telegram_bot import ANTHROPIC_KEY, USER, settings_for, start_telegram_bot


async def test_every_upstream_attempt_is_logged_with_status_latency_attempt_and_request_id(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="switchboard.upstream")
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Hi.")))
        claude.script(anth.api_error())
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=["anthropic:claude-test"]))
        await bot.user_says("hello")
    attempts = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("operation") == "stream claude-test"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["status"] != "ok" and attempts[1]["status"] == "ok"
    assert all(a["upstream"] == "anthropic" and "latency_ms" in a for a in attempts)
    assert attempts[1]["request_id"] == claude.request_ids[-1]
    assert all(ANTHROPIC_KEY not in r.getMessage() for r in caplog.records)


async def test_a_configured_model_the_provider_does_not_list_shows_in_status(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY))
        settings = settings_for(
            tmp_path, anthropic=claude, models=["anthropic:claude-test", "anthropic:claude-3-opus-retired"],
            admin_ids=frozenset({USER}),
        )
        bot = await start_telegram_bot(stack, settings)
        await bot.settle()
        await bot.clock.run_until(lambda: bool(bot.app.deprecations.list()))
        await bot.user_says("/status")
        assert "claude-3-opus-retired" in bot.texts()[-1]


async def test_the_anthropic_sdks_deprecated_model_warning_shows_in_status(tmp_path):
    from anthropic._data import DEPRECATED_MODELS  # the SDK's own list, so the test follows its updates

    model = next(iter(DEPRECATED_MODELS))
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, models=[model]))
        settings = settings_for(tmp_path, anthropic=claude, models=[f"anthropic:{model}"], admin_ids=frozenset({USER}))
        bot = await start_telegram_bot(stack, settings)
        await bot.user_says("hello")
        await bot.user_says("/status")
        status = bot.texts()[-1]
    assert "none seen" not in status
    assert f"anthropic: DeprecationWarning: The model '{model}' is deprecated and will reach end-of-life on" in status


async def test_deprecation_and_sunset_headers_are_logged_once_and_shown_in_status(tmp_path, caplog):
    from tests.fakes import openai_server as oai
    from tests.integration.telegram_bot import OPENAI_KEY

    caplog.set_level(logging.WARNING, logger="switchboard.deprecation")
    headers = {"Deprecation": "@1788220800", "Sunset": "Wed, 30 Jun 2027 00:00:00 GMT"}
    async with AsyncExitStack() as stack:
        gpt = await stack.enter_async_context(oai.FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("Hi.", headers=headers)))
        settings = settings_for(tmp_path, openai=gpt, models=["openai:gpt-test"], admin_ids=frozenset({USER}))
        bot = await start_telegram_bot(stack, settings)
        await bot.user_says("one")
        await bot.user_says("two")
        await bot.user_says("/status")
        assert "Sunset" in bot.texts()[-1]
    warnings = [r for r in caplog.records if r.name == "switchboard.deprecation" and "Sunset" in str(r.fields["detail"])]
    assert len(warnings) == 1
