"""The operator's commands, for ADMIN_IDS only: status, health, usage, breakers, cache, access, budgets.

The router answers anybody else as if these commands did not exist. Changes made here
(/allow, /deny, /budget) are written to the database before they take effect, so they survive a
restart. Arguments are echoed back shortened and escaped: they are typed by a person, not trusted.
"""
from __future__ import annotations

import logging
import math
import re
from datetime import timedelta

from bot.logs import Redactor
from handlers.commands import Command
from handlers.limits import UserLimits
from handlers.reply import reply
from handlers.services import Services
from handlers.status_report import (
    StatusContext,
    StatusSources,
    build_status,
    chat_probes,
    escape_markdown,
    format_health,
    run_probes,
)
from handlers.transport import IncomingMessage
from integrations.prices import format_usd
from state.admin_settings import AdminSettings
from state.usage import UsageLine, UsageRecorder

log = logging.getLogger(__name__)

USAGE_DAYS = 7
ECHO_LIMIT = 40
MAX_BUDGET_USD = 1_000_000.0
_USER_ID = re.compile(r"[0-9]{1,15}")
_AMOUNT = re.compile(r"\$?([0-9]+(?:\.[0-9]+)?|\.[0-9]+)")


def _echo(text: str) -> str:
    short = text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "…"
    return escape_markdown(short)


def _parse_user_id(text: str) -> int | None:
    return int(text) if _USER_ID.fullmatch(text) else None


def status_sources(services: Services) -> StatusSources:
    """The live report's sources, from what the composition root put into `services`."""
    extras = services.extras
    context: StatusContext | None = extras.get("status")
    limits: UserLimits | None = extras.get("limits")
    return StatusSources(
        clock=services.clock,
        running=True,
        started_at=context.started_at if context else None,
        telegram_connected=context.telegram_connected if context else None,
        resilience=extras.get("resilience"),
        lanes=services.lanes,
        cache=extras.get("cache"),
        outbox=extras.get("outbox"),
        usage=extras.get("usage"),
        settings=extras.get("admin_settings"),
        default_budget=limits.default_daily_budget if limits else None,
        errors=context.errors if context else None,
        deprecations=context.deprecations if context else (),
        redactor=context.redactor if context else Redactor(),
    )


async def status(services: Services, message: IncomingMessage, args: str) -> None:
    await reply(services, message, await build_status(status_sources(services)))


async def health(services: Services, message: IncomingMessage, args: str) -> None:
    probes = chat_probes(services.chain.models) + list(services.extras.get("health", ()))
    results = await run_probes(probes, services.clock)
    context: StatusContext | None = services.extras.get("status")
    redactor = context.redactor if context else Redactor()
    await reply(services, message, format_health(results, redactor))


async def usage(services: Services, message: IncomingMessage, args: str) -> None:
    recorder: UsageRecorder | None = services.extras.get("usage")
    if recorder is None:
        await reply(services, message, "Usage is not being recorded in this bot.")
        return
    user_id = None
    if args:
        user_id = _parse_user_id(args)
        if user_id is None:
            await reply(services, message, f"`/usage` takes a numeric user id, not {_echo(args)}. Example: /usage 123456789")
            return
    today = {(line.user_id, line.model): line for line in await recorder.lines(days=1, user_id=user_id)}
    week = await recorder.lines(days=USAGE_DAYS, user_id=user_id)
    first_day = recorder.today() - timedelta(days=USAGE_DAYS - 1)
    if not week:
        who = f"User {user_id} has" if user_id is not None else "Nobody has"
        await reply(services, message, f"{who} used any model since {first_day.isoformat()} (UTC).")
        return
    limits: UserLimits | None = services.extras.get("limits")
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
        total = f"Total: today {format_usd(today_cost)}, {USAGE_DAYS} days {format_usd(sum(l.cost_usd for l in mine))}"
        if limits is not None:
            budget = limits.budget_for(uid)
            total += f" (daily budget {format_usd(budget)})" if budget is not None else " (no daily budget)"
        lines.append(total)
    if unpriced:
        names = ", ".join(escape_markdown(model) for model in sorted(unpriced))
        lines += ["", f"⚠️ No price is known for {names}: their cost is counted as $0. Set LLM\\_PRICES to price them."]
    await reply(services, message, "\n".join(lines))


def _amounts(line: UsageLine | None) -> str:
    if line is None:
        return "nothing"
    return f"{line.input_tokens:,} in + {line.output_tokens:,} out tokens, {format_usd(line.cost_usd)}"


BREAKER_HELP = "Use /breaker to list the breakers, /breaker reset <name> to close one, /breaker reset all to close them all."


async def breaker(services: Services, message: IncomingMessage, args: str) -> None:
    registry = services.extras.get("resilience")
    if registry is None:
        await reply(services, message, "No circuit breakers are registered.")
        return
    names = list((registry.snapshot().get("breakers") or {}).keys())
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


def _breaker_list(registry) -> str:
    breakers = registry.snapshot().get("breakers") or {}
    if not breakers:
        return "No circuit breakers are registered."
    lines = ["**Circuit breakers**"]
    for name, snap in breakers.items():
        state = str(snap.get("state", "unknown")).replace("_", "-")
        line = f"• `{name}`: {state}"
        if state == "open":
            line += f", retries in {math.ceil(float(snap.get('retry_in', 0.0)))} s"
        lines.append(line)
    return "\n".join(lines)


