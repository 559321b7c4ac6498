"""The knowledge features as the composition root wires them: real policies, fake upstreams."""
from contextlib import AsyncExitStack

from bot.config import NotionSettings, Secret
from tests.fakes import anthropic_server as anth
from tests.fakes.notion_server import FakeNotion
from tests.integration.telegram_bot import ANTHROPIC_KEY, USER, settings_for, start_telegram_bot
from integrations.resilience.clock import ManualClock

NOTION_TOKEN = "secret_wiring-sentinel-notion-token-0000000000000"
CLAUDE = "anthropic:claude-test"


async def test_note_and_save_reach_notion_through_the_shared_layer(tmp_path):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        notion = await stack.enter_async_context(FakeNotion(token=NOTION_TOKEN, clock=clock))
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Paris is the capital.")))
        settings = settings_for(
            tmp_path, anthropic=claude, models=[CLAUDE],
            notion=NotionSettings(Secret(NOTION_TOKEN), notion.database_id.replace("-", ""), notion.base_url),
        )
        bot = await start_telegram_bot(stack, settings, clock)
        await bot.user_says("/note Groceries\nmilk and #errands")
        await bot.user_says("What is the capital of France?")
        await bot.user_says("/save")
        await bot.settle()
        assert len(notion.pages) == 2
        replies = bot.texts()
        assert sum("notion" in r.lower() for r in replies) >= 2
        registry = bot.app.services.extras["resilience"].snapshot()
        assert "notion" in registry["breakers"] and "notion requests" in registry["limiters"]
        assert NOTION_TOKEN not in "\n".join(replies)
