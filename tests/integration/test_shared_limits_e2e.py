"""Two bots built by the real composition root share their limits through one real redis-server."""
from __future__ import annotations

from contextlib import AsyncExitStack

from bot.config import NotionSettings, RedisSettings, Secret
from integrations.clock import ManualClock
from tests.fakes import anthropic_server as anth
from tests.fakes.notion_server import FakeNotion
from tests.fakes.telegram import new_message_event
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, settings_for, start_telegram_bot

NOTION_TOKEN = "secret_shared-limits-notion-token-00000000000000"
CLAUDE = "anthropic:claude-test"
NOTES_EACH = 12


async def two_bots_saving_notes(tmp_path, redis: RedisSettings | None) -> FakeNotion:
    """Two bots (own state, own Telegram) save notes at once into one Notion that allows 3 a second."""
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        notion = await stack.enter_async_context(FakeNotion(token=NOTION_TOKEN, clock=clock))
        bots = []
        for name in ("one", "two"):
            settings = settings_for(
                tmp_path / name,
                notion=NotionSettings(Secret(NOTION_TOKEN), notion.database_id.replace("-", ""), notion.base_url),
                redis=redis,
            )
            bots.append(await start_telegram_bot(stack, settings, clock))
            # Each bot reads the database's schema as it starts (two requests). Time jumps while
            # a start waits on real I/O: a request still on its way would reach Notion late,
            # bunched with the next (an artefact of the manual clock). So each start is left to
            # finish with generous real time for I/O, and a quiet second follows.
            await clock.run_until(lambda count=2 * len(bots): len(notion.arrivals) >= count, poll=0.25)
            await clock.run_until_complete(clock.sleep(1.5), poll=0.25)
        for number in range(NOTES_EACH):
            for index, bot in enumerate(bots):
                text = f"/note Note {index}-{number}\nfrom bot {index}"
                await bot.client.deliver(new_message_event(chat_id=USER, sender_id=USER, text=text, message_id=next(MESSAGE_IDS)))
        await clock.run_until(lambda: len(notion.pages) == 2 * NOTES_EACH, poll=0.25)
        for bot in bots:
            await bot.settle()
        return notion


async def test_two_bots_sharing_redis_stay_within_notions_limit(tmp_path, redis_url):
    notion = await two_bots_saving_notes(tmp_path, RedisSettings(Secret(redis_url), instances=2))
    assert len(notion.pages) == 2 * NOTES_EACH
    assert [r for r in notion.refusals if r[0] == 429] == []


async def test_two_bots_without_redis_go_over_notions_limit(tmp_path):
    """The check above can fail: each bot alone keeps 3 a second, together they send 6."""
    notion = await two_bots_saving_notes(tmp_path, None)
    assert len(notion.pages) == 2 * NOTES_EACH
    assert [r for r in notion.refusals if r[0] == 429] != []


async def test_status_says_when_redis_is_unreachable_and_when_it_is_back(tmp_path, redis_server):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Hello there.")))
        settings = settings_for(
            tmp_path, anthropic=claude, models=[CLAUDE], admin_ids=frozenset({USER}),
            redis=RedisSettings(Secret(redis_server.url), instances=2),
        )
        bot = await start_telegram_bot(stack, settings, clock)
        await bot.user_says("/status")
        assert "Shared limits: shared through Redis at redis://127.0.0.1" in bot.texts()[-1]
        assert "by 2 instances" in bot.texts()[-1]

        redis_server.stop()
        await bot.user_says("Are you there?")  # finds Redis gone: answered all the same
        assert bot.texts()[-1] == "Hello there."
        await bot.user_says("/status")
        report = bot.texts()[-1]
        assert "Redis unreachable since 12:00:" in report and "local 1/2" in report
        assert "last error: ConnectionError" in report
        assert "anthropic: 25 requests a minute" in report  # half of the 50 the two share
        assert "anthropic: 200,000 tokens a minute" in report

        redis_server.start()
        await clock.run_until_complete(clock.sleep(120), poll=0.05)
        await bot.user_says("/status")
        assert "Shared limits: shared through Redis" in bot.texts()[-1]
        assert "anthropic: 50 requests a minute" in bot.texts()[-1]
