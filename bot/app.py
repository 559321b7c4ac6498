"""The composition root: the one place where everything is built, wired and shut down."""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Sequence

from bot.config import NotionSettings, Settings
from bot.console import HELP as CONSOLE_HELP
from bot.logs import DeprecationSignals, UpstreamLog
from bot.recent_errors_handler import RecentErrorsHandler
from handlers.access import AccessPolicy
from handlers.admin import admin_commands
from handlers.basic import basic_commands
from handlers.chat_admins import ChatAdmins
from handlers.compaction import Compaction, CompactionSettings
from handlers.conversation import conversation_commands
from handlers.documents import DocumentsFeature
from handlers.health import HealthProbe
from handlers.lanes import ChatLanes
from handlers.limits import UserLimits
from handlers.note_delivery import NoteDelivery, Notify
from handlers.notes import NotesFeature, chat_notifier, notes_commands
from handlers.operator_alerts import OperatorAlerts
from handlers.photos import PhotoFeature
from handlers.quoted import QuotesFeature, RepliedMessages
from handlers.recent_errors import RecentErrors
from handlers.router import Router
from handlers.search import SearchConfig, SearchService, search_commands
from handlers.services import ChatSettings, Features, Services
from handlers.status_report import StatusContext, state_engine
from handlers.stream import StreamPacing
from handlers.transport import MediaSource, Transport
from handlers.usage import usage_commands
from handlers.voice import VoiceFeature
from integrations.chain import ChainModel, ChainTimeouts, ModelChain
from integrations.clock import Clock
from integrations.errors import UpstreamError
from integrations.llm import ChatProvider, ModelRef
from integrations.local_model import (
    LOCAL_ALIAS,
    LOCAL_CONTEXT_TOKENS,
    LOCAL_MARKER,
    LOCAL_PROVIDER,
    LocalModelError,
    LocalModelServer,
    install_hint,
    local_model_available,
)
from integrations.model_policy import ModelCallPolicy, ProviderGuard
from integrations.notion import NotionApi
from integrations.notion_notes import NotionNotes
from integrations.prices import PriceTable
from integrations.redaction import Redactor
from integrations.resilience.compose import AttemptObserver, Upstream
from integrations.resilience.local_limits import LocalLimits
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.registry import ReportsPacing, ResilienceRegistry
from integrations.resilience.retry import RetryPolicy
from integrations.resilience.tokens import TokenBudget
from integrations.summariser import Summariser
from integrations.vision import sees_images
from state.admin_settings import AdminSettings
from state.cache import SqliteCache
from state.chat_prompts import ChatPrompts
from state.compaction_backoff import CompactionBackoffs
from state.database import Database
from state.engines import open_database
from state.history import HistoryStore
from state.images import ImageStore
from state.instances import InstanceRegistry
from state.lock import StateLock
from state.outbox import Outbox
from state.preferences import UserPreferences
from state.quoted_messages import StoredMessages
from state.reply_headers import ReplyHeaders
from state.schema_cache import SchemaCache
from state.usage import ErrorJournal, UsageRecorder

# The SDK adapters (integrations.anthropic, .openai, .perplexity) are imported where their
# clients are built: the SDKs take ~0.8 s to import, which a provider that is not configured
# should not cost at start-up (tests/integration/test_lazy_sdk_imports.py).

log = logging.getLogger(__name__)

DATABASE_NAME = "switchboard.sqlite3"


@dataclass(frozen=True)
class App:
    services: Services
    router: Router
    database: Database
    # Read by no handler: what the log and /status are told about upstreams going away, and the
    # messages to the operator (tests wait for those to be sent).
    deprecations: DeprecationSignals
    operator_alerts: OperatorAlerts


PROVIDER_KEYS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
LOCAL_REF = ModelRef(LOCAL_PROVIDER, LOCAL_ALIAS)  # the offline model, in the chain


