"""Prices, usage records, daily and monthly budgets and the message rate, on a real database and a manual clock."""
from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot.recent_errors_handler import RecentErrorsHandler
from handlers.access import AccessPolicy
from handlers.limits import MessageRate, UserLimits
from handlers.recent_errors import RecentErrors
from integrations.clock import ManualClock
from integrations.llm import ModelRef, Usage
from integrations.prices import PriceTable, format_usd
from integrations.redaction import Redactor
from state.admin_settings import AdminSettings, BudgetOverride
from state.db import Database
from state.usage import _SPENDING_QUERY, ErrorJournal, UsageRecorder

SONNET = ModelRef.parse("anthropic:claude-sonnet-4-6")
ADMIN = 9
USER = 1001
MILLION = 1_000_000


@pytest.fixture
def clock() -> ManualClock:
    # 23:00 UTC: an hour before the budgets reset.
    return ManualClock(wall_start=datetime(2026, 11, 26, 23, 0, tzinfo=timezone.utc))


@pytest.fixture
async def db(state_backend, clock):
    database = await state_backend.open(clock)
    yield database
    await database.close()


async def limits_for(db, clock, *, budget=None, monthly=None, per_minute=3, access=None):
    access = access or AccessPolicy(admin_ids=frozenset({ADMIN}), allowed_user_ids=frozenset({USER}))
    usage = UsageRecorder(db, clock, PriceTable())
    settings = await AdminSettings.load(db, access)
    limits = UserLimits(
        access=access, usage=usage, settings=settings, clock=clock,
        messages_per_minute=per_minute, default_daily_budget=budget, default_monthly_budget=monthly,
    )
    return limits, usage, settings


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("anthropic:claude-sonnet-4-6", 3 + 15),
        ("openai:gpt-5.1", 1.25 + 10),
        ("anthropic:claude-haiku-4-5", 1 + 5),
        ("openai:gpt-5-mini", 0.25 + 2),
    ],
)
def test_default_models_cost_their_list_price_per_million_tokens(model, expected):
    cost = PriceTable().cost(ModelRef.parse(model), Usage(MILLION, MILLION))
    assert cost.priced and cost.usd == pytest.approx(expected)


def test_local_models_are_free_and_unknown_models_are_flagged_unpriced():
    prices = PriceTable()
    assert prices.cost(ModelRef.parse("local:smollm2-135m"), Usage(MILLION, MILLION)).usd == 0
    assert prices.cost(ModelRef.parse("local:smollm2-135m"), Usage(1, 1)).priced
    unknown = prices.cost(ModelRef.parse("openai:mystery"), Usage(MILLION, MILLION))
    assert unknown.usd == 0 and not unknown.priced


def test_llm_prices_override_the_table_and_a_provider_specific_entry_wins():
    prices = PriceTable(overrides=[("gpt-5.1", 2.0, 20.0), ("mystery", 1.0, 1.0), ("openai:mystery", 4.0, 4.0)])
    assert prices.cost(ModelRef.parse("openai:gpt-5.1"), Usage(MILLION, 0)).usd == 2.0
    assert prices.cost(ModelRef.parse("openai:mystery"), Usage(MILLION, 0)).usd == 4.0
    assert prices.cost(ModelRef.parse("compatible:mystery"), Usage(MILLION, 0)).usd == 1.0


def test_a_dated_snapshot_costs_what_its_model_costs():
    cost = PriceTable().cost(ModelRef.parse("anthropic:claude-haiku-4-5-20251001"), Usage(MILLION, 0))
    assert cost.priced and cost.usd == 1.0


def test_small_amounts_do_not_read_as_zero():
    assert format_usd(4.5) == "$4.50"
    assert format_usd(0.0105) == "$0.01"
    assert format_usd(0.000105) == "$0.0001"
    assert format_usd(0.00000001) == "<$0.0001"
    assert format_usd(0) == "$0.00"
    assert format_usd(1234.5) == "$1,234.50"


