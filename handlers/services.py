"""Everything a handler may use, built once in the composition root (bot/app.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from handlers.access import AccessPolicy
from handlers.lanes import ChatLanes
from handlers.stream import StreamPacing
from handlers.transport import Transport
from integrations.chain import ModelChain
from integrations.resilience.clock import Clock
from state.history import HistoryStore
from state.preferences import UserPreferences


@dataclass(frozen=True)
class ChatSettings:
    system_prompt: str
    max_tokens: int = 1024
    max_message_chars: int = 16_000
    refusal_interval: float = 3600.0
    # A message left unanswered by a stopped bot gets a short note instead of an answer after this long.
    pending_max_age: float = 3600.0
    # A message whose answering began this many times without ending (each time the bot stopped) is given up.
    max_attempts: int = 3


@dataclass(frozen=True)
class Services:
    clock: Clock
    transport: Transport
    history: HistoryStore
    preferences: UserPreferences
    chain: ModelChain
    access: AccessPolicy
    lanes: ChatLanes
    chat: ChatSettings
    pacing: StreamPacing = field(default_factory=StreamPacing)
    # Feature services added by later layers (search, notes, usage, status) by name.
    extras: dict[str, Any] = field(default_factory=dict)
