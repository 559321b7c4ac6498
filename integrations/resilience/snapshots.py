"""What the resilience pieces report about themselves, typed: plain data /status, /health and the admin commands read.

Each piece's `snapshot()` returns one of these. The dictionaries are `TypedDict`s (what a caller may
keep, compare or print as it is); the flood governor's report, with a chat table, is a dataclass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict


class BreakerSnapshot(TypedDict):
    name: str
    state: str  # "closed", "open" or "half_open"
    failures_in_window: int
    failure_threshold: int
    window: float
    cooldown: float
    last_error: str | None
    opened_at: str | None  # ISO time, while not closed
    retry_in: float
    probe_in_flight: bool
    totals: dict[str, int]
    shared: NotRequired[bool]  # shared through Redis right now (REDIS_URL only)


class LimiterSnapshot(TypedDict):
    name: str
    rate: float
    per: float
    burst: float
    available: float
    waiting: int
    paused_for: float
    tightened: bool  # slowed down by the upstream's rate-limit headers
    shared: NotRequired[bool]


class TokenBudgetSnapshot(TypedDict):
    name: str
    tokens_per_minute: float
    available: float
    waiting: int
    tightened: bool
    shared: NotRequired[bool]


class SharedLimitsSnapshot(TypedDict):
    state: str  # "shared" or "local"
    location: str
    instances: int
    down_since: str | None
    last_error: str | None


@dataclass(frozen=True)
class ChatPace:
    paused_for: float
    calls: int
    flood_waits: int
    waiting: int


@dataclass(frozen=True)
class GovernorSnapshot:
    chats: dict[int, ChatPace]
    calls: int
    flood_waits: int
    typing_dropped: int
    previews_deferred: int = 0
    # The whole bot held by a bot-wide flood wait (bot.telegram.bot_pause): seconds left, and how many.
    bot_paused_for: float = 0.0
    bot_pauses: int = 0


class ResilienceSnapshot(TypedDict):
    breakers: dict[str, BreakerSnapshot]
    limiters: dict[str, LimiterSnapshot]
    token_budgets: dict[str, TokenBudgetSnapshot]
    governor: GovernorSnapshot | None
    shared_limits: NotRequired[SharedLimitsSnapshot]
