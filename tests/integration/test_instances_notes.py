"""Notes with several instances answering at once: every instance runs the delivery worker, and a
note reaches Notion once, its user told once, whichever instance's worker gets to it."""
from __future__ import annotations

from contextlib import AsyncExitStack

from bot.config import NotionSettings, Secret
from integrations.clock import ManualClock
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.notion_server import FakeNotion, unavailable
from tests.integration.telegram_bot import ANTHROPIC_KEY
from tests.integration.test_instances_answering import CHATS, POLL, says, two_instances

NOTION_TOKEN = "secret_instances-notes-token-0000000000000000"


def told(client, chat_id: int, start: str) -> int:
    return sum(1 for m in client.messages(chat_id) if m.text.startswith(start))


async def test_a_note_queued_while_notion_was_down_lands_once_though_both_instances_deliver(tmp_path, postgres_backend):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("ok")))
        notion = await stack.enter_async_context(FakeNotion(token=NOTION_TOKEN, clock=clock))
        settings = NotionSettings(Secret(NOTION_TOKEN), notion.database_id.replace("-", ""), notion.base_url)
        a, b = await two_instances(stack, tmp_path, postgres_backend, clock, claude, notion=settings)
        notion.down = unavailable()
        chats = CHATS[:3]
        for chat_id in chats:
            says(a.client, chat_id, f"/note groceries for {chat_id}")
        await clock.run_until(lambda: all(told(a.client, c, "Notion is unreachable") == 1 for c in chats), poll=POLL)

        notion.down = None
        # Both workers find the queued notes due at the same moment of the clock.
        await clock.run_until(lambda: all(told(a.client, c, "Saved to Notion") >= 1 for c in chats), poll=POLL)
        await clock.run_until_complete(clock.sleep(120), poll=POLL)

        for chat_id in chats:
            pages = [p for p in notion.pages if notion.title_of(p) == f"groceries for {chat_id}"]
            assert len(pages) == 1, (chat_id, [notion.title_of(p) for p in notion.pages])
            assert told(a.client, chat_id, "Saved to Notion") == 1, [m.text for m in a.client.messages(chat_id)]
