"""The operator's commands, for ADMIN_IDS only: status, health, usage, breakers, cache, access, budgets.

The router answers anybody else as if these commands did not exist; /usage itself is everyone's
(handlers.usage), and reaches `usage_report` here only for an admin. Changes made here
(/allow, /deny, /budget) are written to the database before they take effect, so they survive a
restart. Arguments are echoed back shortened and escaped: they are typed by a person, not trusted.
"""
from __future__ import annotations

import logging
import math
import re
from datetime import timedelta

from handlers.commands import Command
from handlers.health import chat_probes, format_health, run_probes
from handlers.limits import ADJECTIVE, UserLimits
from handlers.render import escape_markdown
from handlers.reply import reply
from handlers.services import Services
from handlers.status_report import StatusSources, build_status
from handlers.transport import IncomingMessage
from handlers.voice import audio_words
from integrations.prices import format_usd
from integrations.redaction import Redactor
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.snapshots import BreakerSnapshot
from state.admin_settings import AdminSettings
from state.cache import KINDS as CACHE_KINDS
from state.periods import PERIODS, Period
from state.usage import AUDIO_MODEL_PREFIX, UsageLine

log = logging.getLogger(__name__)

USAGE_DAYS = 7
ECHO_LIMIT = 40
MAX_BUDGET_USD = 1_000_000.0
# Telegram: "at most 52 significant bits"; negative ids are groups and channels.
MAX_USER_ID = 2**52 - 1
BUDGET_SETTINGS: dict[Period, str] = {
    "day": escape_markdown("USER_DAILY_BUDGET_USD"),
    "month": escape_markdown("USER_MONTHLY_BUDGET_USD"),
}
# What /budget takes after the amount; without one, the budget is the daily one.
PERIOD_WORDS: dict[str, Period] = {"day": "day", "daily": "day", "month": "month", "monthly": "month"}
_NUMBER = re.compile(r"-?[0-9]+")
_AMOUNT = re.compile(r"\$?([0-9]+(?:\.[0-9]+)?|\.[0-9]+)")


def _echo(text: str) -> str:
    short = text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "…"
    return escape_markdown(short)


def _parse_user_id(text: str) -> int | None:
    """`text` as a Telegram user id (1 to 2**52 - 1), else None; `_not_a_user_id` says why."""
    if not _NUMBER.fullmatch(text) or len(text) > 20:
        return None
    user_id = int(text)
    return user_id if 0 < user_id <= MAX_USER_ID else None


def _not_a_user_id(text: str) -> str:
    """Why `text` is not a user id, as the sentence that starts a refusal ("" for no argument)."""
    if not text:
        return ""
    if not _NUMBER.fullmatch(text):
        return f"{_echo(text)} is not a numeric user id."
    if text.startswith("-"):
        return f"{_echo(text)} is the id of a group or channel, not of a user."
    if int(text.lstrip("0") or "0") == 0:
        return "0 is not a Telegram user id: they start at 1."
    return f"{_echo(text)} is too large for a Telegram user id (at most {MAX_USER_ID:,})."


def status_sources(services: Services) -> StatusSources:
    """The live report's sources, from what the composition root put into `services`."""
    features, context, limits = services.features, services.features.status, _budget_policy(services)
    return StatusSources(
        clock=services.clock,
        running=True,
        started_at=context.started_at if context else None,
        telegram_connected=context.telegram_connected if context else None,
        resilience=features.resilience,
        lanes=services.lanes,
        cache=features.cache,
        outbox=features.notes.outbox if features.notes else None,
        usage=features.usage,
        settings=features.admin_settings,
        default_budget=limits.default_budget("day") if limits else None,
        default_monthly_budget=limits.default_budget("month") if limits else None,
        errors=context.errors if context else None,
        deprecations=context.deprecations if context else lambda: (),
        redactor=context.redactor if context else Redactor(),
        instances=context.instances if context else None,
        state=context.state if context else None,
    )


def _budget_policy(services: Services) -> UserLimits | None:
    """The limits when they include budgets (with usage recorded), else None (handlers.limits.NoLimits)."""
    return services.limits if isinstance(services.limits, UserLimits) else None


async def status(services: Services, message: IncomingMessage, args: str) -> None:
    await reply(services, message, await build_status(status_sources(services)))