def build_model_policy(
    settings: Settings,
    clock: Clock,
    registry: ResilienceRegistry,
    signals: DeprecationSignals,
    alerts: OperatorAlerts | None = None,
) -> ModelCallPolicy:
    limits = settings.limits
    retry = RetryPolicy(max_attempts=2, max_total=limits.retry_after_cap + 10.0, retry_after_cap=limits.retry_after_cap)

    def on_error(error: UpstreamError) -> None:
        signals.from_error(error)
        if alerts is not None:
            alerts.observe(error)

    return ModelCallPolicy(clock, registry, retry, observe=attempt_logger(clock), on_error=on_error)


def attempt_logger(clock: Clock) -> AttemptObserver:
    """Every attempt of every upstream call is logged: upstream, operation, status, latency, attempt, request id."""

    def observe(upstream: str, operation: str, call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        return UpstreamLog(upstream, clock).attempts(operation, call)

    return observe


async def warn_about_unlisted_models(chain: ModelChain, signals: DeprecationSignals) -> None:
    """A configured model its provider does not list is probably retired or mistyped: say so at start."""
    listed: dict[str, set[str] | None] = {}
    for model in chain.models:
        provider = model.ref.provider
        if provider == LOCAL_PROVIDER:
            continue
        if provider not in listed:
            try:
                listed[provider] = set(await model.provider.list_models())
            except UpstreamError as error:
                log.info("could not list %s models at start-up: %s", provider, error)
                listed[provider] = None
        known = listed[provider]
        if known is not None and model.ref.model not in known:
            signals.report(provider, "model", f"{model.ref.model} is configured but {provider} does not list it")


def _guard(name: str, settings: Settings, limits: LocalLimits, rpm: float, tpm: int) -> ProviderGuard:
    key_name = PROVIDER_KEYS.get(name)
    return ProviderGuard(
        name=name,
        breaker=limits.breaker(
            f"provider {name}",
            failure_threshold=settings.limits.breaker_failures,
            window=settings.limits.breaker_window,
            cooldown=settings.limits.breaker_cooldown,
        ),
        limiter=limits.limiter(f"{name} requests", rpm, 60.0, burst=max(1, int(rpm // 6))),
        budget=limits.token_budget(f"{name} tokens", tpm),
        reload_credential=(lambda: settings.credentials.get(key_name)) if key_name else (lambda: None),
    )


def build_providers(
    settings: Settings,
    clock: Clock,
    policy: ModelCallPolicy,
    stack: AsyncExitStack,
    signals: DeprecationSignals,
    upstream_limits: LocalLimits | None = None,
) -> dict[str, ChatProvider]:
    """One pooled client per upstream, closed when the stack unwinds, each behind its guard
    (its limits from `upstream_limits`: this instance's own unless given shared ones)."""
    guard_limits = upstream_limits or LocalLimits(clock)
    wanted = {ref.provider for ref in settings.llm_models}
    limits = settings.limits
    # name -> (adapter, key, base URL, requests/min, tokens/min)
    specs: dict[str, tuple[type, str, str | None, float, int]] = {}
    if "anthropic" in wanted and settings.anthropic_api_key:
        from integrations.anthropic import AnthropicChat

        specs["anthropic"] = (
            AnthropicChat, settings.anthropic_api_key.reveal(), settings.anthropic_base_url,
            limits.anthropic_requests_per_minute, limits.anthropic_tokens_per_minute,
        )
    if "openai" in wanted:
        from integrations.openai import OpenAIChat

        # An OpenAI-compatible server may need no key; the SDK insists on one.
        key = settings.openai_api_key.reveal() if settings.openai_api_key else "not-needed"
        specs["openai"] = (
            OpenAIChat, key, settings.openai_base_url, limits.openai_requests_per_minute, limits.openai_tokens_per_minute,
        )
    providers: dict[str, ChatProvider] = {}
    for name, (adapter, key, base_url, rpm, tpm) in specs.items():
        guard = policy.add_guard(_guard(name, settings, guard_limits, rpm, tpm))
        provider = adapter(
            api_key=key,
            base_url=base_url,
            connect_timeout=settings.llm_connect_timeout,
            on_limits=guard.observe_limits,
            on_headers=lambda headers, upstream=name: signals.from_headers(upstream, headers),
        )
        guard.current_credential, guard.apply_credential = key, provider.set_api_key
        stack.push_async_callback(provider.aclose)
        providers[name] = provider
    return providers


async def start_local_model(settings: Settings, clock: Clock, stack: AsyncExitStack) -> ChainModel | None:
    """The small offline model: last resort in production, the whole assistant with no keys."""
    if settings.llm_local == "off":
        return None
    files = local_model_available()
    if files is None:
        # Only worth more than a note when nothing else could answer.
        level = logging.INFO if any(ref.provider != LOCAL_PROVIDER for ref in settings.llm_models) else logging.WARNING
        log.log(level, "%s", install_hint())
        return None
    server = LocalModelServer(clock, model_path=files.model_path, log_path=settings.state_dir / "local-model.log")
    try:
        base_url = await server.start()
    except LocalModelError as error:
        log.warning("offline model unavailable: %s", error)
        return None
    stack.push_async_callback(server.stop)
    from integrations.openai import OpenAIChat

    provider = OpenAIChat(api_key="local", base_url=base_url, name=LOCAL_PROVIDER)
    stack.push_async_callback(provider.aclose)  # unwinds before the server stops
    return ChainModel(
        LOCAL_REF,
        provider,
        context_tokens=LOCAL_CONTEXT_TOKENS,
        marker=LOCAL_MARKER,
        sees_images=sees_images(LOCAL_REF, settings.photos.vision_models),
    )


def build_chain(
    settings: Settings,
    clock: Clock,
    providers: dict[str, ChatProvider],
    policy: ModelCallPolicy,
    local: ChainModel | None = None,
) -> ModelChain:
    models = []
    for ref in settings.llm_models:
        if ref.provider in providers:
            vision = sees_images(ref, settings.photos.vision_models)
            models.append(ChainModel(ref, providers[ref.provider], context_tokens=settings.llm_context_tokens, sees_images=vision))
        elif ref.provider == LOCAL_PROVIDER and local is not None and local not in models:
            models.append(local)  # where LLM_MODELS puts it
    if local is not None and local not in models:
        models.append(local)
    timeouts = ChainTimeouts(
        first_token=settings.llm_first_token_timeout,
        idle=settings.llm_idle_timeout,
        total=settings.llm_total_timeout,
    )
    return ModelChain(models, clock, timeouts, open_policy=policy)


async def _chain_with_local_model(
    settings: Settings, clock: Clock, stack: AsyncExitStack, providers: dict[str, ChatProvider], policy: ModelCallPolicy
) -> Sequence[ChainModel]:
    """The chain's models once the offline model is up (or without it, if it cannot start)."""
    local = await start_local_model(settings, clock, stack)
    if local is not None:
        log.info("the offline model is ready")
    return list(build_chain(settings, clock, providers, policy, local).models)


async def _stop_starting(starting: "asyncio.Future[Sequence[ChainModel]]") -> None:
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)


def expected_local_model(settings: Settings) -> ModelRef | None:
    """The offline model's name in the chain once it has started, if it is on and installed."""
    if settings.llm_local == "off" or local_model_available() is None:
        return None
    return LOCAL_REF


async def build_app(
    settings: Settings,
    clock: Clock,
    transport: Transport,
    stack: AsyncExitStack,
    *,
    extra_admins: frozenset[int] = frozenset(),
    pacing: StreamPacing = StreamPacing(),
    governor: ReportsPacing | None = None,
    redactor: Redactor | None = None,
    telegram_connected: Callable[[], bool] | None = None,
    state_lock: StateLock | None = None,
    local_model_in_background: bool = False,
    media: MediaSource | None = None,
    limits: LocalLimits | None = None,
    chat_admins: ChatAdmins | None = None,
) -> App:
    """Everything the bot needs, closed by `stack`. The state directory is locked first (unless
    the caller already holds `state_lock`): a second bot on the same state stops right here.
    `media` fetches what users' messages carry and `chat_admins` says who runs a group (Telegram's;
    the console has neither). `limits` makes the rate limits, breakers and flood governor (shared
    through Redis when REDIS_URL is set; opened here unless given)."""
    redactor = redactor or Redactor(settings.secret_values())
    if state_lock is None:
        state_lock = stack.enter_context(StateLock(settings.state_dir))
    database_url = settings.database_url.reveal() if settings.database_url is not None else None
    database = await open_database(database_url, settings.state_dir / DATABASE_NAME, clock)
    stack.push_async_callback(database.close)
    if limits is None:
        limits = await open_shared_limits(settings, clock, stack)
    registry = limits.registry(
        failure_threshold=settings.limits.breaker_failures,
        window=settings.limits.breaker_window,
        cooldown=settings.limits.breaker_cooldown,
    )
    if governor is not None:
        registry.register_governor(governor)
    signals = DeprecationSignals(clock)
    stack.enter_context(signals.capturing_warnings())
    # A refused key reaches the operator: in the log, in /status, and as a message to the admins at
    # most once an hour (not in the console, where it would land among the replies; its log shows it).
    admins = frozenset() if transport.name == "console" else settings.admin_ids
    alerts = OperatorAlerts(clock, transport.send, admins, credential_settings(settings), redact=redactor)
    stack.push_async_callback(alerts.aclose)
    model_policy = build_model_policy(settings, clock, registry, signals, alerts)
    providers = build_providers(settings, clock, model_policy, stack, signals, limits)
    if local_model_in_background:
        chain = build_chain(settings, clock, providers, model_policy)
        starting = asyncio.ensure_future(_chain_with_local_model(settings, clock, stack, providers, model_policy))
        # Stopped, and its half-started server ended, before what it started with is closed.
        stack.push_async_callback(_stop_starting, starting)
        chain.models_when_started(starting)
    else:
        chain = build_chain(settings, clock, providers, model_policy, await start_local_model(settings, clock, stack))
    access = AccessPolicy(
        admin_ids=settings.admin_ids | extra_admins,
        allowed_user_ids=settings.allowed_user_ids,
        allow_everyone=settings.allow_everyone,
    )
    operations = await build_operations(settings, clock, database, access, stack, redactor, signals, telegram_connected)
    checking = asyncio.ensure_future(warn_about_unlisted_models(chain, signals))
    stack.callback(checking.cancel)
    core = Services(
        clock=clock,
        transport=transport,
        history=HistoryStore(database, clock),
        preferences=UserPreferences(database),
        chain=chain,
        access=access,
        limits=operations.limits,
        lanes=ChatLanes(),
        chat=ChatSettings(
            system_prompt=settings.system_prompt,
            max_tokens=settings.llm_max_tokens,
            pending_max_age=settings.limits.pending_max_age,
            idle_reset=settings.conversation.idle_reset,
            modes=settings.modes,
        ),
        prompts=ChatPrompts(database),
        pacing=pacing,
        chat_admins=chat_admins,
    )
    cache = SqliteCache(database, clock, max_entries=settings.limits.cache_max_entries)
    search = build_search(settings, clock, cache, registry, stack, limits)
    # The delivery worker only sends messages: the core services (without features) are all it needs.
    notes = start_notes(settings, clock, database, registry, stack, chat_notifier(core), limits)
    probes: list[HealthProbe] = []
    if search is not None:
        probes.append(HealthProbe("perplexity", search.client.probe))
    if notes is not None:
        probes.append(HealthProbe("notion", notes.probe))

    def transcription_failed(error: UpstreamError) -> None:
        signals.from_error(error)  # a retired STT model
        alerts.observe(error)  # a refused STT key

    voice = build_voice(settings, clock, registry, stack, media, on_error=transcription_failed, limits=limits)
    if voice is not None:
        probes.append(voice[1])
    features = Features(
        search=search,
        notes=notes,
        cache=cache,
        usage=operations.usage,
        admin_settings=operations.admin_settings,
        resilience=registry,
        status=operations.status,
        voice=voice[0] if voice is not None else None,
        photos=build_photos(settings, clock, database, media),
        documents=build_documents(settings, media),
        quotes=QuotesFeature(
            StoredMessages(database), ReplyHeaders(database), media if isinstance(media, RepliedMessages) else None
        ),
        compaction=build_compaction(settings, clock, chain, database),
    )
    services = replace(core, features=features, health_probes=tuple(probes))
    router = Router(
        services,
        basic_commands() + conversation_commands() + search_commands() + notes_commands() + usage_commands() + admin_commands(),
        help_note=CONSOLE_HELP if transport.name == "console" else "",
    )
    return App(services, router, database, deprecations=signals, operator_alerts=alerts)


def build_documents(settings: Settings, media: MediaSource | None) -> DocumentsFeature | None:
    """Documents read into the chat, where the transport has files (Telegram; the console has none)."""
    if media is None:
        return None
    documents = settings.documents
    return DocumentsFeature(media, max_bytes=documents.max_bytes, max_pages=documents.max_pages, max_chars=documents.max_chars)


async def open_shared_limits(settings: Settings, clock: Clock, stack: AsyncExitStack) -> LocalLimits:
    """Limits shared through Redis when REDIS_URL is set (the connection closed by `stack`), else local ones."""
    redis = settings.redis
    if redis is None:
        return LocalLimits(clock)
    from integrations.resilience.shared_limits import open_limits  # redis-py: the optional `redis` group

    return await open_limits(redis.url.reveal(), clock, stack, instances=redis.instances, timeout=redis.timeout)


def credential_settings(settings: Settings) -> dict[str, str]:
    """Each upstream's key setting, for the operator's alerts: the chat providers', and STT's."""
    return {**PROVIDER_KEYS, **({"stt": settings.stt.key_setting} if settings.stt is not None else {})}


def build_voice(
    settings: Settings,
    clock: Clock,
    registry: ResilienceRegistry,
    stack: AsyncExitStack,
    media: MediaSource | None,
    *,
    on_error: Callable[[UpstreamError], None],
    limits: LocalLimits,
) -> tuple[VoiceFeature, HealthProbe] | None:
    """Voice and audio messages transcribed by the STT endpoint behind its own breaker, limiter and
    retry, and its /health probe; None when STT_MODEL is not set or nothing brings recordings
    (the console)."""
    stt = settings.stt
    if stt is None or media is None:
        return None
    from integrations.transcription import Transcriber

    # A self-hosted server may need no key; the SDK insists on one.
    key = stt.api_key.reveal() if stt.api_key else "not-needed"
    transcriber = Transcriber(
        api_key=key, model=stt.model, base_url=stt.base_url, connect_timeout=settings.llm_connect_timeout, read_timeout=stt.timeout
    )
    stack.push_async_callback(transcriber.aclose)
    cap = settings.limits.retry_after_cap
    upstream = keyed_upstream(
        "stt",
        settings,
        clock,
        registry,
        key=key,
        key_setting=stt.key_setting,
        apply_key=transcriber.set_api_key,
        limiter=limits.limiter("stt requests", stt.requests_per_minute, 60.0, burst=max(1, int(stt.requests_per_minute // 6))),
        retry=RetryPolicy(max_attempts=3, max_total=stt.timeout + cap + 10.0, retry_after_cap=cap),
        attempt_timeout=stt.timeout,
    )
    feature = VoiceFeature(
        transcriber, upstream, media, stt.model, max_seconds=stt.max_seconds, max_bytes=stt.max_bytes, on_error=on_error
    )
    return feature, HealthProbe("stt", transcriber.list_models)


def keyed_upstream(
    name: str,
    settings: Settings,
    clock: Clock,
    registry: ResilienceRegistry,
    *,
    key: str,
    key_setting: str,
    apply_key: Callable[[str], None],
    limiter: RateLimiter,
    retry: RetryPolicy,
    attempt_timeout: float,
) -> Upstream:
    """An upstream reached with an API key, behind its own breaker (`name`), `limiter` and `retry`,
    registered for /status. After a 401 the key is read again from `key_setting`'s source and the
    call tried once more if it changed (a key rotated without a restart)."""
    credential = ProviderGuard(
        name,
        breaker=registry.breaker(name),
        limiter=limiter,
        budget=TokenBudget(f"{name} tokens", 10**9, clock),  # unused: only the key reload is wanted
        reload_credential=lambda: settings.credentials.get(key_setting),
        apply_credential=apply_key,
        current_credential=key,
    )
    return registry.register_upstream(
        Upstream(
            name,
            clock,
            breaker=credential.breaker,
            limiter=limiter,
            retry=retry,
            attempt_timeout=attempt_timeout,
            on_auth_failed=credential.reload_after_auth_failure,
            observe=attempt_logger(clock),
        )
    )


def build_photos(settings: Settings, clock: Clock, database: Database, media: MediaSource | None) -> PhotoFeature | None:
    """Photos and image files to a vision model, where the transport has them (Telegram)."""
    if media is None:
        return None
    photos = settings.photos
    return PhotoFeature(media, ImageStore(database), clock, max_bytes=photos.max_bytes, max_images=photos.max_images)


def build_compaction(settings: Settings, clock: Clock, chain: ModelChain, database: Database) -> Compaction | None:
    """Long conversations summarised by the chain's cheapest model; None when COMPACT_AT is off."""
    conversation = settings.conversation
    if conversation.compact_at is None:
        return None
    summariser = Summariser(chain, PriceTable(overrides=settings.llm_prices), clock, timeout=conversation.compact_timeout)
    return Compaction(summariser, CompactionBackoffs(database), CompactionSettings(compact_at=conversation.compact_at))


def knowledge_retry(settings: Settings) -> RetryPolicy:
    cap = settings.limits.retry_after_cap
    # Room for an attempt that used its whole timeout, a wait, and one more try.
    return RetryPolicy(max_attempts=3, max_total=settings.limits.knowledge_timeout + cap + 10.0, retry_after_cap=cap)


def build_search(
    settings: Settings,
    clock: Clock,
    cache: SqliteCache,
    registry: ResilienceRegistry,
    stack: AsyncExitStack,
    limits: LocalLimits,
) -> SearchService | None:
    """/search through Perplexity behind its own breaker, limiter and retry, with the SQLite cache;
    None when Perplexity is not configured."""
    if settings.perplexity is None:
        return None
    from integrations.perplexity import PerplexitySearch

    p = settings.perplexity
    key = p.api_key.reveal()
    client = PerplexitySearch(api_key=key, base_url=p.base_url, model=p.model, preset=p.preset)
    stack.push_async_callback(client.aclose)
    upstream = keyed_upstream(
        "perplexity",
        settings,
        clock,
        registry,
        key=key,
        key_setting="PERPLEXITY_API_KEY",
        apply_key=client.set_api_key,
        limiter=limits.limiter("perplexity requests", p.requests_per_minute, 60.0, burst=1),
        retry=knowledge_retry(settings),
        attempt_timeout=settings.limits.knowledge_timeout,
    )
    return SearchService(client, cache, upstream, SearchConfig(cache_ttl=settings.limits.search_cache_ttl))


def start_notes(
    settings: Settings,
    clock: Clock,
    database: Database,
    registry: ResilienceRegistry,
    stack: AsyncExitStack,
    notify: Notify,
    limits: LocalLimits,
) -> NotesFeature | None:
    """/note, /save, /notes through the durable outbox, its delivery worker running in the
    background (stopped by `stack`); None when Notion is not configured."""
    if settings.notion is None:
        return None
    upstream = registry.register_upstream(
        Upstream(
            "notion",
            clock,
            breaker=registry.breaker("notion"),
            # burst=1: Notion's limit is a rolling window, which any larger burst overruns.
            limiter=limits.limiter("notion requests", settings.notion.requests_per_second, 1.0, burst=1),
            retry=knowledge_retry(settings),
            attempt_timeout=settings.limits.knowledge_timeout,
            observe=attempt_logger(clock),
        )
    )
    feature = build_notes(
        settings.notion,
        upstream,
        instance=settings.instance.name,
        schema_ttl=settings.limits.schema_cache_ttl,
        clock=clock,
        database=database,
        notify=notify,
        stack=stack,
    )
    # In the background: a Notion that does not answer must not hold up the start (and READY=1).
    checking = asyncio.ensure_future(feature.start())
    worker = asyncio.ensure_future(feature.delivery.run())

    async def stop_worker() -> None:
        checking.cancel()
        await feature.delivery.stop()  # lets the attempt in progress finish and record itself
        worker.cancel()  # in case it had not started yet when stop() was asked
        await asyncio.gather(checking, worker, return_exceptions=True)

    stack.push_async_callback(stop_worker)
    return feature


def build_notes(
    settings: NotionSettings,
    upstream: Upstream,
    *,
    instance: str = "local",
    schema_ttl: float,
    clock: Clock,
    database: Database,
    notify: Notify,
    stack: AsyncExitStack,
) -> NotesFeature:
    """The notes feature: outbox, Notion behind `upstream`, and the delivery worker (not running yet)."""
    api = NotionApi(token=settings.token.reveal(), base_url=settings.base_url)
    stack.push_async_callback(api.aclose)
    notion = NotionNotes(api, upstream, settings.database_id, SchemaCache(database, clock, schema_ttl))
    # Claimed by this instance's name while delivered: several instances may run this worker.
    outbox = Outbox(database, clock, instance=instance)
    return NotesFeature(outbox, notion, NoteDelivery(outbox, notion, clock, notify))


def audio_prices(settings: Settings) -> dict[str, float]:
    """STT_PRICE_PER_MINUTE, for the configured STT model."""
    stt = settings.stt
    return {stt.model: stt.price_per_minute} if stt is not None and stt.price_per_minute is not None else {}


@dataclass(frozen=True)
class Operations:
    """What running the bot for others takes: usage and budgets, admin settings, /status facts."""

    usage: UsageRecorder
    admin_settings: AdminSettings
    limits: UserLimits
    status: StatusContext


async def build_operations(
    settings: Settings,
    clock: Clock,
    database: Database,
    access: AccessPolicy,
    stack: AsyncExitStack,
    redactor: Redactor,
    signals: DeprecationSignals,
    telegram_connected: Callable[[], bool] | None,
) -> Operations:
    """Usage and budgets, persisted admin settings, the recent-errors journal and /status facts."""
    usage = UsageRecorder(database, clock, PriceTable(overrides=settings.llm_prices, audio_overrides=audio_prices(settings)))
    admin_settings = await AdminSettings.load(database, access)
    errors = RecentErrors(clock, redactor, journal=ErrorJournal(database))
    handler = RecentErrorsHandler(errors)
    logging.getLogger().addHandler(handler)
    stack.callback(logging.getLogger().removeHandler, handler)
    # Pushed after the database's close, so it runs before it.
    stack.push_async_callback(errors.save)
    limits = UserLimits(
        access=access,
        usage=usage,
        settings=admin_settings,
        clock=clock,
        messages_per_minute=settings.limits.user_messages_per_minute,
        default_daily_budget=settings.limits.user_daily_budget_usd,
        default_monthly_budget=settings.limits.user_monthly_budget_usd,
    )
    status = StatusContext(
        started_at=clock.monotonic(),
        telegram_connected=telegram_connected,
        deprecations=lambda: [signal.describe() for signal in signals.list()],
        errors=errors,
        redactor=redactor,
        # Instances share the state only in PostgreSQL; SQLite keeps one bot per state directory.
        instances=InstanceRegistry(database, clock) if database.dialect == "postgresql" else None,
        state=state_engine(database),
    )
    return Operations(usage, admin_settings, limits, status)
