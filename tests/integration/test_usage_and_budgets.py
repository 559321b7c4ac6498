"""A user's own /usage, and budgets a day and a month, as users and admins see them.

Through the real composition root (`build_app`) on a fake Telegram and a fake Anthropic server
that counts what reaches it; /budget's wording is checked on the admin harness.
"""
from __future__ import annotations

import re
from contextlib import AsyncExitStack
from datetime import datetime, timezone

from bot.config import LimitSettings
from integrations.clock import ManualClock
from tests.fakes import anthropic_server as anth
from tests.harness import USER as HARNESS_USER
from tests.integration.telegram_bot import ANTHROPIC_KEY, USER, settings_for, start_telegram_bot
from tests.integration.test_admin import start_admin_bot

CLAUDE = "anthropic:claude-test"
ADMIN = 77
# One answer costs $1.00: the fake reports 10 input tokens, priced here at $100,000 a million;
# output tokens are free.
PRICES = (("claude-test", 100_000.0, 0.0),)
DAY = 86_400
BUDGET_HELP = (
    "Use /budget <user id> <USD> for a daily budget (e.g. /budget 123456789 2.50), /budget <user id> <USD> month "
    "for a monthly one (e.g. /budget 123456789 20 month); default in place of the amount goes back to the default "
    "(USER_DAILY_BUDGET_USD, USER_MONTHLY_BUDGET_USD), unlimited lifts the limit."
)


def november(day: int, hour: int = 12) -> ManualClock:
    return ManualClock(wall_start=datetime(2026, 11, day, hour, 0, tzinfo=timezone.utc))


async def start(stack: AsyncExitStack, tmp_path, *, daily=None, monthly=None, clock=None, client=None):
    claude = await stack.enter_async_context(
        anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Answer.", input_tokens=10))
    )
    settings = settings_for(
        tmp_path, anthropic=claude, models=[CLAUDE], admin_ids=frozenset({ADMIN}), llm_prices=PRICES,
        limits=LimitSettings(user_daily_budget_usd=daily, user_monthly_budget_usd=monthly, user_messages_per_minute=100),
    )
    bot = await start_telegram_bot(stack, settings, clock, client=client)
    return bot, claude


def without_waits(text: str) -> str:
    """`text` with each "(in 11 h 59 min)" as "(in …)": real I/O lets the manual clock jump a little."""
    return re.sub(r"\(in [0-9a-z ]+\)", "(in …)", text)


async def test_a_user_sees_their_own_usage_and_what_is_left_of_each_budget(tmp_path):
    async with AsyncExitStack() as stack:
        bot, claude = await start(stack, tmp_path, daily=5.0, monthly=20.0, clock=november(26))
        await bot.user_says("hello")
        await bot.user_says("/usage")
        assert bot.texts()[0] == "Answer."
        assert without_waits(bot.texts()[1]) == (
            "Today (26 November, UTC): 10 tokens in and 1 out, $1.00.\n"
            "$4.00 left of your $5.00 daily budget; it resets at 00:00 UTC (in …).\n\n"
            "This month (November 2026): 10 tokens in and 1 out, $1.00.\n"
            "$19.00 left of your $20.00 monthly budget; it resets on 1 December at 00:00 UTC (in …)."
        )
        assert "(in 4 days 12 h)" in bot.texts()[1]
        assert claude.calls == 1, "/usage calls no model"


async def test_a_user_who_has_used_nothing_gets_a_plain_answer(tmp_path):
    async with AsyncExitStack() as stack:
        bot, _ = await start(stack, tmp_path)
        await bot.user_says("/usage")
        assert bot.texts() == [
            "Today (26 November, UTC): nothing yet.\nNo daily budget.\n\n"
            "This month (November 2026): nothing yet.\nNo monthly budget."
        ]


