"""The operator's status report: /status, and `switchboard status` from the shell (bot/status.py).

`build_status` assembles the report from whatever sources it is given: a running bot hands over
its live parts (breakers, limiters, flood waits, replies in flight, Telegram), the shell hands over
only the database. Each section is built on its own, so one broken source shows as "unavailable"
instead of costing the whole report. Everything that came from outside (error messages, names)
is redacted and escaped before it goes into the Markdown.
"""
from __future__ import annotations

import importlib.metadata
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

from handlers.access import AccessPolicy
from handlers.lanes import ChatLanes
from handlers.recent_errors import ERROR_TEXT_LIMIT, RecentErrors, describe_error
from handlers.render import escape_markdown
from integrations.clock import Clock, SystemClock
from integrations.prices import PriceTable, format_usd
from integrations.redaction import Redactor
from integrations.resilience.registry import Snapshotting
from integrations.resilience.snapshots import (
    BreakerSnapshot,
    GovernorSnapshot,
    LimiterSnapshot,
    ResilienceSnapshot,
    TokenBudgetSnapshot,
)
from state.admin_settings import AdminSettings
from state.cache import SqliteCache
from state.database import Database
from state.instances import InstanceRegistry
from state.usage import ErrorJournal, UsageRecorder

log = logging.getLogger(__name__)

RECENT_ERRORS_SHOWN = 5
# An instance reports itself at least every minute (LEASE_SECONDS / 5 at most): one not seen for
# longer is marked as silent.
SILENT_INSTANCE = 90.0


class OutboxDepth(Protocol):
    async def depth(self) -> int: ...


@dataclass(frozen=True)
class StatusContext:
    """What only the composition root knows about the running bot: `services.features.status`."""

    started_at: float
    telegram_connected: Callable[[], bool] | None = None
    deprecations: Callable[[], Sequence[str]] = lambda: ()
    errors: RecentErrors | None = None
    redactor: Redactor = field(default_factory=Redactor)
    # The instances sharing a PostgreSQL database (DATABASE_URL); None with SQLite.
    instances: InstanceRegistry | None = None
    # Which engine holds the state, and where (`state_engine`): the header's "State:" line.
    state: str | None = None


@dataclass(frozen=True)
class StatusSources:
    """Where the report's facts come from; every source is optional."""

    clock: Clock = field(default_factory=SystemClock)
    database: Database | None = None
    # False: built from the shell, with nothing live to ask.
    running: bool = True
    started_at: float | None = None
    telegram_connected: Callable[[], bool] | None = None
    resilience: Snapshotting | None = None
    lanes: ChatLanes | None = None
    cache: SqliteCache | None = None
    outbox: OutboxDepth | None = None  # the notes outbox (state.outbox.Outbox)
    usage: UsageRecorder | None = None
    settings: AdminSettings | None = None
    default_budget: float | None = None
    default_monthly_budget: float | None = None
    errors: RecentErrors | None = None
    deprecations: Callable[[], Sequence[str]] = lambda: ()
    redactor: Redactor = field(default_factory=Redactor)
    # From the shell: asks Redis (REDIS_URL) whether it answers; a running bot's registry says instead.
    shared_limits: Callable[[], Awaitable[Mapping[str, Any]]] | None = None
    # The instances sharing the database and their queue (state/instances.py).
    instances: InstanceRegistry | None = None
    # Which engine holds the state; from the shell, `database` says it when this is None.
    state: str | None = None


def state_engine(database: Database) -> str:
    """'SQLite at /var/lib/switchboard/switchboard.sqlite3, schema 15' or 'PostgreSQL at
    10.0.0.5:5432/switchboard, schema 16': the engine, where it is, never a password (nor the user:
    the host, port and database name are what an operator looks for)."""
    if database.dialect == "postgresql":
        parts = urlsplit(database.where)  # already without its password (state.postgres.shown_url)
        port = f":{parts.port}" if parts.port else ""
        return f"PostgreSQL at {parts.hostname or 'localhost'}{port}{parts.path}, schema {database.schema_version}"
    return f"SQLite at {database.where}, schema {database.schema_version}"


async def build_status(sources: StatusSources) -> str:
    report = _Report(sources)
    sections: list[Callable[[], Awaitable[list[str]]]] = [report.header, report.shared_limits, report.instances]
    if sources.running:
        sections += [report.breakers, report.limiters, report.flood_waits]
    sections += [report.cache, report.outbox, report.usage, report.settings, report.errors, report.deprecations]
    lines: list[str] = []
    for section in sections:
        try:
            lines += await section()
        except Exception as error:
            log.warning("status section %s failed: %s", section.__name__, describe_error(error))
            lines.append(f"_{section.__name__.replace('_', ' ')}: unavailable ({type(error).__name__})_")
    return "\n".join(lines)


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {plural or noun + 's'}"


