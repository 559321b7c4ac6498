"""What an admin sees and changes with /status, /health, /usage, /breaker, /cache, /allow, /deny, /budget."""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from bot.status import status_from_database
from bot.telegram.flood_governor import FloodGovernor
from handlers.admin import admin_commands
from handlers.basic import basic_commands
from handlers.health import HealthProbe
from handlers.limits import UserLimits
from handlers.notes import NotesFeature
from handlers.recent_errors import RecentErrors
from handlers.router import Router
from handlers.services import Features
from handlers.status_report import StatusContext
from handlers.transport import IncomingMessage
from handlers.usage import usage_commands
from integrations.clock import ManualClock
from integrations.errors import AuthFailed, RateLimited
from integrations.llm import ChatProvider, ModelRef, Usage
from integrations.openai import OpenAIChat
from integrations.prices import PriceTable
from integrations.redaction import Redactor
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.tokens import TokenBudget
from state.admin_settings import AdminSettings
from state.cache import SqliteCache
from state.usage import ErrorJournal, UsageRecorder
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.providers import Script, ScriptedProvider
from tests.harness import ADMIN, MESSAGE_IDS, USER, Bot, start_bot

SONNET = "anthropic:claude-sonnet-4-6"
SECRET = "sk-ant-sentinel-secret-0000000000000000"
STRANGER = 555


def COMMANDS() -> list:
    return basic_commands() + usage_commands() + admin_commands()


class FakeOutbox:
    def __init__(self, depth: int = 0) -> None:
        self._depth = depth

    async def depth(self) -> int:
        return self._depth


def notes_with(outbox: Any) -> NotesFeature:
    """The notes feature as far as /status sees it: its outbox (nothing is delivered)."""
    return NotesFeature(outbox, notion=None, delivery=None)  # type: ignore[arg-type]


@dataclass
class AdminBot:
    bot: Bot
    registry: ResilienceRegistry
    usage: UsageRecorder
    settings: AdminSettings
    limits: UserLimits
    errors: RecentErrors

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bot, name)

    def use(self, **features: Any) -> None:
        """Turn features on (e.g. `cache=...`), as the composition root would have built them."""
        self.bot.services = replace(self.bot.services, features=replace(self.bot.services.features, **features))
        self.bot.router = Router(self.bot.services, COMMANDS())

    async def admin_says(self, text: str) -> str:
        """An admin command, answered without letting the clock run; returns the reply."""
        before = len(self.bot.replies(ADMIN))
        await self.bot.router.handle(IncomingMessage(ADMIN, ADMIN, next(MESSAGE_IDS), text, True, True, "admin"))
        await self.bot.services.lanes.wait_all_idle()
        new = self.bot.replies(ADMIN)[before:]
        assert len(new) == 1, new
        return new[0]


async def start_admin_bot(
    stack: AsyncExitStack,
    state_dir: Path,
    providers: Sequence[tuple[str, ChatProvider]] = (),
    *,
    default_budget: float | None = None,
    monthly_budget: float | None = None,
    messages_per_minute: int = 10,
    secrets: Sequence[str] = (SECRET,),
    features: dict[str, Any] | None = None,
    health_probes: Sequence[HealthProbe] = (),
    **options: Any,
) -> AdminBot:
    """The harness bot plus everything issue 5 adds, wired as the composition root should."""
    bot = await start_bot(stack, state_dir, providers or [(SONNET, ScriptedProvider("anthropic"))], **options)
    services, clock, database = bot.services, bot.clock, bot.database
    registry = ResilienceRegistry(clock)
    usage = UsageRecorder(database, clock, PriceTable())
    settings = await AdminSettings.load(database, services.access)
    limits = UserLimits(
        access=services.access,
        usage=usage,
        settings=settings,
        clock=clock,
        messages_per_minute=messages_per_minute,
        default_daily_budget=default_budget,
        default_monthly_budget=monthly_budget,
    )
    redactor = Redactor(secrets)
    errors = RecentErrors(clock, redactor, journal=ErrorJournal(database))
    bot.services = replace(
        services,
        limits=limits,
        features=Features(
            resilience=registry,
            usage=usage,
            admin_settings=settings,
            status=StatusContext(started_at=clock.monotonic(), telegram_connected=lambda: True, errors=errors, redactor=redactor),
            **(features or {}),
        ),
        health_probes=tuple(health_probes),
    )
    bot.router = Router(bot.services, COMMANDS())
    return AdminBot(bot, registry, usage, settings, limits, errors)


