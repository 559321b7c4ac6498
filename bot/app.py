"""The composition root: the one place where everything is built, wired and shut down."""
from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

from bot.config import Settings
from handlers.access import AccessPolicy
from handlers.basic import basic_commands
from handlers.lanes import ChatLanes
from handlers.router import Router
from handlers.services import ChatSettings, Services
from handlers.stream import StreamPacing
from handlers.transport import Transport
from integrations.anthropic import AnthropicChat
from integrations.chain import ChainModel, ChainTimeouts, ModelChain
from integrations.llm import ChatProvider
from integrations.openai import OpenAIChat
from integrations.resilience.clock import Clock
from state.db import Database
from state.history import HistoryStore
from state.preferences import UserPreferences

log = logging.getLogger(__name__)

DATABASE_NAME = "switchboard.sqlite3"


@dataclass(frozen=True)
class App:
    services: Services
    router: Router
    database: Database


def build_providers(settings: Settings, stack: AsyncExitStack) -> dict[str, ChatProvider]:
    """One pooled client per upstream, closed when the stack unwinds."""
    wanted = {ref.provider for ref in settings.llm_models}
    providers: dict[str, ChatProvider] = {}
    if "anthropic" in wanted and settings.anthropic_api_key:
        providers["anthropic"] = AnthropicChat(
            api_key=settings.anthropic_api_key.reveal(),
            base_url=settings.anthropic_base_url,
            connect_timeout=settings.llm_connect_timeout,
        )
    if "openai" in wanted:
        key = settings.openai_api_key.reveal() if settings.openai_api_key else "not-needed"
        providers["openai"] = OpenAIChat(
            api_key=key, base_url=settings.openai_base_url, connect_timeout=settings.llm_connect_timeout
        )
    for provider in providers.values():
        stack.push_async_callback(provider.aclose)
    return providers


def build_chain(settings: Settings, clock: Clock, providers: dict[str, ChatProvider]) -> ModelChain:
    models = [
        ChainModel(ref, providers[ref.provider], context_tokens=settings.llm_context_tokens)
        for ref in settings.llm_models
        if ref.provider in providers
    ]
    timeouts = ChainTimeouts(
        first_token=settings.llm_first_token_timeout,
        idle=settings.llm_idle_timeout,
        total=settings.llm_total_timeout,
    )
    return ModelChain(models, clock, timeouts)


async def build_app(
    settings: Settings,
    clock: Clock,
    transport: Transport,
    stack: AsyncExitStack,
    *,
    extra_admins: frozenset[int] = frozenset(),
    pacing: StreamPacing = StreamPacing(),
) -> App:
    database = await Database.open(settings.state_dir / DATABASE_NAME, clock)
    stack.push_async_callback(database.close)
    providers = build_providers(settings, stack)
    chain = build_chain(settings, clock, providers)
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
        chat=ChatSettings(system_prompt=settings.system_prompt, max_tokens=settings.llm_max_tokens),
        pacing=pacing,
    )
    router = Router(services, basic_commands())
    return App(services, router, database)
