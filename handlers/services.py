"""Everything a handler may use, built once in the composition root (bot/app.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from handlers.access import AccessPolicy
from handlers.health import HealthProbe
from handlers.lanes import ChatLanes
from handlers.limits import Limits
from handlers.modes import BUILTIN_MODES, Mode
from handlers.stream import StreamPacing
from handlers.transport import Transport
from integrations.chain import ModelChain
from integrations.clock import Clock
from state.chat_prompts import ChatPrompts
from state.history import HistoryStore
from state.preferences import UserPreferences

if TYPE_CHECKING:  # these modules import this one for `Services`
    from handlers.chat_admins import ChatAdmins
    from handlers.compaction import Compaction
    from handlers.documents import DocumentsFeature
    from handlers.notes import NotesFeature
    from handlers.photos import PhotoFeature
    from handlers.quoted import QuotesFeature
    from handlers.search import SearchService
    from handlers.status_report import StatusContext
    from handlers.voice import VoiceFeature
    from integrations.resilience.registry import ResilienceRegistry
    from state.admin_settings import AdminSettings
    from state.cache import SqliteCache
    from state.usage import UsageRecorder


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
    # A conversation idle this many seconds starts afresh (CONVERSATION_IDLE_RESET); None: never.
    idle_reset: float | None = None
    # The modes /mode offers: the built-in ones and the operator's LLM_MODES_FILE.
    modes: tuple[Mode, ...] = BUILTIN_MODES


@dataclass(frozen=True)
class Features:
    """The optional features: each is None when it is off (not configured, or not built here)."""

    search: SearchService | None = None  # /search: Perplexity behind its policies, with the cache
    notes: NotesFeature | None = None  # /note, /save, /notes: Notion through the outbox
    cache: SqliteCache | None = None  # what /cache clears and /status counts
    usage: UsageRecorder | None = None  # tokens and cost per user and model: /usage
    admin_settings: AdminSettings | None = None  # /allow, /deny, /budget, kept in the database
    resilience: ResilienceRegistry | None = None  # breakers and limiters by name: /status, /breaker
    status: StatusContext | None = None  # what only the composition root knows: /status, /health
    compaction: Compaction | None = None  # long conversations' older turns summarised (COMPACT_AT)
    voice: VoiceFeature | None = None  # voice and audio messages: speech to text (STT_MODEL)
    photos: PhotoFeature | None = None  # photos and image files, to a vision model (Telegram only)
    documents: DocumentsFeature | None = None  # text, code and PDF files read into the chat (Telegram)
    quotes: QuotesFeature | None = None  # the message a reply quotes, given to the model with it


@dataclass(frozen=True)
class Services:
    clock: Clock
    transport: Transport
    history: HistoryStore
    preferences: UserPreferences
    chain: ModelChain
    access: AccessPolicy
    # Message rate and daily budget, checked before any upstream call (handlers.limits.NoLimits: none).
    limits: Limits
    lanes: ChatLanes
    chat: ChatSettings
    # Each chat's choice of system prompt (/mode, /prompt).
    prompts: ChatPrompts
    pacing: StreamPacing = field(default_factory=StreamPacing)
    features: Features = field(default_factory=Features)
    # /health probes these (search, notes) besides the chain's chat providers, which it reads live.
    health_probes: tuple[HealthProbe, ...] = ()
    # A group's admins, who may change its /mode and /prompt (None: the transport has no groups).
    chat_admins: ChatAdmins | None = None