async def test_usage_adds_up_per_user_model_and_day(db, clock):
    usage = UsageRecorder(db, clock, PriceTable())
    await usage.record(USER, [(SONNET, Usage(100_000, 10_000))])
    await usage.record(USER, [(SONNET, Usage(100_000, 10_000)), (ModelRef.parse("openai:gpt-5.1"), Usage(MILLION, 0))])
    await usage.record(2002, [(SONNET, Usage(1, 1))])
    [sonnet, gpt] = await usage.lines(days=1, user_id=USER)
    assert (sonnet.model, sonnet.requests, sonnet.input_tokens, sonnet.output_tokens) == (str(SONNET), 2, 200_000, 20_000)
    assert sonnet.cost_usd == pytest.approx(0.6 + 0.3)
    assert gpt.cost_usd == pytest.approx(1.25)
    spending = await usage.spending(USER)
    assert spending.today.cost_usd == pytest.approx(2.15) and spending.today.requests == 3
    assert spending.month == spending.today
    await clock.advance(3600)  # past midnight UTC
    spending = await usage.spending(USER)
    assert spending.today.cost_usd == 0 and spending.today.input_tokens == 0
    assert spending.month.cost_usd == pytest.approx(2.15), "the same month"
    await usage.record(USER, [(SONNET, Usage(MILLION, 0))])
    [week_sonnet, _] = await usage.lines(days=7, user_id=USER)
    assert week_sonnet.input_tokens == 1_200_000 and week_sonnet.requests == 3


async def test_transcriptions_are_kept_as_seconds_of_audio_and_their_cost_beside_the_tokens(db, clock):
    usage = UsageRecorder(db, clock, PriceTable())
    await usage.record(USER, [(SONNET, Usage(MILLION, 0))])
    await usage.record_audio(USER, "whisper-1", 90)
    await usage.record_audio(USER, "whisper-1", 30)
    today = (await usage.spending(USER)).today
    assert (today.requests, today.input_tokens, today.output_tokens) == (3, MILLION, 0)
    assert today.audio_seconds == 120 and round(today.audio_cost_usd, 6) == 0.012
    assert round(today.cost_usd, 6) == 3.012, "the budget sees both"
    [line] = [line for line in await usage.lines(days=1, user_id=USER) if line.model == "stt:whisper-1"]
    assert (line.requests, line.audio_seconds, line.input_tokens) == (2, 120, 0)


async def test_a_model_tried_twice_in_one_answer_counts_two_requests(db, clock):
    # The chain tries a model that stalled once more: its usage comes twice in one answer.
    usage = UsageRecorder(db, clock, PriceTable())
    gpt = ModelRef.parse("openai:gpt-5.1")
    await usage.record(USER, [(SONNET, Usage(100_000, 0)), (gpt, Usage(10, 1)), (SONNET, Usage(100_000, 10_000))])
    await usage.record(USER, [(SONNET, Usage(1, 1))])
    [sonnet, gpt_line] = await usage.lines(days=1, user_id=USER)
    assert (sonnet.requests, sonnet.input_tokens, sonnet.output_tokens) == (3, 200_001, 10_001)
    assert sonnet.cost_usd == pytest.approx(0.6 + 0.15, abs=1e-4)
    assert (gpt_line.requests, gpt_line.input_tokens) == (1, 10)


async def test_usage_older_than_the_window_is_left_out(db, clock):
    usage = UsageRecorder(db, clock, PriceTable())
    await usage.record(USER, [(SONNET, Usage(MILLION, 0))])
    await clock.advance(6 * 86_400)
    assert len(await usage.lines(days=7)) == 1
    await clock.advance(86_400)
    assert await usage.lines(days=7) == []


async def test_a_failed_attempt_without_tokens_is_not_counted_and_unpriced_models_are_flagged(db, clock):
    usage = UsageRecorder(db, clock, PriceTable())
    await usage.record(USER, [(SONNET, Usage(0, 0)), (ModelRef.parse("openai:mystery"), Usage(500, 50))])
    [line] = await usage.lines(days=1)
    assert line.model == "openai:mystery" and line.cost_usd == 0 and line.unpriced == 1


async def test_over_budget_user_is_told_what_was_spent_and_when_it_resets(db, clock):
    limits, usage, _ = await limits_for(db, clock, budget=0.5)
    assert await limits.check(USER) is None
    await usage.record(USER, [(SONNET, Usage(200_000, 0))])  # $0.60
    assert await limits.check(USER) == (
        "You've used $0.60 of your $0.50 daily budget; it resets at 00:00 UTC (in 1 h 0 min)."
    )
    await clock.advance(3600)
    assert await limits.check(USER) is None, "a new UTC day, a new budget"


