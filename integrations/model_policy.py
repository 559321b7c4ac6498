"""The resilience layer around opening a model's stream.

Each provider (anthropic, openai, local) has a guard: a breaker for account-wide trouble
(credentials refused, quota gone), a requests-per-minute limiter and a tokens-per-minute budget,
both tightened by the rate-limit headers the provider reports. Each model has its own breaker for
capacity trouble (overloaded, 5xx, stalls, 429), so an overloaded model never blocks another model
of the same provider. Outermost first:

    provider breaker -> model breaker -> retry -> request limiter -> token budget -> first token

Waiting for our own limiter or budget is capped (`max_wait`, each): when the headers have
tightened them so far that a call would wait longer, it fails at once with `WaitTooLong` (not
retried, not counted by the breakers) and the chain asks the next model instead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

from integrations.chain import OpenedStream
from integrations.clock import Clock
from integrations.context_window import estimate_conversation, estimate_tokens
from integrations.errors import AuthFailed, QuotaExhausted, UpstreamError
from integrations.http_errors import LimitHint
from integrations.llm import ChatRequest, ModelRef
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.compose import AttemptObserver, Policy, compose, limiter_policy, retry_policy
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.retry import RetryPolicy
from integrations.resilience.tokens import TokenBudget

log = logging.getLogger(__name__)

T = TypeVar("T")

ACCOUNT_ERRORS = (AuthFailed, QuotaExhausted)


class _NotThisScope(Exception):
    """Carries an error past a breaker that should not count it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def scoped_breaker_policy(breaker: CircuitBreaker, counts: Callable[[BaseException], bool]) -> Policy:
    """A breaker that only counts the errors of its scope; the others pass through untouched."""

    async def guarded(call: Callable[[], Awaitable[T]]) -> T:
        async def masked() -> T:
            try:
                return await call()
            except UpstreamError as error:
                if counts(error):
                    raise
                raise _NotThisScope(error) from error

        try:
            return await breaker.call(masked)
        except _NotThisScope as wrapped:
            raise wrapped.error from None

    return guarded


def is_account_error(error: BaseException) -> bool:
    return isinstance(error, ACCOUNT_ERRORS)


def is_model_error(error: BaseException) -> bool:
    return not is_account_error(error)


@dataclass
class ProviderGuard:
    name: str
    breaker: CircuitBreaker
    limiter: RateLimiter
    budget: TokenBudget
    # Returns a fresh credential from its source (env file, credentials dir), or None.
    reload_credential: Callable[[], str | None] = lambda: None
    apply_credential: Callable[[str], None] = lambda key: None
    current_credential: str | None = None

    def observe_limits(self, hint: LimitHint) -> None:
        """The provider's headers show how much is left: never send more than that."""
        if hint.requests_remaining is not None and hint.requests_reset_s is not None:
            self.limiter.tighten(hint.requests_remaining, hint.requests_reset_s, hint.requests_limit)
        if hint.tokens_remaining is not None and hint.tokens_reset_s is not None:
            self.budget.tighten(hint.tokens_remaining, hint.tokens_reset_s, hint.tokens_limit)

    async def reload_after_auth_failure(self) -> bool:
        """A 401: read the key again from its source; retry once only if it changed."""
        fresh = self.reload_credential()
        if not fresh or fresh == self.current_credential:
            return False
        log.info("%s: credential changed at its source; retrying with the new one", self.name)
        self.current_credential = fresh
        self.apply_credential(fresh)
        return True


@dataclass
class ModelCallPolicy:
    clock: Clock
    registry: ResilienceRegistry
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=2, max_total=30.0, retry_after_cap=20.0))
    guards: dict[str, ProviderGuard] = field(default_factory=dict)
    observe: AttemptObserver | None = None
    # Told of every failure that reaches the chain (e.g. a retired model: a deprecation signal).
    on_error: Callable[[UpstreamError], None] = lambda error: None
    # Longest a call waits for the request limiter, and again for the token budget, before the
    # next model is asked instead: normal pacing passes, a budget tightened until its reset does not.
    max_wait: float = 5.0

    def add_guard(self, guard: ProviderGuard) -> ProviderGuard:
        self.guards[guard.name] = guard
        self.registry.register_breaker(guard.breaker)
        self.registry.register_limiter(guard.limiter)
        self.registry.register_token_budget(guard.budget)
        return guard

    def model_breaker(self, ref: ModelRef) -> CircuitBreaker:
        return self.registry.breaker(f"model {ref}")

    async def __call__(self, ref: ModelRef, request: ChatRequest, call: Callable[[], Awaitable[OpenedStream]]) -> OpenedStream:
        if self.observe is not None:
            call = self.observe(ref.provider, f"stream {ref.model}", call)
        try:
            return await self._guarded(ref, request, call)
        except UpstreamError as error:
            self.on_error(error)
            raise

    async def _guarded(self, ref: ModelRef, request: ChatRequest, call: Callable[[], Awaitable[OpenedStream]]) -> OpenedStream:
        guard = self.guards.get(ref.provider)
        if guard is None:
            return await scoped_breaker_policy(self.model_breaker(ref), is_model_error)(call)
        # Images count too: a photo's question reserves what the provider will charge for it.
        estimate = estimate_conversation(request.messages, ref.provider) + estimate_tokens(request.system or "") + request.max_tokens

        async def within_token_budget() -> OpenedStream:
            reservation = await guard.budget.reserve(estimate, max_wait=self.max_wait)
            try:
                opened = await call()
            except BaseException:
                reservation.settle(0)
                raise
            opened.on_finish.append(lambda result: reservation.settle(result.usage.input_tokens + result.usage.output_tokens))
            return opened

        policy = compose(
            scoped_breaker_policy(guard.breaker, is_account_error),
            scoped_breaker_policy(self.model_breaker(ref), is_model_error),
            retry_policy(self.retry, self.clock, on_auth_failed=guard.reload_after_auth_failure),
            limiter_policy(guard.limiter, max_pause=self.retry.retry_after_cap, max_wait=self.max_wait),
        )
        try:
            return await policy(within_token_budget)
        except AuthFailed as error:
            # The reloaded credential (if any) was refused too: every model of this provider would be.
            guard.breaker.force_open(f"auth failed: {error}")
            raise