async def health(services: Services, message: IncomingMessage, args: str) -> None:
    probes = chat_probes(services.chain.models) + list(services.health_probes)
    results = await run_probes(probes, services.clock)
    context = services.features.status
    await reply(services, message, format_health(results, context.redactor if context else Redactor()))


async def usage_report(services: Services, message: IncomingMessage, args: str) -> None:
    """Everyone's usage (no `args`) or one user's, per model, today and over `USAGE_DAYS` days."""
    recorder = services.features.usage
    if recorder is None:
        await reply(services, message, NO_USAGE)
        return
    user_id = None
    if args:
        user_id = _parse_user_id(args)
        if user_id is None:
            await reply(services, message, f"{_not_a_user_id(args)} Example: /usage 123456789")
            return
    today = {(line.user_id, line.model): line for line in await recorder.lines(days=1, user_id=user_id)}
    week = await recorder.lines(days=USAGE_DAYS, user_id=user_id)
    first_day = recorder.today() - timedelta(days=USAGE_DAYS - 1)
    if not week:
        who = f"User {user_id} has not" if user_id is not None else "Nobody has"
        await reply(services, message, f"{who} used any model since {first_day.isoformat()} (UTC).")
        return
    limits = _budget_policy(services)
    lines = [f"**Usage** today ({recorder.today().isoformat()} UTC) and over {USAGE_DAYS} days (since {first_day.isoformat()})"]
    unpriced: set[str] = set()
    for uid in sorted({line.user_id for line in week}):
        mine = [line for line in week if line.user_id == uid]
        lines += ["", f"**User {uid}**"]
        for line in mine:
            lines.append(
                f"• {escape_markdown(line.model)}: today {_amounts(today.get((uid, line.model)))}; "
                f"{USAGE_DAYS} days {_amounts(line)}"
            )
            if line.unpriced:
                unpriced.add(line.model)
        today_cost = sum(line.cost_usd for (u, _), line in today.items() if u == uid)
        total = f"Total: today {format_usd(today_cost)}, {USAGE_DAYS} days {format_usd(sum(line.cost_usd for line in mine))}"
        if limits is not None:
            total += f" ({_describe_budget(limits, uid)})"
        lines.append(total)
    if unpriced:
        names = ", ".join(escape_markdown(model) for model in sorted(unpriced))
        lines += ["", f"⚠️ No price is known for {names}: their cost is counted as $0. Set LLM\\_PRICES to price them."]
    await reply(services, message, "\n".join(lines))


NO_USAGE = "Usage is not being recorded in this bot."


def _amounts(line: UsageLine | None) -> str:
    if line is None:
        return "nothing"
    if line.model.startswith(AUDIO_MODEL_PREFIX):  # speech to text is billed by the minute
        return f"{audio_words(line.audio_seconds)}, {format_usd(line.cost_usd)}"
    return f"{line.input_tokens:,} in + {line.output_tokens:,} out tokens, {format_usd(line.cost_usd)}"


BREAKER_HELP = "Use /breaker to list the breakers, /breaker reset <name> to close one, /breaker reset all to close them all."


async def breaker(services: Services, message: IncomingMessage, args: str) -> None:
    registry = services.features.resilience
    if registry is None:
        await reply(services, message, "No circuit breakers are registered.")
        return
    names = list(_breakers(registry))
    verb, _, target = args.partition(" ")
    target = target.strip()
    if not args or verb.lower() == "list":
        await reply(services, message, _breaker_list(registry) + "\n\n" + BREAKER_HELP)
        return
    if verb.lower() != "reset" or not target:
        await reply(services, message, BREAKER_HELP)
        return
    if target.lower() == "all":
        for name in names:
            registry.reset_breaker(name)
        log.info("admin %s reset every breaker", message.user_id)
        await reply(services, message, f"Closed all {len(names)} circuit breakers.")
        return
    matches = [name for name in names if name.lower() == target.lower()] or [
        name for name in names if target.lower() in name.lower()
    ]
    if len(matches) != 1:
        problem = "No breaker is called" if not matches else "More than one breaker matches"
        listing = ", ".join(f"`{name}`" for name in (matches or names)) or "none"
        await reply(services, message, f"{problem} {_echo(target)}. Breakers: {listing}.")
        return
    registry.reset_breaker(matches[0])
    log.info("admin %s reset breaker %s", message.user_id, matches[0])
    await reply(services, message, f"Closed the circuit breaker `{matches[0]}`: calls go through again.")