async def test_budget_set_by_an_admin_replaces_the_default_for_that_user_only(db, clock):
    limits, usage, settings = await limits_for(db, clock, budget=10.0)
    await usage.record(USER, [(SONNET, Usage(MILLION, 0))])  # $3
    await usage.record(2002, [(SONNET, Usage(MILLION, 0))])
    await settings.set_budget(USER, 2.0, by=ADMIN)
    assert "$3.00 of your $2.00" in (await limits.check(USER) or "")
    assert await limits.check(2002) is None
    await settings.set_budget(USER, None, by=ADMIN)
    assert await limits.check(USER) is None, "unlimited"
    await settings.set_budget(USER, 0.0, by=ADMIN)
    assert await limits.check(USER) is not None
    await settings.clear_budget(USER)
    assert limits.budget_for(USER) == 10.0
    with pytest.raises(ValueError):
        await settings.set_budget(USER, float("nan"), by=ADMIN)


async def test_no_budget_means_no_limit(db, clock):
    limits, usage, _ = await limits_for(db, clock, budget=None, per_minute=100)
    await usage.record(USER, [(SONNET, Usage(100 * MILLION, 0))])
    assert await limits.check(USER) is None


async def test_rate_limit_lets_n_messages_a_minute_through_then_asks_to_slow_down(db, clock):
    limits, _, _ = await limits_for(db, clock, per_minute=3)
    for _ in range(3):
        assert await limits.check(USER) is None
        await clock.advance(10)
    refusal = await limits.check(USER)
    assert refusal == "Please slow down: I take at most 3 messages a minute from you. Try again in 30 s."
    await clock.advance(29)
    assert await limits.check(USER) is not None
    await clock.advance(1)
    assert await limits.check(USER) is None, "the first message left the sliding window"
    assert await limits.check(2002) is None, "each user has their own window"


async def test_refused_messages_do_not_use_up_the_rate(db, clock):
    limits, _, _ = await limits_for(db, clock, per_minute=2)
    await limits.check(USER)
    await limits.check(USER)
    for _ in range(20):
        assert await limits.check(USER) is not None
    await clock.advance(60)
    assert await limits.check(USER) is None
    assert await limits.check(USER) is None


async def test_admins_are_exempt_from_budget_and_rate(db, clock):
    limits, usage, _ = await limits_for(db, clock, budget=0.01, per_minute=1)
    await usage.record(ADMIN, [(SONNET, Usage(MILLION, MILLION))])
    for _ in range(5):
        assert await limits.check(ADMIN) is None


async def test_access_and_budget_changes_are_loaded_into_a_fresh_policy_after_restart(state_backend, clock):
    database = await state_backend.open(clock)
    policy = AccessPolicy(allowed_user_ids=frozenset({USER}))
    settings = await AdminSettings.load(database, policy)
    await settings.allow(555, by=ADMIN)
    await settings.deny(USER, by=ADMIN)
    await settings.set_budget(555, 1.5, by=ADMIN)
    await settings.deny(777, by=ADMIN)
    await settings.allow(777, by=ADMIN)
    await database.close()

    database = await state_backend.open(clock)
    fresh = AccessPolicy(allowed_user_ids=frozenset({USER}))
    reloaded = await AdminSettings.load(database, fresh)
    await database.close()
    assert fresh.granted == {555, 777} and fresh.revoked == {USER}
    assert fresh.is_allowed(555) and fresh.is_allowed(777) and not fresh.is_allowed(USER)
    assert reloaded.budget_override(555).usd == 1.5


async def test_recent_errors_are_redacted_kept_in_order_and_saved_for_the_shell(db, clock):
    secret = "sk-sentinel-unit-secret-000000000000"
    errors = RecentErrors(clock, Redactor([secret]), capacity=3, journal=ErrorJournal(db, keep=3))
    for number in range(4):
        errors.add("openai", f"failure {number} with key {secret}")
        await clock.advance(1)
    assert [e.message for e in errors.entries()] == [f"failure {n} with key [redacted]" for n in (1, 2, 3)]
    await errors.save()
    saved = await ErrorJournal(db).latest(2)
    assert [e.message for e in saved] == ["failure 2 with key [redacted]", "failure 3 with key [redacted]"]
    assert saved[-1].at.startswith("2026-11-26T23:00:03")


