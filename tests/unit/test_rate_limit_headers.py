"""Rate-limit headers read while a reply opens, through the model chain and its policy, on a manual clock."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from integrations.chain import ChainModel, ChainTimeouts, Completed, ModelChain
from integrations.clock import ManualClock
from integrations.http_errors import LimitHint
from integrations.llm import ChatMessage, ChatRequest, ModelRef, StreamResult
from integrations.model_policy import ModelCallPolicy, ProviderGuard
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.tokens import TokenBudget
from tests.fakes.providers import ScriptedProvider

PROXIED = ModelRef("openai", "gpt-behind-a-proxy")
FALLBACK = ModelRef("anthropic", "fallback")


class ReportingProvider:
    """Each reply waits for its gate, then reports `hint` as an adapter does when the headers arrive."""

    name = "openai"

    def __init__(self, hint: LimitHint) -> None:
        self.hint = hint
        self.on_limits = lambda hint: None
        self.gates: list[asyncio.Event] = []

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        self.on_limits(self.hint)
        yield "ok"
        result.stop_reason = "stop"

    async def aclose(self) -> None:
        return None


def chain_behind_a_proxy(clock: ManualClock, proxied: ReportingProvider) -> ModelChain:
    policy = ModelCallPolicy(clock, ResilienceRegistry(clock))
    guard = policy.add_guard(ProviderGuard(
        "openai",
        CircuitBreaker("provider openai", clock),
        RateLimiter("openai requests", 500, 60.0, clock, burst=83),
        TokenBudget("openai tokens", 500_000, clock),
    ))
    proxied.on_limits = guard.observe_limits
    models = [ChainModel(PROXIED, proxied), ChainModel(FALLBACK, ScriptedProvider("fallback"))]
    return ModelChain(models, clock, ChainTimeouts(first_token=20, idle=30, total=300), open_policy=policy)


async def answered_by(chain: ModelChain) -> ModelRef:
    async for event in chain.stream([ChatMessage("user", "hello")], system=None, max_tokens=100):
        if isinstance(event, Completed):
            return event.model
    raise AssertionError("no reply")


async def test_a_response_read_after_later_requests_went_is_charged_with_them() -> None:
    clock = ManualClock()
    proxied = ReportingProvider(LimitHint(requests_limit=10, requests_remaining=3, requests_reset_s=60.0))
    chain = chain_behind_a_proxy(clock, proxied)
    replies = [asyncio.ensure_future(answered_by(chain)) for _ in range(3)]
    await clock.settle()
    assert len(proxied.gates) == 3  # three requests went before any response came back

    proxied.gates[0].set()  # "3 left" counted before the other two: 1 is left
    assert await replies[0] == PROXIED
    late = asyncio.ensure_future(answered_by(chain))
    await clock.settle()

    # The last unit waits its share of the minute (30 s), longer than a call may wait: next model.
    assert late.done() and late.result() == FALLBACK
    for gate in proxied.gates[1:]:
        gate.set()
    assert await asyncio.gather(*replies[1:]) == [PROXIED, PROXIED]


async def test_back_to_back_replies_go_at_once_while_the_proxy_has_plenty_left() -> None:
    clock = ManualClock()
    proxied = ReportingProvider(LimitHint(requests_limit=50, requests_remaining=49, requests_reset_s=60.0))
    chain = chain_behind_a_proxy(clock, proxied)
    t0 = clock.monotonic()

    for sent in range(1, 41):
        reply = asyncio.ensure_future(answered_by(chain))
        await clock.settle()
        assert len(proxied.gates) == sent  # the request went without waiting
        proxied.gates[-1].set()
        assert await reply == PROXIED

    assert clock.monotonic() == t0
