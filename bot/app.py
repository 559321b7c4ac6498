"""The composition root: the one place where everything is built, wired and shut down."""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from bot.config import Settings
from bot.console import HELP as CONSOLE_HELP
from bot.logs import DeprecationSignals, Redactor, UpstreamLog
from handlers.admin import admin_commands
from handlers.limits import UserLimits
from handlers.notes import build_notes, notes_commands
from handlers.search import SearchConfig, SearchService, search_commands
from state.cache import SqliteCache
from handlers.status_report import HealthProbe, RecentErrors, StatusContext
from integrations.errors import Unavailable, UpstreamError
from integrations.resilience.compose import AttemptObserver, Upstream
from integrations.prices import PriceTable
from state.admin_settings import AdminSettings
from state.usage import ErrorJournal, UsageRecorder
from handlers.access import AccessPolicy
from handlers.basic import basic_commands
from handlers.lanes import ChatLanes
from handlers.operator_alerts import OperatorAlerts
from handlers.router import Router
from handlers.services import ChatSettings, Services
from handlers.stream import StreamPacing
from handlers.transport import Transport
from integrations.chain import ChainModel, ChainTimeouts, ModelChain
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
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.clock import Clock
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.registry import ResilienceRegistry, Snapshotting
from integrations.resilience.retry import RetryPolicy
from integrations.resilience.tokens import TokenBudget
from state.db import Database
from state.history import HistoryStore
from state.lock import StateLock
from state.preferences import UserPreferences

if TYPE_CHECKING:
    from integrations.perplexity import PerplexitySearch

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


PROVIDER_KEYS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


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


