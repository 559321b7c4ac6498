"""/usage for everyone: one's own tokens, cost and budget left, today and this month (UTC).

Admins reach everyone's figures through the same command: /usage all, or /usage <user id> for
one user (handlers.admin.usage_report). Anybody else asking for another user's is told it is
for admins only.
"""
from __future__ import annotations

from handlers.admin import NO_USAGE, usage_report
from handlers.commands import Command
from handlers.limits import ADJECTIVE, UserLimits
from handlers.reply import reply
from handlers.services import Services
from handlers.transport import IncomingMessage
from handlers.voice import audio_words
from integrations.prices import format_usd
from state.periods import PERIODS, Period
from state.usage import Spending, UsageRecorder

OTHERS_ARE_FOR_ADMINS = "Only admins can see another user's usage; /usage on its own shows yours."
ADMIN_HINT = "Everyone's usage: /usage all; one user's: /usage <user id>."


async def usage(services: Services, message: IncomingMessage, args: str) -> None:
    recorder = services.features.usage
    if recorder is None:
        await reply(services, message, NO_USAGE)
        return
    asked = args.strip()
    if asked and asked != str(message.user_id):
        if not services.access.is_admin(message.user_id):
            await reply(services, message, OTHERS_ARE_FOR_ADMINS)
            return
        await usage_report(services, message, "" if asked.lower() == "all" else asked)
        return
    await reply(services, message, await own_usage(services, recorder, message.user_id))


async def own_usage(services: Services, recorder: UsageRecorder, user_id: int) -> str:
    """The user's own figures: what today and this month cost, and what is left of each budget."""
    spending = await recorder.spending(user_id)
    today = recorder.today()
    limits = services.limits if isinstance(services.limits, UserLimits) else None
    spans: dict[Period, tuple[str, Spending]] = {
        "day": (f"Today ({today.day} {today:%B}, UTC)", spending.today),
        "month": (f"This month ({today:%B %Y})", spending.month),
    }
    exempt = limits is not None and limits.exempt(user_id)
    lines: list[str] = []
    for period in PERIODS:
        label, spent = spans[period]
        lines += ["", f"{label}: {_amounts(spent)}"]
        if limits is not None and not exempt:
            lines.append(_budget_left(limits, user_id, period, spent.cost_usd))
    if exempt:
        lines += ["", "As an admin you have no budgets.", ADMIN_HINT]
    return "\n".join(lines[1:])


def _amounts(spent: Spending) -> str:
    """Tokens and what they cost; speech to text, billed by the minute, as minutes of audio."""
    if not spent.requests:
        return "nothing yet."
    tokens = f"{spent.input_tokens:,} tokens in and {spent.output_tokens:,} out"
    if not spent.audio_seconds and not spent.audio_cost_usd:
        return f"{tokens}, {format_usd(spent.cost_usd)}."
    audio = f"{audio_words(spent.audio_seconds)} transcribed, {format_usd(spent.audio_cost_usd)}"
    if not spent.input_tokens and not spent.output_tokens:
        return f"{audio}."
    return f"{tokens}, {format_usd(spent.cost_usd - spent.audio_cost_usd)}; {audio}."


def _budget_left(limits: UserLimits, user_id: int, period: Period, spent: float) -> str:
    budget = limits.budget_for(user_id, period)
    if budget is None:
        return f"No {ADJECTIVE[period]} budget."
    resets = f"it resets {limits.reset_note(period)}"
    if spent >= budget:
        return f"Your {format_usd(budget)} {ADJECTIVE[period]} budget is used up; {resets}."
    return f"{format_usd(budget - spent)} left of your {format_usd(budget)} {ADJECTIVE[period]} budget; {resets}."


def usage_commands() -> list[Command]:
    return [Command("usage", "your tokens, cost and budget left, today and this month", usage)]