async def test_over_the_monthly_budget_but_under_the_daily_one_no_request_reaches_the_model_until_the_first(tmp_path):
    async with AsyncExitStack() as stack:
        bot, claude = await start(stack, tmp_path, daily=5.0, monthly=3.0, clock=november(29))
        await bot.user_says("one")
        await bot.user_says("two")
        await bot.clock.advance(DAY)  # 30 November
        await bot.user_says("three")  # $1 today, $3 this month
        assert bot.texts() == ["Answer."] * 3 and claude.calls == 3
        await bot.user_says("four")
        refusal = bot.texts()[-1]
        assert without_waits(refusal) == (
            "You've used $3.00 of your $3.00 monthly budget; it resets on 1 December at 00:00 UTC (in …)."
        )
        assert re.search(r"\(in 1[12] h [0-9]+ min\)", refusal), refusal
        assert claude.calls == 3 and len(claude.message_requests) == 3, "refused before any upstream call"
        await bot.user_says("/usage")
        assert without_waits(bot.texts()[-1]) == (
            "Today (30 November, UTC): 10 tokens in and 1 out, $1.00.\n"
            "$4.00 left of your $5.00 daily budget; it resets at 00:00 UTC (in …).\n\n"
            "This month (November 2026): 30 tokens in and 3 out, $3.00.\n"
            "Your $3.00 monthly budget is used up; it resets on 1 December at 00:00 UTC (in …)."
        )
        await bot.clock.advance(DAY / 2)  # 1 December
        await bot.user_says("five")
        assert bot.texts()[-1] == "Answer." and claude.calls == 4, "a new month, a new budget"


async def test_the_daily_budget_still_refuses_under_a_monthly_one(tmp_path):
    async with AsyncExitStack() as stack:
        bot, claude = await start(stack, tmp_path, daily=1.0, monthly=100.0, clock=november(26))
        await bot.user_says("one")
        await bot.user_says("two")
        assert without_waits(bot.texts()[-1]) == (
            "You've used $1.00 of your $1.00 daily budget; it resets at 00:00 UTC (in …)."
        )
        assert claude.calls == 1


async def test_budget_month_set_by_an_admin_is_enforced_and_survives_a_restart(tmp_path):
    async with AsyncExitStack() as stack:
        async with AsyncExitStack() as first_run:
            bot, claude = await start(first_run, tmp_path, daily=5.0, clock=november(26))
            await bot.user_says(f"/budget {USER} 1 month", chat_id=ADMIN, user_id=ADMIN)
            assert bot.texts(ADMIN)[-1] == (
                f"User {USER}: monthly budget $1.00, in place of the default "
                "(no monthly budget, as USER_MONTHLY_BUDGET_USD is not set)."
            )
            await bot.user_says("one")
            await bot.user_says("two")
            assert bot.texts() == ["Answer.", "You've used $1.00 of your $1.00 monthly budget; "
                                   "it resets on 1 December at 00:00 UTC (in 4 days 12 h)."]
            assert claude.calls == 1
        bot, claude = await start(stack, tmp_path, daily=5.0, clock=bot.clock, client=bot.client)
        await bot.user_says(f"/budget {USER}", chat_id=ADMIN, user_id=ADMIN)
        assert bot.texts(ADMIN)[-1] == (
            f"User {USER}: daily budget $5.00 (the default, USER_DAILY_BUDGET_USD); "
            "monthly budget $1.00 (their own, set with /budget)."
        )
        await bot.user_says("three")
        assert "monthly budget" in bot.texts()[-1] and claude.calls == 0, "still refused after the restart"
        await bot.user_says(f"/budget {USER} default month", chat_id=ADMIN, user_id=ADMIN)
        assert bot.texts(ADMIN)[-1] == (
            f"User {USER} is back to the default: no monthly budget, as USER_MONTHLY_BUDGET_USD is not set."
        )
        await bot.user_says("four")
        assert bot.texts()[-1] == "Answer." and claude.calls == 1