def _guard(name: str, settings: Settings, clock: Clock, registry: ResilienceRegistry, rpm: float, tpm: int) -> ProviderGuard:
    key_name = PROVIDER_KEYS.get(name)
    return ProviderGuard(
        name=name,
        breaker=CircuitBreaker(
            f"provider {name}",
            clock,
            failure_threshold=settings.limits.breaker_failures,
            window=settings.limits.breaker_window,
            cooldown=settings.limits.breaker_cooldown,
        ),
        limiter=RateLimiter(f"{name} requests", rpm, 60.0, clock, burst=max(1, int(rpm // 6))),
        budget=TokenBudget(f"{name} tokens", tpm, clock),
        reload_credential=(lambda: settings.credentials.get(key_name)) if key_name else (lambda: None),
    )


def build_providers(
    settings: Settings, clock: Clock, policy: ModelCallPolicy, stack: AsyncExitStack, signals: DeprecationSignals
) -> dict[str, ChatProvider]:
    """One pooled client per upstream, closed when the stack unwinds, each behind its guard."""
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
        guard = policy.add_guard(_guard(name, settings, clock, policy.registry, rpm, tpm))
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
        ModelRef(LOCAL_PROVIDER, LOCAL_ALIAS), provider, context_tokens=LOCAL_CONTEXT_TOKENS, marker=LOCAL_MARKER
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
            models.append(ChainModel(ref, providers[ref.provider], context_tokens=settings.llm_context_tokens))
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
) -> list[ChainModel]:
    """The chain's models once the offline model is up (or without it, if it cannot start)."""
    local = await start_local_model(settings, clock, stack)
    if local is not None:
        log.info("the offline model is ready")
    return list(build_chain(settings, clock, providers, policy, local).models)


async def build_app(
    settings: Settings,
    clock: Clock,
    transport: Transport,
    stack: AsyncExitStack,
    *,
    extra_admins: frozenset[int] = frozenset(),
    pacing: StreamPacing = StreamPacing(),
    governor: Snapshotting | None = None,
    redactor: Redactor | None = None,
    telegram_connected: Callable[[], bool] | None = None,
    state_lock: StateLock | None = None,
    local_model_in_background: bool = False,
) -> App:
    """Everything the bot needs, closed by `stack`. The state directory is locked first (unless
    the caller already holds `state_lock`): a second bot on the same state stops right here."""
    redactor = redactor or Redactor(settings.secret_values())
    if state_lock is None:
        state_lock = stack.enter_context(StateLock(settings.state_dir))
    database = await Database.open(settings.state_dir / DATABASE_NAME, clock)
    stack.push_async_callback(database.close)
    registry = ResilienceRegistry(
        clock,
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
    alerts = OperatorAlerts(clock, transport.send, admins, PROVIDER_KEYS, redact=redactor)
    stack.push_async_callback(alerts.aclose)
    model_policy = build_model_policy(settings, clock, registry, signals, alerts)
    providers = build_providers(settings, clock, model_policy, stack, signals)
    if local_model_in_background:
        chain = build_chain(settings, clock, providers, model_policy)
        starting = asyncio.ensure_future(_chain_with_local_model(settings, clock, stack, providers, model_policy))
        stack.callback(starting.cancel)
        chain.models_when_started(starting)
    else:
        chain = build_chain(settings, clock, providers, model_policy, await start_local_model(settings, clock, stack))
    access = AccessPolicy(
        admin_ids=settings.admin_ids | extra_admins,
        allowed_user_ids=settings.allowed_user_ids,
        allow_everyone=settings.allow_everyone,
    )
    services = Services(
        clock=clock,
        transport=transport,
        history=HistoryStore(database, clock),
        preferences=UserPreferences(database),
        chain=chain,
        access=access,
        lanes=ChatLanes(),
        chat=ChatSettings(
            system_prompt=settings.system_prompt,
            max_tokens=settings.llm_max_tokens,
            pending_max_age=settings.limits.pending_max_age,
        ),
        pacing=pacing,
        extras={"resilience": registry},
    )
    services.extras["deprecations"] = signals
    services.extras["operator_alerts"] = alerts
    await add_operations(services, settings, database, stack, redactor, telegram_connected)
    checking = asyncio.ensure_future(warn_about_unlisted_models(chain, signals))
    stack.callback(checking.cancel)
    add_search(services, settings, database, registry, stack)
    await add_notes(services, settings, database, registry, stack)
    router = Router(
        services,
        basic_commands() + search_commands() + notes_commands() + admin_commands(),
        help_note=CONSOLE_HELP if transport.name == "console" else "",
    )
    return App(services, router, database)


def knowledge_retry(settings: Settings) -> RetryPolicy:
    cap = settings.limits.retry_after_cap
    # Room for an attempt that used its whole timeout, a wait, and one more try.
    return RetryPolicy(max_attempts=3, max_total=settings.limits.knowledge_timeout + cap + 10.0, retry_after_cap=cap)


def add_search(
    services: Services, settings: Settings, database: Database, registry: ResilienceRegistry, stack: AsyncExitStack
) -> None:
    """/search through Perplexity behind its own breaker, limiter and retry, with the SQLite cache."""
    clock = services.clock
    cache = SqliteCache(database, clock, max_entries=settings.limits.cache_max_entries)
    services.extras["cache"] = cache
    client: PerplexitySearch | None = None
    upstream: Upstream | None = None
    if settings.perplexity is not None:
        from integrations.perplexity import PerplexitySearch

        p = settings.perplexity
        key = p.api_key.reveal()
        client = PerplexitySearch(api_key=key, base_url=p.base_url, model=p.model, preset=p.preset)
        stack.push_async_callback(client.aclose)
        credential = ProviderGuard(
            "perplexity",
            breaker=registry.breaker("perplexity"),
            limiter=RateLimiter("perplexity requests", p.requests_per_minute, 60.0, clock, burst=1),
            budget=TokenBudget("perplexity tokens", 10**9, clock),
            reload_credential=lambda: settings.credentials.get("PERPLEXITY_API_KEY"),
            apply_credential=client.set_api_key,
            current_credential=key,
        )
        upstream = registry.register_upstream(
            Upstream(
                "perplexity",
                clock,
                breaker=credential.breaker,
                limiter=credential.limiter,
                retry=knowledge_retry(settings),
                attempt_timeout=settings.limits.knowledge_timeout,
                on_auth_failed=credential.reload_after_auth_failure,
                observe=attempt_logger(clock),
            )
        )

        async def probe() -> None:
            await client.probe()

        services.extras["health"].append(HealthProbe("perplexity", probe))
    services.extras["search"] = SearchService(
        client, cache, upstream, SearchConfig(cache_ttl=settings.limits.search_cache_ttl)
    )


async def add_notes(
    services: Services, settings: Settings, database: Database, registry: ResilienceRegistry, stack: AsyncExitStack
) -> None:
    """/note, /save, /notes through the durable outbox and its delivery worker (when Notion is configured)."""
    if settings.notion is None:
        return
    clock = services.clock
    upstream = registry.register_upstream(
        Upstream(
            "notion",
            clock,
            breaker=registry.breaker("notion"),
            # burst=1: Notion's limit is a rolling window, which any larger burst overruns.
            limiter=RateLimiter("notion requests", settings.notion.requests_per_second, 1.0, clock, burst=1),
            retry=knowledge_retry(settings),
            attempt_timeout=settings.limits.knowledge_timeout,
            observe=attempt_logger(clock),
        )
    )
    feature = build_notes(
        settings.notion,
        schema_ttl=settings.limits.schema_cache_ttl,
        clock=clock,
        database=database,
        upstream=upstream,
        services=services,
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

    async def probe() -> None:
        health = await feature.check()
        if not health.ok:
            raise Unavailable(health.detail, upstream="notion")

    services.extras.update(outbox=feature.outbox, notes_worker=feature.delivery)
    services.extras["health"].append(HealthProbe("notion", probe))


async def add_operations(
    services: Services,
    settings: Settings,
    database: Database,
    stack: AsyncExitStack,
    redactor: Redactor,
    telegram_connected: Callable[[], bool] | None,
) -> None:
    """Usage and budgets, persisted admin settings, the recent-errors journal and /status facts."""
    clock = services.clock
    usage = UsageRecorder(database, clock, PriceTable(overrides=settings.llm_prices))
    admin_settings = await AdminSettings.load(database, services.access)
    errors = RecentErrors(clock, redactor, journal=ErrorJournal(database))
    handler = errors.handler()
    logging.getLogger().addHandler(handler)
    stack.callback(logging.getLogger().removeHandler, handler)
    # Pushed after the database's close, so it runs before it.
    stack.push_async_callback(errors.save)
    services.extras.update(
        usage=usage,
        admin_settings=admin_settings,
        limits=UserLimits(
            access=services.access,
            usage=usage,
            settings=admin_settings,
            clock=clock,
            messages_per_minute=settings.limits.user_messages_per_minute,
            default_daily_budget=settings.limits.user_daily_budget_usd,
        ),
        status=StatusContext(
            started_at=clock.monotonic(),
            telegram_connected=telegram_connected,
            deprecations=lambda: [signal.describe() for signal in services.extras["deprecations"].list()],
            errors=errors,
            redactor=redactor,
        ),
        health=[],
    )