def switchboard_version() -> str:
    try:
        return importlib.metadata.version("switchboard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed as a package)"


_PERIODS = {1.0: "a second", 60.0: "a minute", 3600.0: "an hour", 86400.0: "a day"}


@dataclass(frozen=True)
class RateBucket:
    """A limiter's snapshot in words: `rate` units earned per `per` seconds, up to `burst` banked."""

    rate: float
    per: float
    burst: float
    available: float  # may be fractional (earned continuously) or negative (overdrawn)

    def pace(self, unit: str) -> str:
        """'3 requests a second', '50 requests a minute', or '1 request every 2.0 s'."""
        if self.rate <= 0:
            return f"no {unit}s"
        if self.per in _PERIODS and self.rate >= 1 and self.rate.is_integer():
            return f"{_plural(int(self.rate), unit)} {_PERIODS[self.per]}"
        return f"1 {unit} every {format_seconds(self.per / self.rate)}"

    def state(self) -> str:
        """'1 left now', or '0 left now, full again in 0.3 s': whole units that could go at once."""
        left = max(0, math.floor(self.available + 1e-6))  # 0.9999999 after float steps is 1
        text = f"{left:,} left now"
        missing = self.burst - self.available
        if missing > 1e-3 and self.rate > 0:
            text += f", full again in {format_seconds(missing * self.per / self.rate)}"
        return text


class _Report:
    def __init__(self, sources: StatusSources) -> None:
        self._s = sources
        self._snapshot: ResilienceSnapshot | None = None

    def _text(self, value: object) -> str:
        return escape_markdown(self._s.redactor(str(value)))

    def _resilience(self) -> ResilienceSnapshot:
        if self._snapshot is None:
            resilience = self._s.resilience
            self._snapshot = (
                resilience.snapshot()
                if resilience is not None
                else {"breakers": {}, "limiters": {}, "token_budgets": {}, "governor": None}
            )
        return self._snapshot

    async def header(self) -> list[str]:
        s = self._s
        version = f"Version {escape_markdown(switchboard_version())}"
        if s.running and s.started_at is not None:
            version += f", up {format_seconds(s.clock.monotonic() - s.started_at)}"
        lines = ["**Switchboard status**", version]
        state = s.state if s.state is not None else state_engine(s.database) if s.database is not None else None
        if state is not None:
            lines.append(f"State: {self._text(state)}")
        if not s.running:
            lines.append(
                "_The bot is not running in this process: Telegram, breakers, rate limits, flood waits "
                "and replies in flight are unavailable. Below is what the database knows._"
            )
            return lines
        if s.telegram_connected is None:
            lines.append("Telegram: no connection (console or test transport)")
        else:
            lines.append("Telegram: connected" if s.telegram_connected() else "Telegram: **not connected**")
        if s.lanes is not None:
            lines.append(f"Replies: {s.lanes.in_flight()} in progress, {s.lanes.queued()} queued")
        return lines

    async def shared_limits(self) -> list[str]:
        """Whether the limits are shared through Redis (REDIS_URL), or each instance keeps its share."""
        if self._s.running:
            state: Mapping[str, Any] | None = self._resilience().get("shared_limits")
        else:
            state = await self._s.shared_limits() if self._s.shared_limits is not None else None
        if state is None:
            return []  # REDIS_URL not set: the limits are this instance's, as always
        where, share = self._text(state["location"]), f"1/{int(state['instances'])}"
        if state["state"] == "shared":
            text = f"shared through Redis at {where} by {_plural(int(state['instances']), 'instance')}"
            if not self._s.running:
                text = f"Redis at {where} reachable; a running bot shares its limits there"
        elif state.get("down_since"):
            since = escape_markdown(str(state["down_since"])[11:19])
            error = self._text(state.get("last_error") or "no answer")
            text = (
                f"**Redis unreachable since {since} UTC, local {share}** "
                f"(each instance keeps {share} of every limit; last error: {error})"
            )
        else:
            error = self._text(state.get("last_error") or "no answer")
            text = f"**Redis at {where} unreachable** ({error}): a running bot keeps local {share} of every limit"
        return ["", f"**Shared limits**: {text}"]

    async def instances(self) -> list[str]:
        """The instances sharing the database (PostgreSQL), who leads, and the queue; none with one bot."""
        if self._s.instances is None:
            return []
        rows = await self._s.instances.listing()
        if not rows:
            return []
        now = self._s.clock.now()
        chats = await self._s.instances.chats_answering()
        lines = ["", "**Instances** (the leader receives, every instance answers its chats; one takes over when the leader dies)"]
        for row in rows:
            seen = (now - row.last_seen).total_seconds()
            line = f"• {self._text(row.name)}: "
            if row.role == "leader" and row.leader_since is not None:
                line += f"**leader**, lease held {format_seconds((now - row.leader_since).total_seconds())}"
            else:
                # Every instance that does not lead answers chats: "standby" is how its row says it.
                line += "worker" if row.role == "standby" else row.role
            if row.role != "stopped":
                line += f", answering {_plural(chats.get(row.name, 0), 'chat')}"
            line += f", last seen {format_seconds(seen)} ago"
            if row.role != "stopped" and seen > SILENT_INSTANCE:
                line += " (**silent**: stopped or cut off?)"
            lines.append(line + f" (pid {row.pid} on {self._text(row.host)})")
        waiting = await self._s.instances.queue_depth()
        lines.append(f"Queue: {_plural(waiting, 'message')} waiting for or getting an answer")
        return lines

    async def breakers(self) -> list[str]:
        breakers: Mapping[str, BreakerSnapshot] = self._resilience()["breakers"]
        lines = ["", "**Circuit breakers**"]
        if not breakers:
            return lines + ["none registered"]
        for name, snap in breakers.items():
            state = str(snap["state"])
            line = f"• {self._text(name)}: **{state.replace('_', '-')}**"
            if state == "open":
                line += f", retries in {format_seconds(float(snap['retry_in']))}"
                if snap["opened_at"]:
                    line += f" (opened {escape_markdown(str(snap['opened_at'])[11:19])} UTC)"
            elif state == "half_open":
                line += ", letting one probe through"
            line += f"; {_plural(int(snap['failures_in_window']), 'recent failure')} (last {format_seconds(float(snap['window']))})"
            if snap["last_error"] and state != "closed":
                line += f"; last error: {self._text(str(snap['last_error'])[:ERROR_TEXT_LIMIT])}"
            lines.append(line)
        return lines

    async def limiters(self) -> list[str]:
        snapshot = self._resilience()
        limiters: Mapping[str, LimiterSnapshot] = snapshot["limiters"]
        budgets: Mapping[str, TokenBudgetSnapshot] = snapshot["token_budgets"]
        lines = ["", "**Rate limits**"]
        if not limiters and not budgets:
            return lines + ["none registered"]
        for name, limiter in limiters.items():
            bucket = RateBucket(*(float(limiter[key]) for key in ("rate", "per", "burst", "available")))
            lines.append(self._limit_line(name, "request", bucket, limiter, paused=limiter["paused_for"]))
        for name, budget in budgets.items():
            per_minute = float(budget["tokens_per_minute"])
            bucket = RateBucket(per_minute, 60.0, per_minute, float(budget["available"]))
            lines.append(self._limit_line(name, "token", bucket, budget, paused=0.0))  # budgets are never paused
        return lines

    def _limit_line(
        self, name: str, unit: str, bucket: RateBucket, snap: LimiterSnapshot | TokenBudgetSnapshot, *, paused: float
    ) -> str:
        """'anthropic: 50 requests a minute, 7 left now, full again in 1.2 s', and what holds it back."""
        line = f"• {self._text(name.removesuffix(f' {unit}s'))}: {bucket.pace(unit)}"
        if paused > 0:
            line += f", **paused {format_seconds(paused)}** (the upstream asked us to wait)"
        else:
            line += f", {bucket.state()}"
        waiting = int(snap["waiting"])
        if waiting:
            line += f"; {_plural(waiting, 'call')} waiting"
        if snap["tightened"]:
            line += "; slowed down by the upstream's rate-limit headers"
        return line

    async def flood_waits(self) -> list[str]:
        governor: GovernorSnapshot | None = self._resilience()["governor"]
        lines = ["", "**Telegram flood waits**"]
        if governor is None:
            return lines + ["no flood governor (console or test transport)"]
        if governor.bot_paused_for > 0:
            lines.append(
                f"• **the whole bot: paused, {format_seconds(governor.bot_paused_for)} left** "
                "(Telegram's limit for the bot as a whole was reached: every chat waits)"
            )
        paused = [(chat_id, pace) for chat_id, pace in governor.chats.items() if pace.paused_for > 0]
        for chat_id, pace in sorted(paused, key=lambda item: -item[1].paused_for):
            lines.append(
                f"• chat {self._text(chat_id)}: paused, {format_seconds(pace.paused_for)} left "
                f"({pace.waiting} calls waiting)"
            )
        if not paused and governor.bot_paused_for <= 0:
            lines.append("none active")
        since_start = f"{_plural(governor.calls, 'Telegram call')} and {_plural(governor.flood_waits, 'flood wait')}"
        if governor.bot_pauses:
            since_start += f" ({_plural(governor.bot_pauses, 'bot-wide')})"
        lines.append(f"{since_start} since start")
        return lines

    async def cache(self) -> list[str]:
        if self._s.cache is None:
            return ["", "**Cache**: not configured"]
        stats = await self._s.cache.stats()
        hits, misses = stats.hits, stats.misses
        if not self._s.running:
            rate = "hit rate counted only while the bot runs"
        elif hits + misses:
            rate = f"hit rate {hits / (hits + misses):.0%} ({hits} hits, {misses} misses since start)"
        else:
            rate = "no lookups since start"
        line = f"**Cache**: {_plural(stats.entries, 'entry', 'entries')}, {rate}"
        if stats.by_kind:
            kinds = ", ".join(
                f"{self._text(kind)} {self._text(kind_stats.entries)}" for kind, kind_stats in sorted(stats.by_kind.items())
            )
            line += f"; by kind: {kinds}"
        return ["", line]

    async def outbox(self) -> list[str]:
        if self._s.outbox is None:
            return ["", "**Outbox**: not configured"]
        depth = await self._s.outbox.depth()
        return ["", f"**Outbox**: {_plural(depth, 'note')} waiting to be saved" if depth else "**Outbox**: empty"]

    async def usage(self) -> list[str]:
        usage = self._s.usage
        if usage is None and self._s.database is not None:
            usage = UsageRecorder(self._s.database, self._s.clock, PriceTable())
        if usage is None:
            return ["", "**Usage today**: not recorded"]
        lines = await usage.lines(days=1)
        day = usage.today().isoformat()
        if not lines:
            return ["", f"**Usage today** ({day} UTC): none yet"]
        users = len({line.user_id for line in lines})
        cost = sum(line.cost_usd for line in lines)
        tokens_in = sum(line.input_tokens for line in lines)
        tokens_out = sum(line.output_tokens for line in lines)
        text = (
            f"**Usage today** ({day} UTC): {format_usd(cost)}, {tokens_in:,} tokens in and {tokens_out:,} out, "
            f"{_plural(sum(line.requests for line in lines), 'answer')} for {_plural(users, 'user')}"
        )
        unpriced = sorted({line.model for line in lines if line.unpriced})
        if unpriced:
            text += f"; no price known for {', '.join(self._text(model) for model in unpriced)} (counted as $0)"
        return ["", text]

    async def settings(self) -> list[str]:
        settings = self._s.settings
        if settings is None and self._s.database is not None:
            settings = await AdminSettings.load(self._s.database, AccessPolicy())
        paces = [(self._s.default_budget, "a day"), (self._s.default_monthly_budget, "a month")]
        amounts = [f"{format_usd(usd)} {per}" for usd, per in paces if usd is not None]
        default = f"default budget {' and '.join(amounts)}" if amounts else "no default budget"
        if settings is None:
            return ["", f"**Settings**: {default}"]
        overrides = len(settings.budgets)
        return [
            "",
            f"**Settings**: {default}; {overrides} per-user {'budget' if overrides == 1 else 'budgets'} (/budget); "
            f"{len(settings.granted)} allowed and {len(settings.revoked)} denied by /allow and /deny",
        ]

    async def errors(self) -> list[str]:
        s = self._s
        if s.errors is not None:
            await s.errors.save()
            entries = s.errors.entries()[-RECENT_ERRORS_SHOWN:]
        elif s.database is not None:
            entries = await ErrorJournal(s.database).latest(RECENT_ERRORS_SHOWN)
        else:
            return []
        lines = ["", "**Recent errors**"]
        if not entries:
            return lines + ["none"]
        for entry in entries:
            when = escape_markdown(entry.at[:19].replace("T", " "))
            lines.append(f"• {when} UTC {self._text(entry.source)}: {self._text(entry.message)}")
        return lines

    async def deprecations(self) -> list[str]:
        found = list(self._s.deprecations())
        if not found:
            return [] if not self._s.running else ["", "**Deprecations**: none seen"]
        return ["", "**Deprecations**"] + [f"• {self._text(signal)}" for signal in found]