async def test_status_shows_an_open_breaker_and_when_it_retries(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        breaker = admin.registry.register_breaker(CircuitBreaker("provider anthropic", admin.clock, cooldown=30.0))
        breaker.force_open("anthropic: overloaded (HTTP 529)")
        await admin.clock.advance(5)
        text = await admin.admin_says("/status")
        assert "provider anthropic: open, retries in 25 s" in text
        assert "overloaded (HTTP 529)" in text
        assert "Telegram: connected" in text and "up 5.0 s" in text


async def test_status_shows_a_half_open_breaker_after_its_cooldown(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        breaker = admin.registry.register_breaker(CircuitBreaker("provider openai", admin.clock, cooldown=30.0))
        breaker.force_open("refused")
        await admin.clock.advance(31)
        assert "provider openai: half-open" in await admin.admin_says("/status")


async def test_status_shows_an_active_flood_wait_with_its_remaining_seconds(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        governor = FloodGovernor(admin.clock)
        admin.registry.register_governor(governor)
        answers = iter([RateLimited("FLOOD_WAIT", retry_after=42), None])

        async def send() -> None:
            error = next(answers)
            if error:
                raise error

        waiting = asyncio.ensure_future(governor.run(777, True, send))
        await admin.clock.advance(2)
        text = await admin.admin_says("/status")
        assert "chat 777: paused, 40 s left" in text
        assert "1 flood wait since start" in text
        await admin.clock.advance(40)
        await waiting
        assert "none active" in await admin.admin_says("/status")


async def test_status_shows_rate_limiter_pause_cache_outbox_and_replies(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, features={"notes": notes_with(FakeOutbox(3))})
        limiter = admin.registry.register_limiter(RateLimiter("perplexity requests", 50, 60.0, admin.clock))
        limiter.pause(12)
        cache = SqliteCache(admin.database, admin.clock)
        admin.use(cache=cache)
        await cache.put("search", "q1", '"a"', ttl=300)
        await cache.put("notion_schema", "db", '"s"', ttl=300)
        await cache.get("search", "q1")
        await cache.get("search", "q2")
        text = await admin.admin_says("/status")
        assert "perplexity: 50 requests a minute, paused 12 s (the upstream asked us to wait)" in text
        assert "Cache: 2 entries, hit rate 50% (1 hits, 1 misses since start); by kind: notion_schema 1, search 1" in text
        assert "Outbox: 3 notes waiting" in text
        assert "Replies: 0 in progress, 0 queued" in text


async def test_status_says_each_rate_limit_as_a_pace_what_is_left_and_when_it_is_full_again(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        notion = admin.registry.register_limiter(RateLimiter("notion requests", 3, 1.0, admin.clock, burst=1))
        anthropic = admin.registry.register_limiter(RateLimiter("anthropic requests", 50, 60.0, admin.clock, burst=8))
        tokens = admin.registry.register_token_budget(TokenBudget("anthropic tokens", 400_000, admin.clock))
        admin.registry.register_limiter(RateLimiter("archive requests", 1, 120.0, admin.clock))
        await notion.acquire()
        queued = asyncio.ensure_future(notion.acquire())
        for _ in range(3):
            await anthropic.acquire()
        await tokens.reserve(100_000)
        await asyncio.sleep(0)
        lines = (await admin.admin_says("/status")).splitlines()
        assert "• notion: 3 requests a second, 0 left now, full again in 0.3 s; 1 call waiting" in lines
        assert "• anthropic: 50 requests a minute, 5 left now, full again in 3.6 s" in lines
        assert "• anthropic: 400,000 tokens a minute, 300,000 left now, full again in 15 s" in lines
        assert "• archive: 1 request every 2 min, 1 left now" in lines
        await admin.clock.advance(60)
        await queued
        lines = (await admin.admin_says("/status")).splitlines()
        assert "• notion: 3 requests a second, 1 left now" in lines
        assert "• anthropic: 50 requests a minute, 8 left now" in lines


async def test_status_tolerates_missing_cache_and_outbox_and_a_broken_source(tmp_path):
    class BrokenOutbox:
        async def depth(self) -> int:
            raise RuntimeError(SECRET)

    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, features={"notes": notes_with(BrokenOutbox())})
        text = await admin.admin_says("/status")
        assert "Cache: not configured" in text
        assert "outbox: unavailable (RuntimeError)" in text
        assert SECRET not in text
        assert "Usage today" in text, "the sections after a broken one are still shown"


async def test_status_shows_todays_usage_cost_and_unpriced_models(tmp_path):
    provider = ScriptedProvider("anthropic", default=Script(("hello",), usage=Usage(100_000, 20_000)))
    mystery = ScriptedProvider("openai", default=Script(("hi",), usage=Usage(10, 10)))
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, [(SONNET, provider), ("openai:mystery-model", mystery)])
        await admin.say("hello")
        await admin.say("/model 2")
        await admin.say("again")
        text = await admin.admin_says("/status")
        # 100k in at $3/M + 20k out at $15/M = $0.30 + $0.30
        assert "Usage today (2026-11-26 UTC): $0.60, 100,010 tokens in and 20,010 out, 2 answers for 1 user" in text
        assert "no price known for openai:mystery-model" in text


async def test_status_and_health_never_show_secrets(tmp_path):
    async def leaky_probe() -> None:
        raise AuthFailed(f"key {SECRET} was refused", upstream="perplexity", status=401)

    async def foreign_probe() -> None:
        raise ValueError(f"Authorization: Bearer {SECRET}")

    probes = [HealthProbe("perplexity", leaky_probe), HealthProbe("notion", foreign_probe)]
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, health_probes=probes)
        breaker = admin.registry.register_breaker(CircuitBreaker("provider anthropic", admin.clock))
        breaker.force_open(f"credential {SECRET} refused")
        admin.errors.add("anthropic", f"401 for x-api-key: {SECRET}")
        status = await admin.admin_says("/status")
        health = await admin.admin_says("/health")
        assert "provider anthropic: open" in status and "401 for" in status
        assert "perplexity: ❌ perplexity: key [redacted] was refused (HTTP 401)" in health
        assert "notion: ❌ failed (ValueError)" in health
        for text in (status, health):
            assert SECRET not in text
        rows = await admin.database.fetchall("SELECT message FROM recent_errors")
        assert rows and all(SECRET not in row["message"] for row in rows)


async def test_health_probes_every_upstream_at_once_each_within_its_timeout(tmp_path):
    calls: list[str] = []

    async def quick() -> None:
        calls.append("quick")
        await admin.clock.sleep(0.25)

    async def hung() -> None:
        calls.append("hung")
        await asyncio.Event().wait()

    async def also_hung() -> None:
        calls.append("also hung")
        await asyncio.Event().wait()

    probes = [HealthProbe("search", quick), HealthProbe("notes", hung), HealthProbe("other", also_hung)]
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, health_probes=probes)
        started = admin.clock.monotonic()
        await admin.say("/health", chat_id=ADMIN, user_id=ADMIN)
        [text] = admin.replies(ADMIN)
        assert "search: ✅ answered in 250 ms" in text
        assert "notes: ❌ no answer within 10 s (after 10000 ms)" in text
        assert "other: ❌ no answer within 10 s" in text
        assert admin.clock.monotonic() - started == 10.0, "probes run side by side, not one after another"
        assert sorted(calls) == ["also hung", "hung", "quick"]