def _breakers(registry: ResilienceRegistry) -> dict[str, BreakerSnapshot]:
    """Each breaker's snapshot by name (as `CircuitBreaker.snapshot` gives it)."""
    return registry.snapshot()["breakers"]


def _breaker_list(registry: ResilienceRegistry) -> str:
    breakers = _breakers(registry)
    if not breakers:
        return "No circuit breakers are registered."
    lines = ["**Circuit breakers**"]
    for name, snap in breakers.items():
        state = str(snap["state"]).replace("_", "-")
        line = f"• `{name}`: {state}"
        if state == "open":
            line += f", retries in {math.ceil(float(snap['retry_in']))} s"
        lines.append(line)
    return "\n".join(lines)


async def cache(services: Services, message: IncomingMessage, args: str) -> None:
    store = services.features.cache
    if store is None:
        await reply(services, message, "No cache is configured.")
        return
    verb, _, asked = args.partition(" ")
    asked = asked.strip()
    # What the features store, and whatever else the table holds (e.g. from an older version).
    kinds = sorted(set(CACHE_KINDS) | set((await store.stats()).by_kind))
    listing = ", ".join(escape_markdown(kind) for kind in kinds)
    if verb.lower() != "clear":
        await reply(services, message, f"Use /cache clear to empty the cache, or /cache clear <kind> for one kind ({listing}).")
        return
    kind = next((kind for kind in kinds if kind.lower() == asked.lower()), None) if asked else None
    if asked and kind is None:
        await reply(services, message, f"The cache has no kind {_echo(asked)}. Kinds: {listing}; /cache clear empties them all.")
        return
    removed = await store.clear(kind)
    log.info("admin %s cleared the cache (%s): %d entries", message.user_id, kind or "all kinds", removed)
    what = f"{escape_markdown(kind)} entries" if kind else "entries"
    await reply(services, message, f"Removed {removed} cached {what}.")


ALLOW_HELP = "Use /allow <user id>, e.g. /allow 123456789 (the user can find their id by writing to me)."
DENY_HELP = "Use /deny <user id>, e.g. /deny 123456789."


def _refusal(args: str, help_text: str) -> str:
    return f"{_not_a_user_id(args)} {help_text}".strip()


async def allow(services: Services, message: IncomingMessage, args: str) -> None:
    settings = services.features.admin_settings
    user_id = _parse_user_id(args)
    if settings is None:
        await reply(services, message, "Access cannot be changed at runtime in this bot.")
        return
    if user_id is None:
        await reply(services, message, _refusal(args, ALLOW_HELP))
        return
    await settings.allow(user_id, by=message.user_id)
    log.info("admin %s allowed user %s", message.user_id, user_id)
    await reply(services, message, f"User {user_id} may now use the bot.")


async def deny(services: Services, message: IncomingMessage, args: str) -> None:
    settings = services.features.admin_settings
    user_id = _parse_user_id(args)
    if settings is None:
        await reply(services, message, "Access cannot be changed at runtime in this bot.")
        return
    if user_id is None:
        await reply(services, message, _refusal(args, DENY_HELP))
        return
    if services.access.is_admin(user_id):
        await reply(services, message, f"User {user_id} is an admin (ADMIN_IDS); remove them there instead.")
        return
    await settings.deny(user_id, by=message.user_id)
    log.info("admin %s denied user %s", message.user_id, user_id)
    await reply(services, message, f"User {user_id} can no longer use the bot.")


BUDGET_HELP = (
    "Use /budget <user id> <USD> for a daily budget (e.g. /budget 123456789 2.50), /budget <user id> <USD> month "
    "for a monthly one (e.g. /budget 123456789 20 month); default in place of the amount goes back to the default "
    f"({BUDGET_SETTINGS['day']}, {BUDGET_SETTINGS['month']}), unlimited lifts the limit."
)
ADMIN_EXEMPT = "exempt from budgets as an admin"