async def test_a_non_admin_can_neither_set_budgets_nor_see_anyone_elses_usage(tmp_path):
    async with AsyncExitStack() as stack:
        bot, claude = await start(stack, tmp_path, monthly=2.0)
        await bot.user_says(f"/budget {USER} unlimited month")
        assert bot.texts()[-1].startswith("I don't know /budget.")
        await bot.user_says(f"/usage {ADMIN}")
        await bot.user_says("/usage all")
        assert bot.texts()[-2:] == ["Only admins can see another user's usage; /usage on its own shows yours."] * 2
        await bot.user_says(f"/usage {USER}")
        assert bot.texts()[-1].startswith("Today (26 November, UTC): nothing yet.")
        rows = await bot.app.database.fetchall("SELECT user_id FROM user_budgets")
        assert rows == [] and bot.app.services.limits.budget_for(USER, "month") == 2.0
        assert claude.calls == 0


async def test_status_and_an_admins_own_usage_name_the_monthly_budget_and_the_admin_forms(tmp_path):
    async with AsyncExitStack() as stack:
        bot, _ = await start(stack, tmp_path, daily=5.0, monthly=20.0)
        await bot.user_says("hello")
        await bot.user_says("/status", chat_id=ADMIN, user_id=ADMIN)
        assert "Settings: default budget $5.00 a day and $20.00 a month; 0 per-user budgets" in bot.texts(ADMIN)[-1]
        await bot.user_says("/usage", chat_id=ADMIN, user_id=ADMIN)
        assert bot.texts(ADMIN)[-1] == (
            "Today (26 November, UTC): nothing yet.\n\nThis month (November 2026): nothing yet.\n\n"
            "As an admin you have no budgets.\nEveryone's usage: /usage all; one user's: /usage <user id>."
        )
        await bot.user_says("/usage all", chat_id=ADMIN, user_id=ADMIN)
        assert f"User {USER}" in bot.texts(ADMIN)[-1]
        assert "(daily budget $5.00; monthly budget $20.00)" in bot.texts(ADMIN)[-1]


async def test_budget_month_says_what_it_did_and_refuses_bad_input_without_changing_anything(tmp_path):
    async with AsyncExitStack() as stack:
        admin = await start_admin_bot(stack, tmp_path, default_budget=1.0, monthly_budget=10.0)
        user = HARNESS_USER
        refusals = {
            f"/budget {user} month": f"Say the amount before the period, e.g. /budget {user} 20 month. {BUDGET_HELP}",
            f"/budget {user} 5 weekly": f"weekly is not a period: say day or month. {BUDGET_HELP}",
            f"/budget {user} lots month": f"lots is not an amount in US dollars. {BUDGET_HELP}",
            f"/budget {user} 5 month please": BUDGET_HELP,
        }
        for text, expected in refusals.items():
            assert await admin.admin_says(text) == expected
        assert admin.settings.budgets == {}
        assert await admin.admin_says(f"/budget {user} 2.50 month") == (
            f"User {user}: monthly budget $2.50, in place of the default (USER_MONTHLY_BUDGET_USD is $10.00 a month)."
        )
        assert await admin.admin_says(f"/budget {user} 0.25 daily") == (
            f"User {user}: daily budget $0.25, in place of the default (USER_DAILY_BUDGET_USD is $1.00 a day)."
        )
        assert await admin.admin_says(f"/budget {user}") == (
            f"User {user}: daily budget $0.25 (their own, set with /budget); monthly budget $2.50 (their own, set with /budget)."
        )
        assert await admin.admin_says(f"/budget {user} unlimited Month") == (
            f"User {user}: no monthly budget for this user, whatever the default "
            "(USER_MONTHLY_BUDGET_USD is $10.00 a month)."
        )
        assert await admin.admin_says("/budget") == (
            "Default: USER_DAILY_BUDGET_USD is $1.00 a day; USER_MONTHLY_BUDGET_USD is $10.00 a month.\n"
            f"• User {user}: daily budget $0.25 (their own, set with /budget); no monthly budget (their own, set with /budget)"
            f"\n\n{BUDGET_HELP}"
        )
        await admin.admin_says(f"/budget {user} default")
        assert (admin.limits.budget_for(user, "day"), admin.limits.budget_for(user, "month")) == (1.0, None)
