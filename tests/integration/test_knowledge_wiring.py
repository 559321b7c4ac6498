"""The knowledge features as the composition root wires them: real policies, fake upstreams."""
from contextlib import AsyncExitStack

from bot.config import NotionSettings, Secret
from integrations.clock import ManualClock
from tests.fakes import anthropic_server as anth
from tests.fakes.notion_server import FakeNotion
from tests.integration.telegram_bot import ANTHROPIC_KEY, USER, settings_for, start_telegram_bot

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
        registry = bot.app.services.features.resilience.snapshot()
        assert "notion" in registry["breakers"] and "notion requests" in registry["limiters"]
        assert NOTION_TOKEN not in "\n".join(replies)


async def test_search_answers_with_sources_then_from_the_cache_and_feeds_follow_ups(tmp_path):
    from bot.config import LimitSettings, PerplexitySettings
    from tests.fakes.perplexity_server import FakePerplexity

    key = "pplx-sentinel-wiring-key-000000000000000"
    async with AsyncExitStack() as stack:
        search = await stack.enter_async_context(FakePerplexity(api_key=key))
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Follow-up answer.")))
        settings = settings_for(
            tmp_path, anthropic=claude, models=[CLAUDE],
            perplexity=PerplexitySettings(Secret(key), base_url=search.base_url),
            limits=LimitSettings(knowledge_timeout=10_000.0),
        )
        bot = await start_telegram_bot(stack, settings)
        await bot.user_says("/search rust async runtime")
        await bot.user_says("/search   Rust  async runtime ")
        first, second = bot.texts()[:2]
        assert "1. Tokio tutorial" in first and "2. Asynchronous Programming in Rust" in first
        assert "cached" in second.lower()
        assert search.calls == 1
        await bot.user_says("Which one should I read first?")
        history = claude.message_requests[-1].json["messages"]
        assert "rust async runtime" in history[0]["content"].lower()
        assert "tokio" in history[1]["content"].lower()
        assert key not in "\n".join(bot.texts())


async def test_health_probes_every_configured_upstream_with_latency(tmp_path):
    from bot.config import PerplexitySettings
    from tests.fakes.perplexity_server import FakePerplexity

    key = "pplx-sentinel-health-key-000000000000000"
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        search = await stack.enter_async_context(FakePerplexity(api_key=key))
        notion = await stack.enter_async_context(FakeNotion(token=NOTION_TOKEN, clock=clock))
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY))
        settings = settings_for(
            tmp_path, anthropic=claude, models=[CLAUDE], admin_ids=frozenset({USER}),
            perplexity=PerplexitySettings(Secret(key), base_url=search.base_url),
            notion=NotionSettings(Secret(NOTION_TOKEN), notion.database_id.replace("-", ""), notion.base_url),
        )
        bot = await start_telegram_bot(stack, settings, clock)
        await bot.user_says("/health")
        report = bot.texts()[-1]
        for name in ("anthropic", "perplexity", "notion"):
            assert name in report
        assert "ms" in report
        for secret in (key, NOTION_TOKEN, ANTHROPIC_KEY):
            assert secret not in report


async def test_search_counts_against_the_users_message_rate(tmp_path):
    from bot.config import LimitSettings, PerplexitySettings
    from tests.fakes.perplexity_server import FakePerplexity

    key = "pplx-sentinel-rate-key-0000000000000000000"
    async with AsyncExitStack() as stack:
        search = await stack.enter_async_context(FakePerplexity(api_key=key))
        settings = settings_for(
            tmp_path, perplexity=PerplexitySettings(Secret(key), base_url=search.base_url),
            limits=LimitSettings(user_messages_per_minute=1, knowledge_timeout=10_000.0),
        )
        bot = await start_telegram_bot(stack, settings)
        await bot.user_says("/search first question")
        await bot.user_says("/search second question")
        assert "slow down" in bot.texts()[-1].lower()
        assert search.calls == 1


async def test_check_probes_perplexity_without_a_web_search(tmp_path):
    import io

    from bot.check import check_command
    from bot.config import PerplexitySettings
    from tests.fakes.perplexity_server import FakePerplexity

    key = "pplx-sentinel-check-key-00000000000000000"
    async with FakePerplexity(api_key=key) as search, anth.FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        # A model too: `check` fails when none could answer.
        search_settings = PerplexitySettings(Secret(key), base_url=search.base_url)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], perplexity=search_settings)
        out = io.StringIO()
        code = await check_command(settings, out)
    assert code == 0, out.getvalue()
    assert "perplexity" in out.getvalue() and key not in out.getvalue()
    [request] = search.agent_requests
    assert "tools" not in request.json and request.json["max_output_tokens"] == 16


async def test_a_fresh_search_is_recorded_in_usage_and_a_cached_one_is_not(tmp_path):
    from bot.config import LimitSettings, PerplexitySettings
    from tests.fakes.perplexity_server import FakePerplexity

    key = "pplx-sentinel-usage-key-00000000000000000"
    async with AsyncExitStack() as stack:
        search = await stack.enter_async_context(FakePerplexity(api_key=key))
        settings = settings_for(
            tmp_path, perplexity=PerplexitySettings(Secret(key), base_url=search.base_url),
            limits=LimitSettings(knowledge_timeout=10_000.0),
        )
        bot = await start_telegram_bot(stack, settings)
        await bot.user_says("/search tokio runtime")
        await bot.user_says("/search tokio runtime")
        [line] = await bot.app.services.features.usage.lines(1, user_id=USER)
        assert "perplexity/sonar" in line.model
        assert line.requests == 1 and line.input_tokens > 0
        assert line.cost_usd > 0 and line.unpriced == 0