async def test_health_lists_the_models_of_a_chat_provider_through_its_sdk(tmp_path):
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeOpenAI(api_key="sk-sentinel-good-key-000000000000"))
        good = OpenAIChat(api_key="sk-sentinel-good-key-000000000000", base_url=fake.base_url)
        bad = OpenAIChat(api_key="sk-sentinel-wrong-key-00000000000", base_url=fake.base_url, name="compatible")
        stack.push_async_callback(good.aclose)
        stack.push_async_callback(bad.aclose)
        admin = await start_admin_bot(
            stack, tmp_path, [("openai:gpt-test", good), ("openai:gpt-test-mini", good), ("openai:gpt-x", bad)],
            secrets=["sk-sentinel-good-key-000000000000", "sk-sentinel-wrong-key-00000000000"],
        )
        # Real I/O: the clock stands still, or the probes' timeouts would fire while the server answers.
        text = await admin.admin_says("/health")
        assert "openai: ✅" in text
        assert "compatible: ❌" in text and "401" in text
        assert text.count("✅") == 1, "one probe per provider, not per model"
        assert "sk-sentinel" not in text
        assert [r.path for r in fake.server.requests] == ["/v1/models", "/v1/models"]


async def test_usage_shows_tokens_and_cost_per_user_and_model_today_and_over_seven_days(tmp_path):
    provider = ScriptedProvider("anthropic", default=Script(("ok",), usage=Usage(1_000_000, 100_000)))
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, [(SONNET, provider)], default_budget=5.0)
        await admin.say("first")  # $3 + $1.50
        await admin.clock.advance(86_400)
        await admin.say("second")
        await admin.usage.record(2002, [(ModelRef.parse("openai:gpt-5-mini"), Usage(1_000_000, 0))])
        text = await admin.admin_says("/usage all")
        assert "User 1001" in text and "User 2002" in text
        assert (
            "anthropic:claude-sonnet-4-6: today 1,000,000 in + 100,000 out tokens, $4.50; "
            "7 days 2,000,000 in + 200,000 out tokens, $9.00"
        ) in text
        assert "Total: today $4.50, 7 days $9.00 (daily budget $5.00; no monthly budget)" in text
        only = await admin.admin_says(f"/usage {USER}")
        assert "User 1001" in only and "2002" not in only
        await admin.clock.advance(7 * 86_400)
        assert "Nobody has used any model since" in await admin.admin_says("/usage ALL")
        assert "numeric user id" in await admin.admin_says("/usage bob")