async def test_recent_errors_take_warnings_from_the_bots_loggers_only(clock):
    errors = RecentErrors(clock, Redactor())
    handler = RecentErrorsHandler(errors)
    ours, theirs = logging.getLogger("integrations.resilience.breaker"), logging.getLogger("somelib")
    for logger in (ours, theirs):
        logger.addHandler(handler)
    try:
        ours.warning("provider openai: circuit opened for %d s (%s)", 30, "Authorization: Bearer abcdefghijklmnop")
        ours.info("routine")
        theirs.error("not ours")
    finally:
        for logger in (ours, theirs):
            logger.removeHandler(handler)
    [entry] = errors.entries()
    assert entry.source == "integrations.resilience.breaker"
    assert "circuit opened for 30 s" in entry.message and "abcdefghijklmnop" not in entry.message


async def test_recent_errors_keep_the_facts_of_structured_upstream_records(clock):
    errors = RecentErrors(clock, Redactor())
    handler = RecentErrorsHandler(errors)
    upstream_log, deprecations = logging.getLogger("switchboard.upstream"), logging.getLogger("switchboard.deprecation")
    for logger in (upstream_log, deprecations):
        logger.addHandler(handler)
    try:
        upstream_log.warning(
            "upstream call", extra={"fields": {"upstream": "perplexity", "status": "unavailable", "http_status": 503}}
        )
        deprecations.warning("deprecation signal", extra={"fields": {"upstream": "openai", "detail": "Sunset: soon"}})
    finally:
        for logger in (upstream_log, deprecations):
            logger.removeHandler(handler)
    [entry] = errors.entries()
    assert entry.source == "perplexity"
    assert entry.message == "upstream call status=unavailable http_status=503"


async def test_idle_users_are_forgotten_by_the_rate_limiter(clock):
    rate = MessageRate(clock, limit=2)
    for user_id in range(100):
        assert rate.try_accept(user_id) is None
    assert rate.tracked_users == 100
    await clock.advance(61)
    assert rate.try_accept(1) is None
    assert rate.tracked_users == 1


def month_end_clock() -> ManualClock:
    # 23:00 UTC on the last day of November: an hour before both budgets reset.
    return ManualClock(wall_start=datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc))


async def test_the_month_spans_from_the_first_to_today_and_starts_again_on_the_first(state_backend):
    clock = ManualClock(wall_start=datetime(2026, 10, 31, 12, 0, tzinfo=timezone.utc))
    db = await state_backend.open(clock)
    try:
        usage = UsageRecorder(db, clock, PriceTable())
        await usage.record(USER, [(SONNET, Usage(MILLION, 0))])  # October: $3
        await clock.advance(86_400)  # 1 November
        await usage.record(USER, [(SONNET, Usage(MILLION, 0))])
        await clock.advance(29 * 86_400)  # 30 November
        await usage.record(USER, [(SONNET, Usage(0, MILLION))])  # $15
        await usage.record(2002, [(SONNET, Usage(MILLION, MILLION))])
        spending = await usage.spending(USER)
        assert spending.month.cost_usd == pytest.approx(18.0) and spending.month.requests == 2
        assert (spending.today.input_tokens, spending.today.output_tokens) == (0, MILLION)
        await clock.advance(86_400)  # 1 December
        assert (await usage.spending(USER)).month.requests == 0
    finally:
        await db.close()


async def test_over_the_monthly_budget_but_under_the_daily_one_is_refused_until_the_first(state_backend):
    clock = month_end_clock()
    db = await state_backend.open(clock)
    try:
        limits, usage, _ = await limits_for(db, clock, budget=5.0, monthly=4.0, per_minute=100)
        await usage.record(USER, [(SONNET, Usage(MILLION, 0))])  # $3 today
        assert await limits.check(USER) is None
        await usage.record(USER, [(SONNET, Usage(MILLION, 0))])  # $6 today and this month
        assert await limits.check(USER) == (
            "You've used $6.00 of your $4.00 monthly budget; it resets on 1 December at 00:00 UTC (in 1 h 0 min)."
        ), "both are spent: the month is the one to wait for"
        await clock.advance(3600)
        assert await limits.check(USER) is None, "a new month, a new budget"
    finally:
        await db.close()