# --- Notion on first contact: what /health and `switchboard check` say ---------------------------

ORDINARY = {"Name": "title", "Tags": "multi_select"}


async def run_notion_check(tmp_path, notion: FakeNotion, token: str = NOTION_TOKEN) -> tuple[int, str]:
    import io

    from bot.check import check_command

    async with anth.FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:  # a model that answers: only Notion is in question
        settings = settings_for(
            tmp_path, anthropic=claude, models=[CLAUDE],
            notion=NotionSettings(Secret(token), notion.database_id, notion.base_url),
        )
        out = io.StringIO()
        code = await check_command(settings, out, clock=ManualClock())
    return code, out.getvalue()


def notion_line(out: str) -> str:
    [line] = [line for line in out.splitlines() if line[2:].startswith("notion:")]
    return line


async def test_check_adds_the_key_property_to_an_ordinary_database_and_names_optional_gaps(tmp_path):
    clock = ManualClock()
    async with FakeNotion(token=NOTION_TOKEN, clock=clock, properties={"Name": "title", "Tags": "select"}) as notion:
        code, out = await run_notion_check(tmp_path, notion)
        assert notion.properties["Switchboard ID"]["type"] == "rich_text"
        await clock.advance(1)  # clear of Notion's rate window
        code_again, out_again = await run_notion_check(tmp_path, notion)
    assert code == 0, out
    line = notion_line(out)
    assert line.startswith("✓ notion: database 'Notes' reachable, 1 data source; added the Text property \"Switchboard ID\"")
    assert '"Tags" is of type Select, so #hashtags are not saved in it' in line and "Multi-select" in line
    assert 'no URL property "Source"' in line
    assert code_again == 0 and "added" not in notion_line(out_again)


async def test_check_fails_when_the_key_property_cannot_be_added_and_says_how_to_fix_it(tmp_path):
    async with FakeNotion(token=NOTION_TOKEN, clock=ManualClock(), properties=dict(ORDINARY), update_content=False) as notion:
        code, out = await run_notion_check(tmp_path, notion)
    assert code == 1, out
    line = notion_line(out)
    assert line.startswith("✗ notion: notion: Notes are saved, but one whose answer from Notion is lost")
    assert "may be saved twice" in line and '"Update content"' in line and "restricted_resource" in line
    assert "Switchboard ID" not in notion.properties


async def test_check_names_notion_token_when_notion_refuses_it(tmp_path):
    async with FakeNotion(token=NOTION_TOKEN, clock=ManualClock()) as notion:
        code, out = await run_notion_check(tmp_path, notion, token="secret_revoked-notion-token-00000000000")
    assert code == 1
    assert "check NOTION_TOKEN" in notion_line(out) and "unreachable" not in out
    assert "secret_revoked" not in out


async def test_health_says_notes_may_be_saved_twice_when_the_key_cannot_be_added_and_notes_still_save(tmp_path):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        notion = await stack.enter_async_context(
            FakeNotion(token=NOTION_TOKEN, clock=clock, properties=dict(ORDINARY), update_content=False)
        )
        settings = settings_for(
            tmp_path, admin_ids=frozenset({USER}),
            notion=NotionSettings(Secret(NOTION_TOKEN), notion.database_id.replace("-", ""), notion.base_url),
        )
        bot = await start_telegram_bot(stack, settings, clock)
        await bot.user_says("/note Saved on first contact")
        await bot.user_says("/health")
        [page] = notion.pages
        saved, report = bot.texts()[-2:]
        assert saved == f"Saved to Notion: {page.url}"
        [line] = [line for line in report.splitlines() if "notion" in line]
        assert "may be saved twice" in line and "Update content" in line and "my-integrations" in line

        notion.update_content = True  # the owner ticks the capability
        await bot.user_says("/health")
        [line] = [line for line in bot.texts()[-1].splitlines() if "notion" in line]
        assert "✅" in line and notion.properties["Switchboard ID"]["type"] == "rich_text"


async def test_health_names_notion_token_when_notion_refuses_it(tmp_path):
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        notion = await stack.enter_async_context(FakeNotion(token=NOTION_TOKEN, clock=clock))
        settings = settings_for(
            tmp_path, admin_ids=frozenset({USER}),
            notion=NotionSettings(Secret(NOTION_TOKEN), notion.database_id.replace("-", ""), notion.base_url),
        )
        bot = await start_telegram_bot(stack, settings, clock)
        notion.token = "secret_revoked-in-notion"
        await bot.user_says("/health")
        await bot.user_says("/health")  # the breaker is open now: still the token, not an outage
        for report in bot.texts()[-2:]:
            [line] = [line for line in report.splitlines() if "notion" in line]
            assert "check NOTION" in line and "unreachable" not in line
