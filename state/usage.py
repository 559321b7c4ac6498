"""The operator's record: tokens and dollars per user, model and UTC day, and the last upstream errors.

Cost is worked out when usage is recorded, with the prices of that moment, so a later price change
does not rewrite what was spent. Days are UTC dates: daily budgets reset at 00:00 UTC, monthly
ones on the first of the month at 00:00 UTC.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta, timezone
from typing import Sequence

from integrations.llm import ModelRef, Usage
from integrations.prices import PriceTable
from integrations.resilience.clock import Clock
from state.database import Database
from state.periods import period_start


@dataclass(frozen=True)
class UsageLine:
    """What one user spent on one model over a span of days."""

    user_id: int
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    # Requests to a model without a known price; their cost is counted as 0.
    unpriced: int


@dataclass(frozen=True)
class Spending:
    """What one user used over one span: answers, tokens and dollars."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class UserSpending:
    """One user's spending today and this month (UTC), for their budgets and their own /usage."""

    today: Spending
    month: Spending


# One range scan of usage_daily_by_user (user_id, day) gives both spans: the month so far, and
# the rows of today within it.
_SPENDING_QUERY = (
    "SELECT"
    " COALESCE(SUM(requests), 0) AS month_requests, COALESCE(SUM(input_tokens), 0) AS month_input,"
    " COALESCE(SUM(output_tokens), 0) AS month_output, COALESCE(SUM(cost_usd), 0) AS month_cost,"
    " COALESCE(SUM(requests) FILTER (WHERE day = :today), 0) AS today_requests,"
    " COALESCE(SUM(input_tokens) FILTER (WHERE day = :today), 0) AS today_input,"
    " COALESCE(SUM(output_tokens) FILTER (WHERE day = :today), 0) AS today_output,"
    " COALESCE(SUM(cost_usd) FILTER (WHERE day = :today), 0) AS today_cost"
    " FROM usage_daily WHERE user_id = :user_id AND day BETWEEN :first AND :today"
)


class UsageRecorder:
    def __init__(self, db: Database, clock: Clock, prices: PriceTable) -> None:
        self._db = db
        self._clock = clock
        self._prices = prices

    def today(self) -> date:
        return self._clock.now().astimezone(timezone.utc).date()

    async def record(self, user_id: int, usage: Sequence[tuple[ModelRef, Usage]]) -> None:
        """Add each model's tokens and cost to today's totals for `user_id`."""
        day = self.today().isoformat()
        rows = []
        for ref, used in usage:
            input_tokens, output_tokens = max(0, used.input_tokens), max(0, used.output_tokens)
            if not input_tokens and not output_tokens:
                continue  # the model failed before it was charged for anything
            cost = self._prices.cost(ref, Usage(input_tokens, output_tokens))
            rows.append((day, user_id, str(ref), input_tokens, output_tokens, cost.usd, 0 if cost.priced else 1))
        await self._add(rows)

    async def record_audio(self, user_id: int, model: str, seconds: float) -> None:
        """Add one transcription of `seconds` of audio, priced per minute, to today's totals for
        `user_id`, under `stt:<model>` (no tokens)."""
        cost = self._prices.audio_cost(model, seconds)
        await self._add([(self.today().isoformat(), user_id, f"stt:{model}", 0, 0, cost.usd, 0 if cost.priced else 1)])

    async def _add(self, rows: Sequence[tuple[object, ...]]) -> None:
        if not rows:
            return
        async with self._db.transaction():
            for row in rows:
                await self._db.execute(
                    "INSERT INTO usage_daily (day, user_id, model, requests, input_tokens, output_tokens, cost_usd, unpriced)"
                    " VALUES (?, ?, ?, 1, ?, ?, ?, ?)"
                    " ON CONFLICT (day, user_id, model) DO UPDATE SET"
                    # The table's name on the old values: PostgreSQL finds a bare name ambiguous.
                    " requests = usage_daily.requests + 1,"
                    " input_tokens = usage_daily.input_tokens + excluded.input_tokens,"
                    " output_tokens = usage_daily.output_tokens + excluded.output_tokens,"
                    " cost_usd = usage_daily.cost_usd + excluded.cost_usd,"
                    " unpriced = usage_daily.unpriced + excluded.unpriced",
                    row,
                )

    async def spending(self, user_id: int) -> UserSpending:
        """What `user_id` used today and this month so far (UTC)."""
        today = self.today()
        params = {"user_id": user_id, "today": today.isoformat(), "first": period_start(today, "month").isoformat()}
        row = await self._db.fetchone(_SPENDING_QUERY, params)
        if row is None:
            return UserSpending(Spending(), Spending())
        return UserSpending(
            today=Spending(row["today_requests"], row["today_input"], row["today_output"], float(row["today_cost"])),
            month=Spending(row["month_requests"], row["month_input"], row["month_output"], float(row["month_cost"])),
        )

    async def lines(self, days: int, user_id: int | None = None) -> list[UsageLine]:
        """Totals per user and model over the last `days` UTC days, today included."""
        first = (self.today() - timedelta(days=days - 1)).isoformat()
        of_user = "" if user_id is None else " AND user_id = ?"
        rows = await self._db.fetchall(
            "SELECT user_id, model, SUM(requests) AS requests, SUM(input_tokens) AS input_tokens,"
            " SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd, SUM(unpriced) AS unpriced"
            f" FROM usage_daily WHERE day >= ?{of_user}"
            " GROUP BY user_id, model ORDER BY user_id, model",
            (first,) if user_id is None else (first, user_id),
        )
        return [
            UsageLine(
                user_id=row["user_id"],
                model=row["model"],
                requests=row["requests"],
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                cost_usd=float(row["cost_usd"]),
                unpriced=row["unpriced"],
            )
            for row in rows
        ]


@dataclass(frozen=True)
class ErrorEntry:
    """One upstream error as an operator may see it: already redacted."""

    at: str  # ISO 8601 UTC
    source: str
    message: str


class ErrorJournal:
    """The last few upstream errors, kept in the database for `switchboard status` with the bot down."""

    def __init__(self, db: Database, keep: int = 20) -> None:
        self._db = db
        self._keep = keep

    async def replace(self, entries: Sequence[ErrorEntry]) -> None:
        kept = list(entries)[-self._keep :]
        async with self._db.transaction():
            await self._db.execute("DELETE FROM recent_errors")
            for entry in kept:
                await self._db.execute(
                    "INSERT INTO recent_errors (at, source, message) VALUES (?, ?, ?)",
                    (entry.at, entry.source, entry.message),
                )

    async def latest(self, limit: int = 5) -> list[ErrorEntry]:
        """The newest `limit` errors, oldest first."""
        rows = await self._db.fetchall(
            "SELECT at, source, message FROM recent_errors ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [ErrorEntry(row["at"], row["source"], row["message"]) for row in reversed(rows)]