async def test_a_monthly_budget_refusal_counts_the_days_until_the_first(db, clock):
    limits, usage, _ = await limits_for(db, clock, budget=10.0, monthly=1.0)
    await usage.record(USER, [(SONNET, Usage(MILLION, 0))])  # $3 on 26 November, under $10 a day
    assert await limits.check(USER) == (
        "You've used $3.00 of your $1.00 monthly budget; it resets on 1 December at 00:00 UTC (in 4 days 1 h)."
    )


async def test_a_users_own_monthly_budget_replaces_the_default_for_that_period_only(db, clock):
    limits, usage, settings = await limits_for(db, clock, budget=1.0, monthly=100.0)
    await settings.set_budget(USER, 2.0, period="month", by=ADMIN)
    assert (limits.budget_for(USER, "day"), limits.budget_for(USER, "month")) == (1.0, 2.0)
    assert limits.has_own_budget(USER, "month") and not limits.has_own_budget(USER, "day")
    await settings.set_budget(USER, 0.5, by=ADMIN)
    await settings.clear_budget(USER, "month")
    assert (limits.budget_for(USER, "day"), limits.budget_for(USER, "month")) == (0.5, 100.0)
    await settings.clear_budget(USER, "day")
    assert settings.budgets == {}
    await settings.set_budget(USER, None, period="month", by=ADMIN)
    await usage.record(USER, [(SONNET, Usage(100 * MILLION, 0))])
    assert "daily budget" in (await limits.check(USER) or ""), "unlimited a month, still limited a day"


async def test_daily_budgets_set_before_monthly_ones_existed_carry_over(state_backend, tmp_path, clock):
    before = tmp_path / "migrations"
    before.mkdir()
    for migration in sorted(Path(str(state_backend.migrations())).glob("*.sql"))[:6]:
        shutil.copy(migration, before)
    old = await state_backend.open(clock, migrations=before)
    await old.execute(
        "INSERT INTO user_budgets (user_id, daily_usd, changed_by, changed_at) VALUES (555, 1.5, 9, 'then'), (556, NULL, 9, 'then')"
    )
    await old.close()
    database = await state_backend.open(clock, migrations=state_backend.migrations())
    try:
        settings = await AdminSettings.load(database, AccessPolicy())
        assert settings.budgets == {555: {"day": BudgetOverride(1.5)}, 556: {"day": BudgetOverride(None)}}
    finally:
        await database.close()


async def test_a_months_spending_is_read_through_the_users_index_without_a_scan(tmp_path, clock):
    db = await Database.open(tmp_path / "bot.sqlite3", clock)  # SQLite's own query planner
    try:
        usage = UsageRecorder(db, clock, PriceTable())
        for user_id in range(40):  # rows, so the planner sees more than an empty table
            await usage.record(user_id, [(SONNET, Usage(10, 10))])
        await db.execute("ANALYZE")
        params = {"user_id": USER, "today": "2026-11-26", "first": "2026-11-01"}
        plan = [row["detail"] for row in await db.fetchall(f"EXPLAIN QUERY PLAN {_SPENDING_QUERY}", params)]
    finally:
        await db.close()
    assert any("usage_daily_by_user (user_id=? AND day>? AND day<?)" in step for step in plan), plan


def test_the_monthly_budget_setting_is_read_beside_the_daily_one_and_a_bad_value_is_named(tmp_path):
    from bot.config import ConfigError, load_settings

    limits = load_settings({"USER_DAILY_BUDGET_USD": "0.5", "USER_MONTHLY_BUDGET_USD": "10"}, cwd=tmp_path).limits
    assert (limits.user_daily_budget_usd, limits.user_monthly_budget_usd) == (0.5, 10.0)
    assert load_settings({}, cwd=tmp_path).limits.user_monthly_budget_usd is None
    with pytest.raises(ConfigError) as caught:
        load_settings({"USER_MONTHLY_BUDGET_USD": "ten"}, cwd=tmp_path)
    assert caught.value.problems == ["USER_MONTHLY_BUDGET_USD must be a positive amount of US dollars, not 'ten'."]