async def test_usage_of_a_user_who_used_nothing_says_they_have_not(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        await admin.say("hello")
        assert await admin.admin_says("/usage 12345") == "User 12345 has not used any model since 2026-11-20 (UTC)."
        assert await admin.admin_says("/usage 0") == "0 is not a Telegram user id: they start at 1. Example: /usage 123456789"


async def test_breaker_reset_closes_the_named_breaker_only(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        first = admin.registry.register_breaker(CircuitBreaker("provider anthropic", admin.clock))
        second = admin.registry.register_breaker(CircuitBreaker("model anthropic:claude-sonnet-4-6", admin.clock))
        first.force_open("down")
        second.force_open("down")
        assert "More than one breaker matches" in await admin.admin_says("/breaker reset anthropic")
        assert "No breaker is called" in await admin.admin_says("/breaker reset perplexity")
        reply = await admin.admin_says("/breaker reset provider anthropic")
        assert "Closed the circuit breaker provider anthropic" in reply
        assert first.state == "closed" and second.state == "open"
        listing = await admin.admin_says("/breaker")
        assert "model anthropic:claude-sonnet-4-6: open" in listing and "provider anthropic: closed" in listing
        await admin.admin_says("/breaker reset all")
        assert second.state == "closed"


async def test_cache_clear_removes_one_kind_or_everything(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        cache = SqliteCache(admin.database, admin.clock)
        admin.use(cache=cache)
        for key in ("a", "b"):
            await cache.put("search", key, "1", ttl=300)
        await cache.put("notion_schema", "db", "1", ttl=300)
        assert "Removed 2 cached search entries" in await admin.admin_says("/cache clear search")
        assert (await cache.stats()).entries == 1
        assert "Removed 1 cached entries" in await admin.admin_says("/cache clear")
        assert (await cache.stats()).entries == 0


async def test_cache_clear_names_the_kinds_and_refuses_one_that_does_not_exist(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        cache = SqliteCache(admin.database, admin.clock)
        admin.use(cache=cache)
        await cache.put("search", "q", "1", ttl=300)
        assert await admin.admin_says("/cache clear bogus") == (
            "The cache has no kind bogus. Kinds: search; /cache clear empties them all."
        )
        assert (await cache.stats()).entries == 1
        assert await admin.admin_says("/cache") == (
            "Use /cache clear to empty the cache, or /cache clear <kind> for one kind (search)."
        )
        assert await admin.admin_says("/cache clear Search") == "Removed 1 cached search entries."
        assert await admin.admin_says("/cache clear search") == "Removed 0 cached search entries.", "a known kind, even empty"


def test_every_kind_a_feature_caches_is_one_cache_clear_knows():
    from handlers.search import CACHE_KIND
    from state.cache import KINDS

    assert CACHE_KIND in KINDS


async def test_cache_command_says_so_when_there_is_no_cache(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        assert "No cache is configured" in await admin.admin_says("/cache clear")


async def test_allow_and_deny_take_effect_at_once_and_survive_a_restart(tmp_path):
    provider = ScriptedProvider("anthropic")
    async with AsyncExitStack() as first_run:
        admin = await start_admin_bot(first_run, tmp_path, [(SONNET, provider)])
        await admin.say("hi", chat_id=STRANGER, user_id=STRANGER)
        assert "private" in admin.replies(STRANGER)[-1]
        assert "User 555 may now use the bot" in await admin.admin_says(f"/allow {STRANGER}")
        await admin.say("hi again", chat_id=STRANGER, user_id=STRANGER)
        assert admin.replies(STRANGER)[-1] == "ok"
        assert "User 1001 can no longer use the bot" in await admin.admin_says(f"/deny {USER}")
        await admin.say("am I in?")
        assert "private" in admin.replies()[-1]
    async with AsyncExitStack() as second_run:
        admin = await start_admin_bot(second_run, tmp_path, [(SONNET, provider)])
        assert admin.services.access.is_allowed(STRANGER)
        assert not admin.services.access.is_allowed(USER), "a /deny outranks ALLOWED_USER_IDS, also after a restart"
        await admin.admin_says(f"/allow {USER}")
        assert admin.services.access.is_allowed(USER)


async def test_deny_refuses_to_lock_out_an_admin_and_checks_its_argument(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        assert "is an admin" in await admin.admin_says(f"/deny {ADMIN}")
        assert admin.services.access.is_allowed(ADMIN)
        assert "Use /deny <user id>" in await admin.admin_says("/deny everyone")
        assert "Use /allow <user id>" in await admin.admin_says("/allow -5")
        assert admin.settings.access.granted == set() and admin.settings.access.revoked == set()


async def test_allow_refuses_ids_that_cannot_be_telegram_users(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        help_text = "Use /allow <user id>, e.g. /allow 123456789 (the user can find their id by writing to me)."
        assert await admin.admin_says("/allow 0") == f"0 is not a Telegram user id: they start at 1. {help_text}"
        assert await admin.admin_says("/allow -1001234567890") == (
            f"-1001234567890 is the id of a group or channel, not of a user. {help_text}"
        )
        assert await admin.admin_says("/allow 99999999999999999999") == (
            f"99999999999999999999 is too large for a Telegram user id (at most 4,503,599,627,370,495). {help_text}"
        )
        assert await admin.admin_says("/allow") == help_text
        assert "is the id of a group or channel" in await admin.admin_says("/deny -5")
        assert "0 is not a Telegram user id" in await admin.admin_says("/budget 0 2")
        assert admin.settings.access.granted == set() and admin.settings.budgets == {}
        assert "User 4503599627370495 may now use the bot" in await admin.admin_says("/allow 4503599627370495")


async def test_budget_set_by_an_admin_is_enforced_and_survives_a_restart(tmp_path):
    async with AsyncExitStack() as first_run:
        admin = await start_admin_bot(first_run, tmp_path, default_budget=1.0)
        assert "User 1001: daily budget $0.50" in await admin.admin_says(f"/budget {USER} $0.50")
        await admin.usage.record(USER, [(ModelRef.parse(SONNET), Usage(200_000, 0))])  # $0.60
        refusal = await admin.limits.check(USER)
        assert refusal is not None and "You've used $0.60 of your $0.50 daily budget" in refusal
    async with AsyncExitStack() as second_run:
        admin = await start_admin_bot(second_run, tmp_path, default_budget=1.0)
        assert admin.limits.budget_for(USER) == 0.5
        assert "no daily budget" in await admin.admin_says(f"/budget {USER} unlimited")
        assert await admin.limits.check(USER) is None
        assert "USER_DAILY_BUDGET_USD is $1.00 a day" in await admin.admin_says(f"/budget {USER} default")
        listing = await admin.admin_says("/budget")
        assert "Default: USER_DAILY_BUDGET_USD is $1.00 a day; no monthly budget, as USER_MONTHLY_BUDGET_USD is not set." in listing
        assert "is not an amount in US dollars" in await admin.admin_says(f"/budget {USER} lots")
        assert "is not an amount" in await admin.admin_says(f"/budget {USER} -3")
        assert admin.limits.budget_for(USER) == 1.0


async def test_budget_default_and_unlimited_each_say_what_they_do(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, default_budget=1.0)
        assert await admin.admin_says(f"/budget {USER} 0.50") == (
            "User 1001: daily budget $0.50, in place of the default (USER_DAILY_BUDGET_USD is $1.00 a day)."
        )
        assert await admin.admin_says(f"/budget {USER}") == (
            "User 1001: daily budget $0.50 (their own, set with /budget); no monthly budget (USER_MONTHLY_BUDGET_USD is not set)."
        )
        assert await admin.admin_says(f"/budget {USER} default") == (
            "User 1001 is back to the default: USER_DAILY_BUDGET_USD is $1.00 a day."
        )
        assert admin.limits.budget_for(USER) == 1.0
        assert await admin.admin_says(f"/budget {USER}") == (
            "User 1001: daily budget $1.00 (the default, USER_DAILY_BUDGET_USD); "
            "no monthly budget (USER_MONTHLY_BUDGET_USD is not set)."
        )
        assert await admin.admin_says(f"/budget {USER} unlimited") == (
            "User 1001: no daily budget for this user, whatever the default (USER_DAILY_BUDGET_USD is $1.00 a day)."
        )
        assert admin.limits.budget_for(USER) is None


async def test_budget_default_says_when_there_is_no_default(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        assert await admin.admin_says(f"/budget {USER} default") == (
            "User 1001 is back to the default: no daily budget, as USER_DAILY_BUDGET_USD is not set."
        )


async def test_a_budget_set_on_an_admin_says_admins_are_exempt(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, default_budget=1.0)
        assert await admin.admin_says(f"/budget {ADMIN} 0.10") == (
            f"User {ADMIN}: daily budget $0.10, in place of the default (USER_DAILY_BUDGET_USD is $1.00 a day). "
            f"User {ADMIN} is an admin (ADMIN_IDS), and admins are exempt from budgets: "
            "this applies only once they are no longer one."
        )
        assert await admin.admin_says(f"/budget {ADMIN}") == f"User {ADMIN}: exempt from budgets as an admin."
        await admin.usage.record(ADMIN, [(ModelRef.parse(SONNET), Usage(200_000, 0))])  # $0.60
        assert await admin.limits.check(ADMIN) is None
        assert "Total: today $0.60, 7 days $0.60 (exempt from budgets as an admin)" in await admin.admin_says("/usage all")
        assert "As an admin you have no budgets." in await admin.admin_says("/usage")


async def test_admin_commands_are_listed_in_help_for_admins_only(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path)
        admin_help = await admin.admin_says("/help")
        await admin.say("/help")
        [user_help] = admin.replies()
        for name in ("status", "health", "breaker", "cache", "allow", "deny", "budget"):
            assert f"/{name}" in admin_help
            assert f"/{name}" not in user_help
        assert "/usage — your tokens, cost and budget left" in user_help, "everyone's"


async def test_status_from_the_database_alone_shows_usage_settings_and_saved_errors(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, default_budget=2.0)
        await admin.say("hello")
        await admin.admin_says(f"/allow {STRANGER}")
        await admin.admin_says(f"/budget {USER} 3")
        admin.errors.add("perplexity", f"Unavailable: HTTP 503 (token={SECRET})")
        await admin.errors.save()
        cache = SqliteCache(admin.database, admin.clock)
        await cache.put("search", "q", "1", ttl=300)
        clock = admin.clock
    text = await status_from_database(tmp_path / "bot.sqlite3", clock)
    assert "The bot is not running in this process" in text
    assert "Usage today (2026-11-26 UTC): $0.0001, 10 tokens in and 5 out, 1 answer for 1 user" in text
    assert "1 per-user budget (/budget); 1 allowed and 0 denied" in text
    assert "perplexity: Unavailable: HTTP 503 (token=[redacted])" in text
    assert "Cache: 1 entry, hit rate counted only while the bot runs" in text
    assert "Outbox: empty" in text
    assert "Circuit breakers" not in text and SECRET not in text


async def test_status_from_the_shell_does_not_create_a_missing_database(tmp_path):
    text = await status_from_database(tmp_path / "nowhere" / "bot.sqlite3", ManualClock())
    assert "No database at" in text
    assert not (tmp_path / "nowhere").exists()