async def cache(services: Services, message: IncomingMessage, args: str) -> None:
    store = services.extras.get("cache")
    if store is None:
        await reply(services, message, "No cache is configured.")
        return
    verb, _, kind = args.partition(" ")
    kind = kind.strip()
    if verb.lower() != "clear":
        await reply(services, message, "Use /cache clear to empty the cache, or /cache clear <kind> (e.g. search) for one kind.")
        return
    removed = await store.clear(kind or None)
    log.info("admin %s cleared the cache (%s): %d entries", message.user_id, kind or "all kinds", removed)
    what = f"{_echo(kind)} entries" if kind else "entries"
    await reply(services, message, f"Removed {removed} cached {what}.")


def _admin_settings(services: Services) -> AdminSettings | None:
    return services.extras.get("admin_settings")


async def allow(services: Services, message: IncomingMessage, args: str) -> None:
    settings = _admin_settings(services)
    user_id = _parse_user_id(args)
    if settings is None:
        await reply(services, message, "Access cannot be changed at runtime in this bot.")
        return
    if user_id is None:
        await reply(services, message, "Use /allow <user id>, e.g. /allow 123456789 (the user can find their id by writing to me).")
        return
    await settings.allow(user_id, by=message.user_id)
    log.info("admin %s allowed user %s", message.user_id, user_id)
    await reply(services, message, f"User {user_id} may now use the bot.")


async def deny(services: Services, message: IncomingMessage, args: str) -> None:
    settings = _admin_settings(services)
    user_id = _parse_user_id(args)
    if settings is None:
        await reply(services, message, "Access cannot be changed at runtime in this bot.")
        return
    if user_id is None:
        await reply(services, message, "Use /deny <user id>, e.g. /deny 123456789.")
        return
    if services.access.is_admin(user_id):
        await reply(services, message, f"User {user_id} is an admin (ADMIN_IDS); remove them there instead.")
        return
    await settings.deny(user_id, by=message.user_id)
    log.info("admin %s denied user %s", message.user_id, user_id)
    await reply(services, message, f"User {user_id} can no longer use the bot.")


BUDGET_HELP = (
    "Use /budget <user id> <USD per day> (e.g. /budget 123456789 2.50), /budget <user id> default "
    "to go back to the default, or /budget <user id> unlimited."
)


async def budget(services: Services, message: IncomingMessage, args: str) -> None:
    settings = _admin_settings(services)
    limits: UserLimits | None = services.extras.get("limits")
    if settings is None or limits is None:
        await reply(services, message, "Budgets are not enabled in this bot.")
        return
    parts = args.split()
    if not parts:
        await reply(services, message, _budget_list(settings, limits) + "\n\n" + BUDGET_HELP)
        return
    user_id = _parse_user_id(parts[0])
    if user_id is None or len(parts) > 2:
        await reply(services, message, BUDGET_HELP)
        return
    if len(parts) == 1:
        await reply(services, message, f"User {user_id}: {_describe_budget(limits.budget_for(user_id))}.")
        return
    choice = parts[1].lower()
    if choice == "default":
        await settings.clear_budget(user_id)
    elif choice == "unlimited":
        await settings.set_budget(user_id, None, by=message.user_id)
    else:
        amount = _parse_amount(parts[1])
        if amount is None:
            await reply(services, message, f"{_echo(parts[1])} is not an amount in US dollars. {BUDGET_HELP}")
            return
        await settings.set_budget(user_id, amount, by=message.user_id)
    log.info("admin %s set the budget of user %s to %s", message.user_id, user_id, choice)
    await reply(services, message, f"User {user_id}: {_describe_budget(limits.budget_for(user_id))}.")


def _parse_amount(text: str) -> float | None:
    match = _AMOUNT.fullmatch(text)
    if match is None:
        return None
    amount = float(match[1])
    return amount if amount <= MAX_BUDGET_USD else None


def _describe_budget(daily_usd: float | None) -> str:
    return f"daily budget {format_usd(daily_usd)}" if daily_usd is not None else "no daily budget"


def _budget_list(settings: AdminSettings, limits: UserLimits) -> str:
    default = limits.default_daily_budget
    lines = [f"Default: {_describe_budget(default)} (USER\\_DAILY\\_BUDGET\\_USD)."]
    for user_id, override in sorted(settings.budgets.items()):
        lines.append(f"• User {user_id}: {_describe_budget(override.daily_usd)}")
    return "\n".join(lines)


def admin_commands() -> list[Command]:
    return [
        Command("status", "how the bot and its upstreams are doing", status, admin_only=True),
        Command("health", "probe every upstream now", health, admin_only=True, queued=True),
        Command("usage", "tokens and cost per user and model", usage, admin_only=True, usage="[user id]"),
        Command("breaker", "list circuit breakers or close one", breaker, admin_only=True, usage="reset <name|all>"),
        Command("cache", "empty the cache", cache, admin_only=True, usage="clear [kind]"),
        Command("allow", "let a user use the bot", allow, admin_only=True, usage="<user id>"),
        Command("deny", "stop a user from using the bot", deny, admin_only=True, usage="<user id>"),
        Command("budget", "show or set a user's daily budget", budget, admin_only=True, usage="<user id> <USD|default|unlimited>"),
    ]
