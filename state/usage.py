"""The operator's record: tokens and dollars per user, model and UTC day, and the last upstream errors.

Cost is worked out when usage is recorded, with the prices of that moment, so a later price change
does not rewrite what was spent. Days are UTC dates: daily budgets reset at 00:00 UTC, monthly
ones on the first of the month at 00:00 UTC.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta, timezone
from typing import Any, Sequence

from integrations.clock import Clock
from integrations.llm import ModelRef, Usage
from integrations.prices import PriceTable
from state.database import Database, Write
from state.periods import period_start

_UPSERT = (
    "INSERT INTO usage_daily"
    " (day, user_id, model, requests, input_tokens, output_tokens, cost_usd, unpriced, audio_seconds)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (day, user_id, model) DO UPDATE SET"
    # The table's name on the old values: PostgreSQL finds a bare name ambiguous.
    " requests = usage_daily.requests + excluded.requests,"
    " input_tokens = usage_daily.input_tokens + excluded.input_tokens,"
    " output_tokens = usage_daily.output_tokens + excluded.output_tokens,"
    " cost_usd = usage_daily.cost_usd + excluded.cost_usd,"
    " unpriced = usage_daily.unpriced + excluded.unpriced,"
    " audio_seconds = usage_daily.audio_seconds + excluded.audio_seconds"
)

# What one call used, as added to usage_daily: day, user, model, tokens in and out, cost in
# dollars, 1 if the model has no known price, and seconds of audio transcribed.
_UsageRow = tuple[str, int, str, int, int, float, int, float]


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
    # Seconds of audio transcribed (speech to text, `stt:<model>`, is billed by the minute, not by the token).
    audio_seconds: float = 0.0


@dataclass(frozen=True)
class Spending:
    """What one user used over one span: answers, tokens and dollars."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # everything, audio included
    # Speech to text: seconds of audio transcribed, and their share of `cost_usd`.
    audio_seconds: float = 0.0
    audio_cost_usd: float = 0.0


# Speech-to-text usage is recorded under this prefix and the STT model's name ("stt:whisper-1").
AUDIO_MODEL_PREFIX = "stt:"


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
    " COALESCE(SUM(cost_usd) FILTER (WHERE day = :today), 0) AS today_cost,"
    " COALESCE(SUM(audio_seconds), 0) AS month_audio,"
    f" COALESCE(SUM(cost_usd) FILTER (WHERE model LIKE '{AUDIO_MODEL_PREFIX}%'), 0) AS month_audio_cost,"
    " COALESCE(SUM(audio_seconds) FILTER (WHERE day = :today), 0) AS today_audio,"
    f" COALESCE(SUM(cost_usd) FILTER (WHERE day = :today AND model LIKE '{AUDIO_MODEL_PREFIX}%'), 0) AS today_audio_cost"
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
        await self._add(self.writes(user_id, usage))

    def writes(self, user_id: int, usage: Sequence[tuple[ModelRef, Usage]]) -> list[Write]:
        """What `record` writes, for the caller's own batch (an answer and what it cost are stored
        together: `HistoryStore.record_answer`)."""
        day = self.today().isoformat()
        rows = []
        for ref, used in usage:
            input_tokens, output_tokens = max(0, used.input_tokens), max(0, used.output_tokens)
            if not input_tokens and not output_tokens:
                continue  # the model failed before it was charged for anything
            cost = self._prices.cost(ref, Usage(input_tokens, output_tokens))
            rows.append((day, user_id, str(ref), input_tokens, output_tokens, cost.usd, 0 if cost.priced else 1, 0.0))
        return _upserts(rows)

    async def record_audio(self, user_id: int, model: str, seconds: float) -> None:
        """Add one transcription of `seconds` of audio, priced per minute, to today's totals for
        `user_id`, under `stt:<model>` (no tokens)."""
        cost = self._prices.audio_cost(model, seconds)
        row = (self.today().isoformat(), user_id, f"{AUDIO_MODEL_PREFIX}{model}", 0, 0, cost.usd, 0 if cost.priced else 1, max(0.0, seconds))
        await self._add(_upserts([row]))

    async def _add(self, upserts: Sequence[Write]) -> None:
        """All or none: one upsert alone, more in a transaction (one trip)."""
        if len(upserts) == 1:
            await self._db.execute(upserts[0].sql, upserts[0].params)
        elif upserts:
            await self._db.write_all(upserts)

    async def spending(self, user_id: int) -> UserSpending:
        """What `user_id` used today and this month so far (UTC)."""
        today = self.today()
        params = {"user_id": user_id, "today": today.isoformat(), "first": period_start(today, "month").isoformat()}
        row = await self._db.fetchone(_SPENDING_QUERY, params)
        if row is None:
            return UserSpending(Spending(), Spending())
        return UserSpending(today=_spending(row, "today"), month=_spending(row, "month"))

    async def lines(self, days: int, user_id: int | None = None) -> list[UsageLine]:
        """Totals per user and model over the last `days` UTC days, today included."""
        first = (self.today() - timedelta(days=days - 1)).isoformat()
        of_user = "" if user_id is None else " AND user_id = ?"
        rows = await self._db.fetchall(
            "SELECT user_id, model, SUM(requests) AS requests, SUM(input_tokens) AS input_tokens,"
            " SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd, SUM(unpriced) AS unpriced,"
            " SUM(audio_seconds) AS audio_seconds"
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
                audio_seconds=float(row["audio_seconds"]),
            )
            for row in rows
        ]


def _spending(row: Any, span: str) -> Spending:
    """One span's (`today` or `month`) columns of _SPENDING_QUERY."""
    return Spending(
        row[f"{span}_requests"],
        row[f"{span}_input"],
        row[f"{span}_output"],
        float(row[f"{span}_cost"]),
        float(row[f"{span}_audio"]),
        float(row[f"{span}_audio_cost"]),
    )


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


def _upserts(rows: Sequence[_UsageRow]) -> list[Write]:
    """One upsert per day, user and model (rows of the same model summed: a model tried twice in
    one answer)."""
    totals: dict[tuple[str, int, str], list[float]] = {}
    for day, user_id, model, *amounts in rows:
        total = totals.setdefault((day, user_id, model), [0, 0, 0, 0.0, 0, 0.0])
        # requests, tokens in and out, cost, unpriced requests, seconds of audio
        for column, amount in enumerate((1, *amounts)):
            total[column] += amount
    return [Write(_UPSERT, (*key, *total)) for key, total in totals.items()]