async def budget(services: Services, message: IncomingMessage, args: str) -> None:
    settings = services.features.admin_settings
    limits = _budget_policy(services)
    if settings is None or limits is None:
        await reply(services, message, "Budgets are not enabled in this bot.")
        return
    parts = args.split()
    if not parts:
        await reply(services, message, _budget_list(settings, limits) + "\n\n" + BUDGET_HELP)
        return
    user_id = _parse_user_id(parts[0])
    if user_id is None or len(parts) > 3:
        await reply(services, message, _refusal(parts[0] if user_id is None else "", BUDGET_HELP))
        return
    if len(parts) == 1:
        await reply(services, message, f"User {user_id}: {_describe_budget(limits, user_id, sources=True)}.")
        return
    choice = parts[1].lower()
    if choice in PERIOD_WORDS:
        example = f"/budget {user_id} 20 {PERIOD_WORDS[choice]}"
        await reply(services, message, f"Say the amount before the period, e.g. {example}. {BUDGET_HELP}")
        return
    period = PERIOD_WORDS.get(parts[2].lower()) if len(parts) == 3 else "day"
    if period is None:
        await reply(services, message, f"{_echo(parts[2])} is not a period: say day or month. {BUDGET_HELP}")
        return
    adjective, default = ADJECTIVE[period], _describe_default(limits, period)
    if choice == "default":
        await settings.clear_budget(user_id, period)
        done = f"User {user_id} is back to the default: {default}."
    elif choice == "unlimited":
        await settings.set_budget(user_id, None, period=period, by=message.user_id)
        done = f"User {user_id}: no {adjective} budget for this user, whatever the default ({default})."
    else:
        amount = _parse_amount(parts[1])
        if amount is None:
            await reply(services, message, f"{_echo(parts[1])} is not an amount in US dollars. {BUDGET_HELP}")
            return
        await settings.set_budget(user_id, amount, period=period, by=message.user_id)
        done = f"User {user_id}: {adjective} budget {format_usd(amount)}, in place of the default ({default})."
    log.info("admin %s set the %s budget of user %s to %s", message.user_id, adjective, user_id, choice)
    if limits.exempt(user_id):
        done += (
            f" User {user_id} is an admin (ADMIN\\_IDS), and admins are exempt from budgets: "
            "this applies only once they are no longer one."
        )
    await reply(services, message, done)


def _parse_amount(text: str) -> float | None:
    match = _AMOUNT.fullmatch(text)
    if match is None:
        return None
    amount = float(match[1])
    return amount if amount <= MAX_BUDGET_USD else None


def _describe_budget(limits: UserLimits, user_id: int, *, sources: bool = False) -> str:
    """What limits `user_id`, a day and a month; with `sources`, also whether each is their own or the default."""
    if limits.exempt(user_id):
        return ADMIN_EXEMPT
    parts = []
    for period in PERIODS:
        usd = limits.budget_for(user_id, period)
        text = f"{ADJECTIVE[period]} budget {format_usd(usd)}" if usd is not None else f"no {ADJECTIVE[period]} budget"
        if sources and limits.has_own_budget(user_id, period):
            text += " (their own, set with /budget)"
        elif sources:
            unset = limits.default_budget(period) is None
            text += f" ({BUDGET_SETTINGS[period]} is not set)" if unset else f" (the default, {BUDGET_SETTINGS[period]})"
        parts.append(text)
    return "; ".join(parts)


def _describe_default(limits: UserLimits, period: Period) -> str:
    default, setting = limits.default_budget(period), BUDGET_SETTINGS[period]
    if default is None:
        return f"no {ADJECTIVE[period]} budget, as {setting} is not set"
    return f"{setting} is {format_usd(default)} a {period}"


def _budget_list(settings: AdminSettings, limits: UserLimits) -> str:
    lines = [f"Default: {'; '.join(_describe_default(limits, period) for period in PERIODS)}."]
    for user_id in sorted(settings.budgets):
        lines.append(f"• User {user_id}: {_describe_budget(limits, user_id, sources=True)}")
    return "\n".join(lines)


def admin_commands() -> list[Command]:
    return [
        Command("status", "how the bot and its upstreams are doing", status, admin_only=True),
        Command("health", "probe every upstream now", health, admin_only=True, queued=True),
        Command("breaker", "list circuit breakers or close one", breaker, admin_only=True, usage="reset <name|all>"),
        Command("cache", "empty the cache", cache, admin_only=True, usage="clear [kind]"),
        Command("allow", "let a user use the bot", allow, admin_only=True, usage="<user id>"),
        Command("deny", "stop a user from using the bot", deny, admin_only=True, usage="<user id>"),
        Command(
            "budget", "show or set a user's daily or monthly budget", budget, admin_only=True,
            usage="<user id> <USD|default|unlimited> [month]",
        ),
    ]
